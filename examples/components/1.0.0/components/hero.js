import { html } from "../lib/html.js";
import { t } from "../lib/i18n.js";
import { VERSION } from "../lib/version.js";

export const name = "hero";

export function render({ title, text = "", href = "#", locale = "en" } = {}) {
  return html`<section class="hero" data-version="${VERSION}">
    <h1>${title}</h1>
    <p>${text}</p>
    <a class="hero__cta" href="${href}">${t("readMore", locale)}</a>
  </section>`.toString();
}

import { html } from "../lib/html.js";
import { t } from "../lib/i18n.js";
import { VERSION } from "../lib/version.js";
import "./hero.css";

export const name = "hero";

// 1.1.0: an optional eyebrow line above the title.
export function render({ title, eyebrow = "", text = "", href = "#", locale = "en" } = {}) {
  return html`<section class="hero" data-version="${VERSION}">
    ${eyebrow ? html`<small class="hero__eyebrow">${eyebrow}</small>` : ""}
    <h1>${title}</h1>
    <p>${text}</p>
    <a class="hero__cta" href="${href}">${t("readMore", locale)}</a>
  </section>`.toString();
}

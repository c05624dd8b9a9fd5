// Resolved as "components/banner" through esbuild's index-file rule.
import { html } from "../../lib/html.js";
import { t } from "../../lib/i18n.js";

export const name = "banner";

export function render({ message, href, locale = "en" } = {}) {
  return html`<aside class="banner">${message}
    ${href ? html`<a href="${href}">${t("readMore", locale)}</a>` : ""}</aside>`.toString();
}

import { html } from "../lib/html.js";
import { t } from "../lib/i18n.js";
import "./footer.css";

export const name = "footer";

export function render({ company = "Example Corp", year = new Date().getFullYear(), locale = "en" } = {}) {
  return html`<footer>© ${year} ${company}. ${t("rights", locale)}</footer>`.toString();
}

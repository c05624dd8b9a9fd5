import { html } from "../lib/html.js";
import { t } from "../lib/i18n.js";
import { createEmitter } from "../lib/events.js";

export const name = "newsletter";
export const events = createEmitter();

const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

export function isValidEmail(value) {
  return EMAIL.test(String(value).trim());
}

export function render({ locale = "en" } = {}) {
  return html`<form class="newsletter">
    <input type="email" name="email" placeholder="${t("emailPlaceholder", locale)}">
    <button>${t("subscribe", locale)}</button>
  </form>`.toString();
}

export function submit(email) {
  const ok = isValidEmail(email);
  events.emit(ok ? "subscribed" : "invalid", email);
  return ok;
}

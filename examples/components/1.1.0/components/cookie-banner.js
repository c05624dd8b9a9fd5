// New in 1.1.0.
import { html } from "../lib/html.js";
import { createEmitter } from "../lib/events.js";

export const name = "cookie-banner";
export const events = createEmitter();

export function render({ text = "We use cookies.", accept = "OK" } = {}) {
  return html`<div class="cookie-banner" role="dialog"><p>${text}</p><button>${accept}</button></div>`.toString();
}

export function accept(storage) {
  storage?.setItem?.("cookies-accepted", "1");
  events.emit("accepted");
  return true;
}

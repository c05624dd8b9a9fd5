import { html } from "../lib/html.js";
import { createEmitter } from "../lib/events.js";
import { t } from "../lib/i18n.js";

export const name = "carousel";

export function render({ slides = [], locale = "en" } = {}) {
  return html`<div class="carousel">
    <ol>${slides.map((s, i) => html`<li data-index="${i}" ${i === 0 ? "" : "hidden"}>${s}</li>`)}</ol>
    <button data-dir="-1">${t("previous", locale)}</button>
    <button data-dir="1">${t("next", locale)}</button>
  </div>`.toString();
}

// Keeps the current slide; pure state so it can be tested without a DOM.
export function createCarousel(count) {
  const events = createEmitter();
  let index = 0;
  return {
    events,
    get index() {
      return index;
    },
    move(step) {
      index = (index + step + count) % count;
      events.emit("change", index);
      return index;
    },
  };
}

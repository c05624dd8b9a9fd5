import { html, classNames } from "../lib/html.js";
import { createEmitter } from "../lib/events.js";

export const name = "tabs";

export function render({ tabs = [], selected = 0 } = {}) {
  return html`<div class="tabs" role="tablist">${tabs.map(
    (tab, i) =>
      html`<button role="tab" class="${classNames(i === selected && "selected")}" aria-selected="${i === selected}">${tab}</button>`,
  )}</div>`.toString();
}

export function createTabs(count) {
  const events = createEmitter();
  let selected = 0;
  return {
    events,
    select(i) {
      selected = Math.min(Math.max(0, i), count - 1);
      events.emit("select", selected);
      return selected;
    },
  };
}

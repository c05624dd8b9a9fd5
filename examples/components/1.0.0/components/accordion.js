import { html } from "../lib/html.js";
import { createEmitter } from "../lib/events.js";

export const name = "accordion";

export function render({ items = [] } = {}) {
  return html`<div class="accordion">${items.map(
    (item) => html`<details><summary>${item.title}</summary><div>${item.body}</div></details>`,
  )}</div>`.toString();
}

export function createAccordion(count, { single = true } = {}) {
  const events = createEmitter();
  const open = new Set();
  return {
    events,
    toggle(i) {
      if (open.has(i)) open.delete(i);
      else {
        if (single) open.clear();
        open.add(i);
      }
      events.emit("toggle", [...open]);
      return [...open].filter((n) => n < count);
    },
  };
}

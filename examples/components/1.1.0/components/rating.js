import { html } from "../lib/html.js";
import "./rating.css";

export const name = "rating";
export const MAX_STARS = 5;

export function stars(value) {
  const full = Math.round(Math.min(Math.max(value, 0), MAX_STARS));
  return "★".repeat(full) + "☆".repeat(MAX_STARS - full);
}

export function render({ value = 0, count = 0 } = {}) {
  return html`<span class="rating" title="${value} / ${MAX_STARS}">${stars(value)} (${count})</span>`.toString();
}

import { html, classNames } from "../lib/html.js";
import "./nav.css";

export const name = "nav";

export function render({ links = [], current = "" } = {}) {
  return html`<nav><ul>${links.map(
    (l) => html`<li class="${classNames(l.href === current && "active")}"><a href="${l.href}">${l.label}</a></li>`,
  )}</ul></nav>`.toString();
}

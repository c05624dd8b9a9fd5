import { html } from "../lib/html.js";
import { formatDate } from "../lib/format.js";
import "./card.css";

export const name = "card";

export function render({ title, body = "", date, image } = {}) {
  return html`<article class="card">
    ${image ? html`<img src="${image}" alt="">` : ""}
    <h2>${title}</h2>
    ${date ? html`<time>${formatDate(date)}</time>` : ""}
    <p>${body}</p>
  </article>`.toString();
}

import { html, classNames } from "../lib/html.js";
import { formatPrice, discount } from "../lib/format.js";
import "./price-tag.css";

export const name = "price-tag";

export function render({ price, currency = "EUR", percentOff = 0 } = {}) {
  const final = percentOff ? discount(price, percentOff) : price;
  return html`<span class="${classNames("price", percentOff && "price--sale")}">
    ${percentOff ? html`<s>${formatPrice(price, currency)}</s> ` : ""}${formatPrice(final, currency)}
  </span>`.toString();
}

import { html } from "../lib/html.js";
import { pluralize } from "../lib/format.js";
import { remaining } from "../lib/time.js";

export const name = "countdown";

export function render({ until, now = Date.now(), label = "Sale ends in" } = {}) {
  const { days, hours, minutes } = remaining(new Date(until).getTime(), now);
  return html`<p class="countdown">${label}
    ${pluralize(days, "day")}, ${pluralize(hours, "hour")}, ${pluralize(minutes, "minute")}</p>`.toString();
}

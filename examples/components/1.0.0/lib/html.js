// Tiny HTML helpers shared by every component: escaping and a tagged template.
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(value) {
  return String(value ?? "").replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

export class SafeHtml {
  constructor(text) {
    this.text = text;
  }
  toString() {
    return this.text;
  }
}

export function raw(text) {
  return new SafeHtml(String(text));
}

function interpolate(value) {
  if (value instanceof SafeHtml) return value.text;
  if (Array.isArray(value)) return value.map(interpolate).join("");
  if (value === false || value === null || value === undefined) return "";
  return escapeHtml(value);
}

// html`<p>${text}</p>` escapes interpolations unless they are SafeHtml.
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((value, i) => {
    out += interpolate(value) + strings[i + 1];
  });
  return new SafeHtml(out);
}

export function classNames(...names) {
  return names.filter(Boolean).join(" ");
}

export function mountInto(element, rendered) {
  element.innerHTML = String(rendered);
  return element;
}

// Number, price and date formatting with Intl, shared by price-tag, card and countdown.
export function formatPrice(amount, currency = "EUR", locale = "en-US") {
  return new Intl.NumberFormat(locale, { style: "currency", currency }).format(amount);
}

export function formatDate(date, locale = "en-US") {
  return new Intl.DateTimeFormat(locale, { year: "numeric", month: "short", day: "numeric" }).format(
    new Date(date),
  );
}

export function pluralize(count, singular, plural = `${singular}s`) {
  return `${count} ${count === 1 ? singular : plural}`;
}

export function discount(price, percent) {
  return Math.round(price * (100 - percent)) / 100;
}

// Strings shown by components, per locale; unknown locales fall back to English.
const MESSAGES = {
  en: {
    subscribe: "Subscribe",
    emailPlaceholder: "you@example.com",
    readMore: "Read more",
    rights: "All rights reserved.",
    next: "Next",
    previous: "Previous",
  },
  de: {
    subscribe: "Abonnieren",
    emailPlaceholder: "du@example.com",
    readMore: "Weiterlesen",
    rights: "Alle Rechte vorbehalten.",
    next: "Weiter",
    previous: "Zurück",
  },
};

export function t(key, locale = "en") {
  const table = MESSAGES[locale] ?? MESSAGES.en;
  return table[key] ?? MESSAGES.en[key] ?? key;
}

export const LOCALES = Object.keys(MESSAGES);

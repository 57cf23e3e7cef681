// Prices are minor units with an ISO currency (`{amount: 1250, currency: "EUR"}`); the
// currency decides how many of those make a major unit.

const formats = new Map();

function format(currency) {
  if (!formats.has(currency)) {
    formats.set(currency, new Intl.NumberFormat(undefined, { style: "currency", currency }));
  }
  return formats.get(currency);
}

export function digits(currency) {
  return format(currency).resolvedOptions().maximumFractionDigits;
}

export function money(value) {
  if (!value || typeof value.amount !== "number") return "";
  return format(value.currency).format(value.amount / 10 ** digits(value.currency));
}

/** "12.50" in EUR → 1250; undefined when it is not a price. */
export function minorUnits(text, currency) {
  const places = digits(currency);
  const match = /^\s*(\d+)(?:[.,](\d+))?\s*$/.exec(text);
  if (!match || (match[2] ?? "").length > places) return undefined;
  const fraction = (match[2] ?? "").padEnd(places, "0");
  return Number(match[1]) * 10 ** places + Number(fraction || 0);
}

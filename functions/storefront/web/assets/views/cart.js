// The cart (change quantities, remove, totals) and checkout with a sandbox payment token.

import { h, fill, alertBox, busy } from "../dom.js";
import { api, session } from "../api.js";
import { money } from "../money.js";
import { go, signInFirst } from "../page.js";

/** The sandbox provider's tokens and what each does to an order. */
export const PAYMENT_TOKENS = [
  ["tok_ok", "Approved card", "The payment is authorized and captured; the order is confirmed."],
  ["tok_declined", "Declined card", "The provider declines the payment; the order is cancelled and its stock released."],
  ["tok_slow", "Slow provider", "The provider answers after a few seconds (sandbox_slow_ms); the order still completes."],
];

function lines(cart, editable, box, redraw) {
  const row = (line) => {
    const quantity = h("input", {
      type: "number",
      min: 1,
      max: 99,
      value: line.quantity,
      "aria-label": `Quantity of ${line.name}`,
      onchange: async () => {
        try {
          redraw(await api("PATCH", `/cart/items/${encodeURIComponent(line.product_id)}`, {
            body: { quantity: Number(quantity.value) },
          }));
        } catch (error) {
          box.show(error.message);
          quantity.value = line.quantity;
        }
      },
    });
    const remove = h(
      "button",
      {
        type: "button",
        class: "secondary",
        "aria-label": `Remove ${line.name}`,
        onclick: async () => {
          try {
            redraw(await api("DELETE", `/cart/items/${encodeURIComponent(line.product_id)}`));
          } catch (error) {
            box.show(error.message);
          }
        },
      },
      "Remove",
    );
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, h("a", { href: `/shop/products/${encodeURIComponent(line.product_id)}` }, line.name)),
      h("td", { class: "number", "data-label": "Price" }, money(line.unit_price)),
      h("td", { class: "number", "data-label": "Quantity" }, editable ? quantity : line.quantity),
      h("td", { class: "number", "data-label": "Total" }, money(line.line_total)),
      editable && h("td", {}, remove),
    );
  };
  return h(
    "table",
    { class: "lines" },
    h("caption", { class: "visually-hidden" }, "Cart lines"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Product"),
        h("th", { scope: "col", class: "number" }, "Price"),
        h("th", { scope: "col", class: "number" }, "Quantity"),
        h("th", { scope: "col", class: "number" }, "Total"),
        editable && h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
      ),
    ),
    h("tbody", {}, cart.lines.map(row)),
    h(
      "tfoot",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "row", colspan: 3 }, "Total"),
        h("td", { class: "number total", "data-testid": "cart-total" }, money(cart.total)),
        editable && h("td"),
      ),
    ),
  );
}

export async function cart(main) {
  if (!session.signedIn) return signInFirst("Sign in to see your cart.");
  const box = alertBox();
  const draw = (current) => {
    if (current.lines.length === 0) {
      fill(main, h("h1", {}, "Cart"), box, h("p", {}, "Your cart is empty. ", h("a", { href: "/" }, "Browse the products.")));
      return;
    }
    fill(
      main,
      h("h1", {}, "Cart"),
      box,
      lines(current, true, box, draw),
      h("p", { class: "actions" }, h("a", { href: "/shop/checkout", class: "button" }, "Check out")),
    );
  };
  draw(await api("GET", "/cart"));
}

export async function checkout(main) {
  if (!session.signedIn) return signInFirst("Sign in to check out.");
  const current = await api("GET", "/cart");
  if (current.lines.length === 0) {
    fill(main, h("h1", {}, "Checkout"), h("p", {}, "Your cart is empty. ", h("a", { href: "/" }, "Browse the products.")));
    return;
  }
  // One key per visit of this page: a second click or a retry after a lost answer
  // finds the order the first one placed instead of placing another.
  const idempotencyKey = crypto.randomUUID();
  const box = alertBox();
  const choices = h(
    "fieldset",
    { class: "choices" },
    h("legend", {}, "Payment (sandbox)"),
    h(
      "p",
      { class: "muted" },
      "This shop pays through a sandbox provider: pick the card it should pretend you used. No real money moves.",
    ),
    PAYMENT_TOKENS.map(([token, label, effect], i) =>
      h(
        "div",
        { class: "choice" },
        h("input", { type: "radio", name: "payment_token", id: `pay-${token}`, value: token, checked: i === 0 }),
        h("label", { for: `pay-${token}` }, h("strong", {}, label), ` (${token}): `, effect),
      ),
    ),
  );
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const token = form.elements.payment_token.value;
        const accepted = await busy(form, box, () =>
          api("POST", "/orders", { body: { payment_token: token }, headers: { "idempotency-key": idempotencyKey } }),
        );
        if (accepted) go(`/shop/orders/${encodeURIComponent(accepted.id)}`);
      },
    },
    choices,
    box,
    h("button", { type: "submit" }, `Place order · ${money(current.total)}`),
  );
  fill(main, h("h1", {}, "Checkout"), lines(current, false), form);
}

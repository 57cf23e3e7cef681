// My orders, and one order's saga followed live until it is confirmed or cancelled.

import { h, fill, alertBox } from "../dom.js";
import { api, session } from "../api.js";
import { money } from "../money.js";
import { signInFirst } from "../page.js";

const STEPS = {
  inventory: "Reserving stock",
  payment: "Authorizing the payment",
  completion: "Committing stock and capturing the payment",
  done: "Done",
};

/** `shop.order.placed` → "Order placed". */
export function eventLabel(type) {
  const words = type.replace(/^shop\./, "").replace(/[._-]+/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function when(time) {
  const date = new Date(time);
  return Number.isNaN(date.getTime()) ? time : date.toLocaleString();
}

function statusBadge(status) {
  return h("span", { class: `status ${String(status).toLowerCase()}` }, status);
}

export async function orders(main) {
  if (!session.signedIn) return signInFirst("Sign in to see your orders.");
  const listing = await api("GET", "/orders?per_page=50");
  fill(
    main,
    h("h1", {}, "My orders"),
    listing.items.length === 0
      ? h("p", {}, "No orders yet. ", h("a", { href: "/" }, "Browse the products."))
      : h(
          "ul",
          { class: "rows" },
          listing.items.map((o) =>
            h(
              "li",
              {},
              h("a", { href: `/shop/orders/${encodeURIComponent(o.id)}` }, `Order ${o.id}`),
              " ",
              statusBadge(o.status),
              h("span", { class: "muted" }, ` ${money(o.total)} · ${when(o.created_at)}`),
            ),
          ),
        ),
  );
}

export async function order(main, { params: [id], signal }) {
  if (!session.signedIn) return signInFirst("Sign in to see your order.");
  const path = `/orders/${encodeURIComponent(id)}`;
  const box = alertBox();
  const status = h("p", { class: "saga", role: "status", "aria-live": "polite" });
  const history = h("ol", { class: "history", "aria-label": "What happened" });
  const details = h("div");
  const actions = h("p", { class: "actions" });

  const draw = (o) => {
    const cancellable = o.status === "PENDING" && (o.step === "inventory" || o.step === "payment");
    fill(
      status,
      statusBadge(o.status),
      " ",
      o.status === "PENDING" ? `${STEPS[o.step] ?? o.step}…` : o.status === "CONFIRMED" ? "Your order is confirmed." : "",
      o.status === "CANCELLED" && h("span", { class: "reason" }, `Cancelled: ${o.reason ?? "no reason given"}.`),
    );
    fill(
      history,
      (o.events ?? []).map((e) => h("li", {}, h("time", { datetime: e.time }, when(e.time)), " ", eventLabel(e.type))),
    );
    fill(
      details,
      h(
        "ul",
        { class: "rows" },
        o.lines.map((l) => h("li", {}, `${l.quantity} × ${names.get(l.product_id) ?? l.sku} at ${money(l.unit_price)}`)),
      ),
      h("p", { class: "price" }, `Total ${money(o.total)}`),
    );
    fill(
      actions,
      cancellable &&
        h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                await api("POST", `${path}/cancel`);
                box.show();
              } catch (error) {
                box.show(error.message);
              }
              refresh();
            },
          },
          "Cancel order",
        ),
    );
  };

  // Read again every 600 ms while pending, so the history shows each step as the saga
  // takes it (a long poll with `wait_ms` would only return at the final status).
  const refresh = async () => {
    try {
      const o = await api("GET", path);
      if (!signal.aborted) draw(o);
      return o;
    } catch (error) {
      if (!signal.aborted) box.show(error.message);
      return null;
    }
  };

  const first = await api("GET", path);
  // Orders keep SKUs and prices; the names come from the catalog (a deleted product
  // keeps its SKU).
  const names = new Map();
  await Promise.all(
    first.lines.map((l) =>
      api("GET", `/products/${encodeURIComponent(l.product_id)}`)
        .then((p) => names.set(l.product_id, p.name))
        .catch(() => {}),
    ),
  );
  fill(
    main,
    h("p", {}, h("a", { href: "/shop/orders" }, "← My orders")),
    h("h1", {}, `Order ${first.id}`),
    status,
    box,
    actions,
    h("h2", {}, "Items"),
    details,
    h("h2", {}, "History"),
    history,
  );
  draw(first);
  let o = first;
  while (!signal.aborted && (!o || o.status === "PENDING")) {
    await new Promise((resolve) => setTimeout(resolve, 600));
    if (signal.aborted) break;
    o = (await refresh()) ?? o;
  }
}

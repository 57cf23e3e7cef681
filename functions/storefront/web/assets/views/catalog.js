// Browsing: the product list with search, category and pages, and one product's page.

import { h, fill, labelled, alertBox } from "../dom.js";
import { api, session } from "../api.js";
import { money } from "../money.js";
import { flash, go, signInFirst } from "../page.js";

const PER_PAGE = 12;

/** Adds to the cart; a visitor is sent to sign in and brought back. */
export async function addToCart(productId, quantity, box) {
  if (!session.signedIn) {
    signInFirst("Sign in to fill your cart.");
    return;
  }
  try {
    const cart = await api("POST", "/cart/items", { body: { product_id: productId, quantity } });
    const line = cart.lines.find((l) => l.product_id === productId);
    flash(`${line?.name ?? "The product"} is in your cart (${line?.quantity ?? quantity}).`, "success");
  } catch (error) {
    if (error.status === 401) signInFirst();
    else box.show(error.message);
  }
}

/** The categories to filter by, from the first page of the catalog. */
async function categories() {
  const page = await api("GET", "/products?per_page=100");
  return [...new Set(page.items.map((p) => p.category))].sort();
}

export async function catalog(main, { query, signal }) {
  const q = query.get("q") ?? "";
  const category = query.get("category") ?? "";
  const page = Math.max(1, Number(query.get("page")) || 1);
  const params = new URLSearchParams({ page, per_page: PER_PAGE });
  if (q) params.set("q", q);
  if (category) params.set("category", category);
  const [listing, known] = await Promise.all([api("GET", `/products?${params}`), categories()]);
  if (signal.aborted) return;

  const search = h("input", { type: "search", name: "q", value: q, placeholder: "Tea, mug, …" });
  const choose = h(
    "select",
    { name: "category" },
    h("option", { value: "" }, "All categories"),
    known.map((c) => h("option", { value: c, selected: c === category }, c)),
  );
  const form = h(
    "form",
    {
      role: "search",
      class: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        const next = new URLSearchParams();
        if (search.value.trim()) next.set("q", search.value.trim());
        if (choose.value) next.set("category", choose.value);
        go(`/${next.size ? `?${next}` : ""}`);
      },
    },
    labelled("Search", search),
    labelled("Category", choose),
    h("button", { type: "submit" }, "Search"),
  );
  const box = alertBox();
  const pages = Math.max(1, Math.ceil(listing.total / PER_PAGE));
  const link = (n, text) => {
    const at = new URLSearchParams(params);
    at.delete("per_page");
    at.set("page", n);
    return h("a", { href: `/?${at}`, class: "button secondary" }, text);
  };
  fill(
    main,
    h("h1", {}, "Products"),
    form,
    box,
    h(
      "p",
      { class: "muted", "aria-live": "polite" },
      listing.total === 0
        ? "No products match."
        : `${listing.total} product${listing.total === 1 ? "" : "s"}${q ? ` matching “${q}”` : ""}${category ? ` in ${category}` : ""}`,
    ),
    h(
      "ul",
      { class: "grid", "aria-label": "Products" },
      listing.items.map((p) =>
        h(
          "li",
          { class: "card" },
          h("h2", {}, h("a", { href: `/shop/products/${encodeURIComponent(p.id)}` }, p.name)),
          h("p", { class: "muted" }, p.category),
          h("p", { class: "description" }, p.description),
          h("p", { class: "price" }, money(p.price)),
          h(
            "button",
            { type: "button", "aria-label": `Add ${p.name} to the cart`, onclick: () => addToCart(p.id, 1, box) },
            "Add to cart",
          ),
        ),
      ),
    ),
    pages > 1 &&
      h(
        "nav",
        { class: "pager", "aria-label": "Pages" },
        page > 1 && link(page - 1, "Previous"),
        h("span", {}, `Page ${page} of ${pages}`),
        page < pages && link(page + 1, "Next"),
      ),
  );
}

export async function product(main, { params: [id] }) {
  const p = await api("GET", `/products/${encodeURIComponent(id)}`);
  const quantity = h("input", { type: "number", name: "quantity", min: 1, max: 99, value: 1, required: true });
  const box = alertBox();
  fill(
    main,
    h("p", {}, h("a", { href: "/" }, "← All products")),
    h("h1", {}, p.name),
    h("p", { class: "muted" }, `${p.category} · SKU ${p.sku}`),
    h("p", { class: "description" }, p.description),
    h("p", { class: "price big" }, money(p.price)),
    h(
      "form",
      {
        class: "inline",
        onsubmit: (event) => {
          event.preventDefault();
          addToCart(p.id, Number(quantity.value), box);
        },
      },
      labelled("Quantity", quantity),
      h("button", { type: "submit" }, "Add to cart"),
    ),
    box,
  );
}

// For admins: add a product to the catalog and set each product's stock.

import { h, fill, field, labelled, values, alertBox, busy } from "../dom.js";
import { api, session } from "../api.js";
import { money, minorUnits } from "../money.js";
import { flash, signInFirst } from "../page.js";

function stockRow(product, box) {
  const level = h("td", { class: "number" }, "…");
  const reserved = h("td", { class: "number" }, "…");
  const available = h("input", {
    type: "number",
    min: 0,
    required: true,
    name: "available",
    "aria-label": `Units of ${product.name} available`,
  });
  // The stock read below can answer after the admin started typing: it then leaves
  // the field alone, so a quick edit is not replaced by the old level.
  let edited = false;
  available.addEventListener("input", () => {
    edited = true;
  });
  const show = (stock, { keepEdit = false } = {}) => {
    level.textContent = String(stock.available);
    reserved.textContent = String(stock.reserved);
    if (!(keepEdit && edited)) available.value = stock.available;
  };
  api("GET", `/inventory/${encodeURIComponent(product.sku)}`)
    .then((stock) => show(stock, { keepEdit: true }))
    .catch((error) => {
      level.textContent = error.status === 404 ? "0" : "?";
      reserved.textContent = error.status === 404 ? "0" : "?";
      if (!edited) available.value = 0;
    });
  const form = h(
    "form",
    {
      class: "inline",
      onsubmit: async (event) => {
        event.preventDefault();
        const stock = await busy(form, box, () =>
          api("PUT", `/inventory/${encodeURIComponent(product.sku)}`, { body: { available: Number(available.value) } }),
        );
        if (stock) {
          show(stock);
          flash(`${product.name}: ${stock.available} available.`, "success");
        }
      },
    },
    available,
    h("button", { type: "submit", "aria-label": `Save the stock of ${product.name}` }, "Save"),
  );
  return h(
    "tr",
    {},
    h("th", { scope: "row" }, h("a", { href: `/shop/products/${encodeURIComponent(product.id)}` }, product.name)),
    h("td", {}, product.sku),
    h("td", { class: "number" }, money(product.price)),
    level,
    reserved,
    h("td", {}, form),
  );
}

export async function admin(main) {
  if (!session.signedIn) return signInFirst("Sign in as an admin.");
  if (!session.isAdmin) {
    fill(main, h("h1", {}, "Catalog and stock"), h("p", { class: "alert", role: "alert" }, "This page is for admins."));
    return;
  }
  const createBox = alertBox();
  const stockBox = alertBox();
  const rows = h("tbody");
  const listProducts = async () => {
    const page = await api("GET", "/products?per_page=100");
    fill(rows, page.items.map((p) => stockRow(p, stockBox)));
  };

  const currency = h("input", { name: "currency", value: "EUR", pattern: "[A-Z]{3}", maxlength: 3, required: true });
  const create = h(
    "form",
    {
      class: "stacked",
      onsubmit: async (event) => {
        event.preventDefault();
        const input = values(create);
        const amount = minorUnits(input.price, input.currency);
        if (amount === undefined) {
          createBox.show(`The price must be a number like 12.50 in ${input.currency}.`);
          return;
        }
        const created = await busy(create, createBox, () =>
          api("POST", "/products", {
            body: {
              sku: input.sku,
              name: input.name,
              description: input.description,
              category: input.category,
              price: { amount, currency: input.currency },
            },
          }),
        );
        if (created) {
          flash(`Added ${created.name} (${created.sku}). Set its stock below.`, "success");
          create.reset();
          await listProducts();
        }
      },
    },
    field("SKU", { name: "sku", required: true }),
    field("Name", { name: "name", required: true }),
    labelled("Description", h("textarea", { name: "description", rows: 3, required: true })),
    field("Category", { name: "category", required: true }),
    field("Price", { name: "price", inputmode: "decimal", placeholder: "12.50", required: true }),
    labelled("Currency (ISO code)", currency),
    createBox,
    h("button", { type: "submit" }, "Add product"),
  );

  fill(
    main,
    h("h1", {}, "Catalog and stock"),
    h("h2", {}, "New product"),
    create,
    h("h2", {}, "Stock"),
    stockBox,
    h(
      "table",
      { class: "lines" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Product", "SKU", "Price", "Available", "Reserved", "Set available"].map((c) =>
            h("th", { scope: "col", class: ["Price", "Available", "Reserved"].includes(c) ? "number" : undefined }, c),
          ),
        ),
      ),
      rows,
    ),
  );
  await listProducts();
}

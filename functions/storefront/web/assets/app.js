// The storefront's shell: a router over the History API (pages live under /shop/ so
// they never shadow the API's paths) and the navigation bar.

import { h, fill } from "./dom.js";
import { session, loaded } from "./api.js";
import { catalog, product } from "./views/catalog.js";
import { cart, checkout } from "./views/cart.js";
import { orders, order } from "./views/orders.js";
import { login, register, notifications, password } from "./views/account.js";
import { admin } from "./views/admin.js";
import { flash, go, setRenderer } from "./page.js";

const routes = [
  [/^\/$/, catalog, "Products"],
  [/^\/shop\/?$/, catalog, "Products"],
  [/^\/shop\/products\/([^/]+)$/, product, "Product"],
  [/^\/shop\/cart$/, cart, "Cart"],
  [/^\/shop\/checkout$/, checkout, "Checkout"],
  [/^\/shop\/orders$/, orders, "My orders"],
  [/^\/shop\/orders\/([^/]+)$/, order, "Order"],
  [/^\/shop\/notifications$/, notifications, "My notifications"],
  [/^\/shop\/login$/, login, "Sign in"],
  [/^\/shop\/register$/, register, "Create an account"],
  [/^\/shop\/password$/, password, "Password"],
  [/^\/shop\/account$/, password, "Account"],
  [/^\/shop\/admin$/, admin, "Catalog and stock"],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let current = new AbortController();

function drawNav() {
  const link = (href, text) =>
    h("li", {}, h("a", { href, "aria-current": location.pathname === href ? "page" : undefined }, text));
  const items = [link("/", "Products"), link("/shop/cart", "Cart")];
  if (session.signedIn) {
    items.push(
      link("/shop/orders", "My orders"),
      link("/shop/notifications", "Notifications"),
      link("/shop/account", "Account"),
    );
    if (session.isAdmin) items.push(link("/shop/admin", "Admin"));
    items.push(
      h(
        "li",
        {},
        h(
          "button",
          {
            class: "link",
            type: "button",
            onclick: async () => {
              await session.end();
              flash("You are signed out.");
              go("/");
            },
          },
          `Sign out${session.user ? ` (${session.user.name})` : ""}`,
        ),
      ),
    );
  } else {
    items.push(link("/shop/login", "Sign in"), link("/shop/register", "Register"));
  }
  fill(nav, items);
}

async function render() {
  current.abort();
  current = new AbortController();
  const signal = current.signal;
  const path = location.pathname;
  const match = routes.map(([pattern, view, title]) => [pattern.exec(path), view, title]).find(([m]) => m);
  drawNav();
  if (!match) {
    document.title = "Not found · Shop";
    fill(main, h("h1", { tabindex: "-1" }, "Page not found"), h("p", {}, h("a", { href: "/" }, "Back to the products")));
    main.querySelector("h1").focus();
    return;
  }
  const [found, view, title] = match;
  document.title = `${title} · Shop`;
  fill(main, h("p", { class: "loading" }, "Loading…"));
  try {
    await view(main, { params: found.slice(1).map(decodeURIComponent), query: new URLSearchParams(location.search), signal });
  } catch (error) {
    if (signal.aborted) return;
    fill(main, h("h1", { tabindex: "-1" }, title), h("p", { class: "alert", role: "alert" }, error.message));
  }
  if (!signal.aborted) {
    const heading = main.querySelector("h1");
    heading?.setAttribute("tabindex", "-1");
    // Moving focus to the new page's heading tells screen readers the page changed.
    if (document.activeElement === document.body || !main.contains(document.activeElement)) heading?.focus();
  }
}

document.addEventListener("click", (event) => {
  const anchor = event.target.closest?.("a[href]");
  if (!anchor || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || anchor.target) return;
  const url = new URL(anchor.href, location.href);
  if (url.origin !== location.origin || !(url.pathname === "/" || url.pathname.startsWith("/shop"))) return;
  event.preventDefault();
  flash();
  go(url.pathname + url.search);
});
setRenderer(render);
window.addEventListener("popstate", render);
session.onChange(drawNav);
loaded.then(render);

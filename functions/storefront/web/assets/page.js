// What every view may do to the page as a whole: navigate, and flash a message.

import { h, fill } from "./dom.js";

let render = () => {};

/** Set once by app.js: draws the page for the current location. */
export function setRenderer(draw) {
  render = draw;
}

/** Shows a message above the page (until the next one, or a click on a link). */
export function flash(message, kind = "info") {
  fill(document.getElementById("flash"), message ? h("p", { class: `flash ${kind}` }, message) : null);
}

export function go(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

/** Where to come back to after signing in. */
export function here() {
  return location.pathname + location.search;
}

/** The sign-in page, returning here afterwards. */
export function signInFirst(message = "Please sign in first.") {
  flash(message);
  go(`/shop/login?next=${encodeURIComponent(here())}`);
}

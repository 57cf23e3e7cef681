// Building the page from data without ever parsing it as HTML: every text the API
// returns goes in as a text node, so a product named `<img onerror=…>` stays a name.

/** `h("a", { href: "/x", class: "link" }, "text", child)`. `on*` props add listeners. */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "class") {
      element.className = value;
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the element's content. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

let fieldCount = 0;

/** A labelled input: `field("Email", { name: "email", type: "email" })`. */
export function field(label, props = {}) {
  return labelled(label, h("input", props));
}

/** `control` (an input, select or textarea) with its label. */
export function labelled(label, control) {
  if (!control.id) control.id = `field-${++fieldCount}`;
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control);
}

/** The values of a form's named controls. */
export function values(form) {
  return Object.fromEntries(new FormData(form).entries());
}

/** A region that announces errors to screen readers; `show(message)` / `show()`. */
export function alertBox() {
  const box = h("p", { class: "alert", role: "alert", hidden: true });
  box.show = (message) => {
    box.hidden = !message;
    box.textContent = message ?? "";
  };
  return box;
}

/** Disables a form's controls while `work` runs; errors go to `box`. */
export async function busy(form, box, work) {
  const controls = [...form.elements];
  controls.forEach((c) => (c.disabled = true));
  box?.show();
  try {
    return await work();
  } catch (error) {
    box?.show(error.message);
    return undefined;
  } finally {
    controls.forEach((c) => (c.disabled = false));
  }
}

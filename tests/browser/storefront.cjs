// The storefront driven by a person's actions in headless Chromium (playwright-core).
// Started by tests/tests/storefront.rs, which runs the shop, seeds the catalog and
// checks afterwards, through the API, what this script reports on its last line.
//
// Environment: SHOP_URL, PLAYWRIGHT (the playwright-core module), CHROMIUM, ADMIN_EMAIL,
// ADMIN_PASSWORD, SCREENSHOTS (a folder). For the one-time code it prints
// `OTP? <email>` and reads the code on its stdin (the test finds it in the shop's log).

"use strict";

const path = require("node:path");
const readline = require("node:readline");
const { chromium } = require(process.env.PLAYWRIGHT);

const base = process.env.SHOP_URL;
const screenshots = process.env.SCREENSHOTS;
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const TIMEOUT = 30_000;

function step(text) {
  console.log(`step: ${text}`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function askForCode(email) {
  console.log(`OTP? ${email}`);
  const { value, done } = await lines.next();
  check(!done && /^\d{6}$/.test(value.trim()), `no code for ${email}: ${value}`);
  return value.trim();
}

/** Fails the run on any script error, console error (CSP violations land there) or
 *  failed request of the page. */
function watch(page, problems) {
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !/status of 4\d\d/.test(message.text())) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on("requestfailed", (request) => {
    // Leaving a page cancels what it was still fetching: not a failure.
    if (!/ERR_ABORTED/.test(request.failure()?.errorText ?? "")) {
      problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`);
    }
  });
}

/** Every form control on the page has a name a screen reader can say. */
async function everyControlIsLabelled(page, where) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((c) => c.type !== "hidden" && c.labels.length === 0 && !c.getAttribute("aria-label"))
      .map((c) => c.outerHTML),
  );
  check(unlabelled.length === 0, `${where}: controls without a label: ${unlabelled.join(", ")}`);
}

/** Follows a link of the main navigation. */
async function menu(page, name) {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(screenshots, `${name}.png`), fullPage: true });
}

async function signIn(page, email, password) {
  await page.goto(`${base}/shop/login`);
  const form = page.locator("form", { has: page.getByRole("heading", { name: "With your password" }) });
  await form.getByLabel("Email").fill(email);
  await form.getByLabel("Password").fill(password);
  await form.getByRole("button", { name: "Sign in" }).click();
  await page.getByText(/^Welcome/).waitFor();
}

async function addToCartFromList(page, name) {
  await page.getByRole("button", { name: `Add ${name} to the cart` }).click();
  await page.getByText(`${name} is in your cart`).waitFor();
}

async function checkout(page, token) {
  await page.goto(`${base}/shop/checkout`);
  await page.getByLabel(new RegExp(`\\(${token}\\)`)).check();
  await everyControlIsLabelled(page, "checkout");
  await page.getByRole("button", { name: /^Place order/ }).click();
  await page.waitForURL(/\/shop\/orders\/[^/]+$/);
  return decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
}

async function finalStatus(page) {
  const status = page.getByRole("status").filter({ hasText: /CONFIRMED|CANCELLED/ });
  await status.waitFor({ timeout: TIMEOUT });
  return (await status.innerText()).trim();
}

async function customerShops(browser, customer) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  watch(page, problems);

  step("the catalog is the home page");
  await page.goto(`${base}/`);
  await page.getByRole("heading", { name: "Products", level: 1 }).waitFor();
  await page.getByRole("link", { name: "Green tea" }).waitFor();
  await everyControlIsLabelled(page, "catalog");
  await shot(page, "catalog-desktop");

  step("register, then sign out and sign in with the password");
  await menu(page, "Register");
  await page.getByLabel("Name").fill(customer.name);
  await page.getByLabel("Email").fill(customer.email);
  await page.getByLabel(/^Password/).fill(customer.password);
  await everyControlIsLabelled(page, "register");
  await page.getByRole("button", { name: "Create my account" }).click();
  await page.getByText(`Welcome, ${customer.name}.`).waitFor();
  await page.getByRole("button", { name: /^Sign out/ }).click();
  await page.getByText("You are signed out.").waitFor();
  await signIn(page, customer.email, customer.password);

  step("a wrong password gets the API's message");
  const wrong = await browser.newPage();
  await wrong.goto(`${base}/shop/login`);
  const wrongForm = wrong.locator("form", { has: wrong.getByRole("heading", { name: "With your password" }) });
  await wrongForm.getByLabel("Email").fill(customer.email);
  await wrongForm.getByLabel("Password").fill("not the password");
  await wrongForm.getByRole("button", { name: "Sign in" }).click();
  await wrongForm.getByRole("alert").filter({ hasText: /\S/ }).waitFor();
  await wrong.close();

  step("search, filter and add two products");
  await page.goto(`${base}/`);
  // The keyboard alone: type the search and press Enter.
  await page.getByLabel("Search").focus();
  await page.keyboard.type("tea");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\?q=tea/);
  await page.getByRole("link", { name: "Teapot" }).waitFor();
  check(await page.getByRole("link", { name: "Green tea" }).isVisible(), "the search finds Green tea");
  check((await page.getByRole("link", { name: "Travel mug" }).count()) === 0, "the search shows only matches");
  await page.getByLabel("Category").selectOption("kitchen");
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await page.waitForURL(/category=kitchen/);
  await page.getByText(/1 product matching “tea” in kitchen/).waitFor();
  await page.goto(`${base}/?q=tea`);
  await addToCartFromList(page, "Green tea");
  await page.getByRole("link", { name: "Teapot" }).click();
  await page.getByRole("heading", { name: "Teapot", level: 1 }).waitFor();
  await page.getByLabel("Quantity").fill("2");
  await page.getByRole("button", { name: "Add to cart" }).click();
  await page.getByText("Teapot is in your cart (2).").waitFor();
  await shot(page, "product-desktop");

  step("the cart totals in the products' currency, and follows quantity changes");
  await menu(page, "Cart");
  await page.getByRole("heading", { name: "Cart", level: 1 }).waitFor();
  const total = page.getByTestId("cart-total");
  check((await total.innerText()).includes("54.50"), `cart total ${await total.innerText()} (4.50 + 2 × 25.00)`);
  await page.getByLabel("Quantity of Green tea").fill("3");
  await page.getByLabel("Quantity of Green tea").press("Tab");
  await page.getByTestId("cart-total").filter({ hasText: "63.50" }).waitFor();
  await everyControlIsLabelled(page, "cart");
  await shot(page, "cart-desktop");

  step("check out with tok_ok: the order page follows the saga to CONFIRMED");
  await page.getByRole("link", { name: "Check out" }).click();
  await page.getByRole("heading", { name: "Checkout" }).waitFor();
  await shot(page, "checkout-desktop");
  const confirmed = await checkout(page, "tok_ok");
  const confirmedStatus = await finalStatus(page);
  check(confirmedStatus.includes("CONFIRMED"), `order ${confirmed}: ${confirmedStatus}`);
  await page.getByRole("list", { name: "What happened" }).getByText(/Order placed/).waitFor();
  check((await page.getByRole("button", { name: "Cancel order" }).count()) === 0, "no cancel once confirmed");
  await shot(page, "order-confirmed-desktop");

  step("the cart was emptied by the order; a declined card cancels the next one and says why");
  await page.goto(`${base}/shop/cart`);
  await page.getByText("Your cart is empty.").waitFor();
  await page.goto(`${base}/`);
  await addToCartFromList(page, "Travel mug");
  const declined = await checkout(page, "tok_declined");
  const declinedStatus = await finalStatus(page);
  check(declinedStatus.includes("CANCELLED"), `order ${declined}: ${declinedStatus}`);
  check(/Cancelled: .*declined/i.test(declinedStatus), `the reason is shown: ${declinedStatus}`);
  await shot(page, "order-cancelled-desktop");

  step("while the slow provider thinks, the customer cancels");
  await page.goto(`${base}/`);
  await addToCartFromList(page, "Travel mug");
  const withdrawn = await checkout(page, "tok_slow");
  await page.getByRole("button", { name: "Cancel order" }).click();
  const withdrawnStatus = await finalStatus(page);
  check(withdrawnStatus.includes("CANCELLED"), `order ${withdrawn}: ${withdrawnStatus}`);
  check((await page.getByRole("button", { name: "Cancel order" }).count()) === 0, "no cancel once cancelled");

  step("my orders and my notifications");
  await menu(page, "My orders");
  await page.getByRole("link", { name: `Order ${confirmed}` }).waitFor();
  await page.getByRole("link", { name: `Order ${declined}` }).waitFor();
  await shot(page, "orders-desktop");
  await menu(page, "Notifications");
  await page.getByRole("heading", { name: "My notifications" }).waitFor();
  await page.locator(".rows li").first().waitFor({ timeout: TIMEOUT });
  await shot(page, "notifications-desktop");

  check(problems.length === 0, problems.join("\n"));
  await context.close();
  return { confirmed, declined, withdrawn };
}

async function codeLogin(browser, customer) {
  step("sign in with a one-time code");
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  watch(page, problems);
  await page.goto(`${base}/shop/login`);
  const form = page.locator("form", { has: page.getByRole("heading", { name: "With a one-time code" }) });
  await form.getByLabel("Email").fill(customer.email);
  await form.getByRole("button", { name: "Send me a code" }).click();
  await form.getByText("Your login code is").waitFor();
  await shot(page, "login-code-desktop");
  const code = await askForCode(customer.email);
  await form.getByLabel("Code").fill(code);
  await form.getByRole("button", { name: "Sign in with the code" }).click();
  await page.getByText(`Welcome, ${customer.name}.`).waitFor();
  // The first code that came back from the address proved it: the password set at
  // registration (anyone could have set it) is gone, and the customer chooses one.
  await page.getByText("Your address is confirmed").waitFor();

  step("set a password after the address was confirmed, then sign in with it");
  await menu(page, "Account");
  await page.getByRole("heading", { name: "Password" }).waitFor();
  await everyControlIsLabelled(page, "password");
  await page.getByLabel("New password").fill(customer.password);
  await page.getByRole("button", { name: "Change my password" }).click();
  await page.getByText("Your password is changed").waitFor();
  await shot(page, "password-changed-desktop");
  await signIn(page, customer.email, customer.password);
  check(problems.length === 0, problems.join("\n"));
  await context.close();
}

async function adminKeepsTheCatalog(browser) {
  step("an admin adds a product and sets its stock");
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  watch(page, problems);
  await signIn(page, process.env.ADMIN_EMAIL, process.env.ADMIN_PASSWORD);
  await menu(page, "Admin");
  await page.getByRole("heading", { name: "Catalog and stock" }).waitFor();
  await page.getByLabel("SKU").fill("kettle-1");
  await page.getByLabel("Name", { exact: true }).fill("Electric kettle");
  await page.getByLabel("Description").fill("1.7 litres, boils in two minutes");
  await page.getByLabel("Category").fill("kitchen");
  await page.getByLabel("Price").fill("39.90");
  await everyControlIsLabelled(page, "admin");
  await page.getByRole("button", { name: "Add product" }).click();
  await page.getByText("Added Electric kettle (kettle-1).").waitFor();
  const stock = page.getByLabel("Units of Electric kettle available");
  await stock.fill("7");
  await page.getByRole("button", { name: "Save the stock of Electric kettle" }).click();
  await page.getByText("Electric kettle: 7 available.").waitFor();
  await page.reload();
  await page.getByRole("row", { name: /Electric kettle/ }).getByRole("cell", { name: "7", exact: true }).waitFor();
  await shot(page, "admin-desktop");
  check(problems.length === 0, problems.join("\n"));
  await context.close();
}

async function onAPhone(browser, customer) {
  step("the main pages on a phone-sized screen");
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  const problems = [];
  watch(page, problems);
  await page.goto(`${base}/`);
  await page.getByRole("link", { name: "Green tea" }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the catalog is ${overflow}px wider than the phone`);
  await shot(page, "catalog-phone");
  await signIn(page, customer.email, customer.password);
  await page.goto(`${base}/shop/products/${encodeURIComponent(customer.teapot)}`);
  await page.getByRole("heading", { name: "Teapot", level: 1 }).waitFor();
  await shot(page, "product-phone");
  await page.getByRole("button", { name: "Add to cart" }).click();
  await page.getByText(/Teapot is in your cart/).waitFor();
  await page.goto(`${base}/shop/cart`);
  await page.getByTestId("cart-total").waitFor();
  const cartOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(cartOverflow <= 0, `the cart is ${cartOverflow}px wider than the phone`);
  await shot(page, "cart-phone");
  await page.goto(`${base}/shop/checkout`);
  await page.getByRole("heading", { name: "Checkout" }).waitFor();
  await shot(page, "checkout-phone");
  await page.goto(`${base}/shop/orders/${encodeURIComponent(customer.confirmed)}`);
  await page.getByRole("status").filter({ hasText: "CONFIRMED" }).waitFor();
  await shot(page, "order-phone");
  await page.goto(`${base}/shop/login`);
  await shot(page, "login-phone");
  check(problems.length === 0, problems.join("\n"));
  await context.close();
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-background-networking"],
  });
  try {
    const customer = {
      name: "Ada Lovelace",
      email: `ada-${Date.now()}@example.com`,
      password: "analytical engine",
      teapot: process.env.TEAPOT_ID,
    };
    const orders = await customerShops(browser, customer);
    Object.assign(customer, orders);
    await codeLogin(browser, customer);
    await adminKeepsTheCatalog(browser);
    await onAPhone(browser, customer);
    console.log(`RESULT ${JSON.stringify({ email: customer.email, ...orders })}`);
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`FAILED: ${error.stack ?? error}`);
    process.exit(1);
  },
);

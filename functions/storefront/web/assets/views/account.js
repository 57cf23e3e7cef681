// Signing in (password or a one-time code), registering, passwords (change and
// reset), and my notifications.

import { h, fill, field, values, alertBox, busy } from "../dom.js";
import { api, session } from "../api.js";
import { flash, go, signInFirst } from "../page.js";

/** Only paths of this app are followed after signing in (never another site). */
function next(query) {
  const target = query.get("next") ?? "/";
  return target.startsWith("/") && !target.startsWith("//") ? target : "/";
}

/** The note for tokens that came with the first proof of the account's address. */
const RESET_NOTE =
  " Your address is confirmed: any password or phone set for this account before was removed, " +
  "and every other session ended. Set a password under Account.";

/** The field for a six-digit code sent by mail or SMS. */
function codeField(extra = {}) {
  return field("Code", {
    name: "code",
    inputmode: "numeric",
    autocomplete: "one-time-code",
    pattern: "[0-9]{6}",
    maxlength: 6,
    ...extra,
  });
}

async function signedIn(tokens, query) {
  await session.start(tokens);
  const reset = tokens.credentials_reset ? RESET_NOTE : "";
  flash(`Welcome${session.user ? `, ${session.user.name}` : ""}.${reset}`, "success");
  go(next(query), { replace: true });
}

export async function login(main, { query }) {
  const passwordBox = alertBox();
  const password = h(
    "form",
    {
      "aria-labelledby": "password-login",
      onsubmit: async (event) => {
        event.preventDefault();
        // Read before `busy` disables the controls: a form's data leaves disabled ones out.
        const credentials = values(password);
        const tokens = await busy(password, passwordBox, () => api("POST", "/auth/login", { body: credentials }));
        if (tokens) await signedIn(tokens, query);
      },
    },
    h("h2", { id: "password-login" }, "With your password"),
    field("Email", { name: "email", type: "email", autocomplete: "username", required: true }),
    field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true }),
    passwordBox,
    h("button", { type: "submit" }, "Sign in"),
  );

  const codeBox = alertBox();
  const sent = h("div", { class: "notice", role: "status", hidden: true });
  const codeStep = h(
    "div",
    { hidden: true },
    codeField({ "aria-describedby": "code-help" }),
    h("p", { id: "code-help", class: "muted" }, "Six digits; the code works once, for 5 minutes."),
    h("button", { type: "submit", name: "verify" }, "Sign in with the code"),
  );
  const otp = h(
    "form",
    {
      "aria-labelledby": "otp-login",
      onsubmit: async (event) => {
        event.preventDefault();
        const { email, code } = values(otp);
        if (codeStep.hidden) {
          const ok = await busy(otp, codeBox, () => api("POST", "/auth/otp/request", { body: { email } }));
          if (ok === undefined) return;
          fill(
            sent,
            h("p", {}, `If ${email} has an account, a code is on its way.`),
            h(
              "p",
              {},
              "With the shop's default setup no mail service is configured: the code is written to the log ",
              "of the terminal running ",
              h("code", {}, "shop up"),
              ", on a line with ",
              h("code", {}, "Your login code is"),
              ". With a mail or SMS API configured it arrives there instead.",
            ),
          );
          sent.hidden = false;
          codeStep.hidden = false;
          otp.elements.code.required = true;
          otp.elements.code.focus();
          return;
        }
        const tokens = await busy(otp, codeBox, () => api("POST", "/auth/otp/verify", { body: { email, code } }));
        if (tokens) await signedIn(tokens, query);
      },
    },
    h("h2", { id: "otp-login" }, "With a one-time code"),
    field("Email", { name: "email", type: "email", autocomplete: "email", required: true }),
    h("button", { type: "submit", name: "send" }, "Send me a code"),
    sent,
    codeStep,
    codeBox,
  );

  fill(
    main,
    h("h1", {}, "Sign in"),
    h("div", { class: "columns" }, password, otp),
    h("p", {}, "New here? ", h("a", { href: `/shop/register${location.search}` }, "Create an account"), "."),
    h("p", {}, "Forgot your password? ", h("a", { href: "/shop/password" }, "Set a new one with a code"), "."),
  );
}

/** Proving the signed-in customer's address: a code mailed there, typed back here. */
function addressProof() {
  const box = alertBox();
  const codeStep = h(
    "div",
    { hidden: true },
    codeField(),
    h("button", { type: "submit", name: "confirm" }, "Confirm my address"),
  );
  const form = h(
    "form",
    {
      "aria-labelledby": "address-proof",
      onsubmit: async (event) => {
        event.preventDefault();
        const { code } = values(form);
        if (codeStep.hidden) {
          const ok = await busy(form, box, () => api("POST", "/users/me/email/verify", { body: {} }));
          if (ok === undefined) return;
          codeStep.hidden = false;
          form.elements.code.required = true;
          form.elements.code.focus();
          return;
        }
        const user = await busy(form, box, () => api("POST", "/users/me/email/verify", { body: { code } }));
        if (!user) return;
        await session.refreshUser();
        flash("Your address is confirmed.", "success");
        go("/shop/account", { replace: true });
      },
    },
    h("h2", { id: "address-proof" }, "Your address"),
    h(
      "p",
      {},
      `${session.user.email} is not confirmed yet. Until it is, a code sent there and typed in anywhere `,
      "would remove this account's password and sign out its sessions: confirm it while signed in to keep them.",
    ),
    h("button", { type: "submit", name: "send" }, "Send me a code"),
    codeStep,
    box,
  );
  return form;
}

/** Signed in: the address and the password. Signed out: reset the password with a
 *  code mailed to the address. */
export async function password(main) {
  const box = alertBox();
  if (session.signedIn) {
    const form = h(
      "form",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          const { current_password, new_password } = values(form);
          const body = current_password ? { current_password, new_password } : { new_password };
          const tokens = await busy(form, box, () => api("POST", "/users/me/password", { body }));
          if (!tokens) return;
          await session.start(tokens);
          flash("Your password is changed; every other session is signed out.", "success");
          go("/", { replace: true });
        },
      },
      field("Current password (leave empty if the account has none)", {
        name: "current_password",
        type: "password",
        autocomplete: "current-password",
      }),
      field("New password (8 characters or more)", {
        name: "new_password",
        type: "password",
        autocomplete: "new-password",
        minlength: 8,
        required: true,
      }),
      box,
      h("button", { type: "submit" }, "Change my password"),
    );
    const unproven = session.user && session.user.email_verified === false;
    return fill(
      main,
      h("h1", {}, "Account"),
      unproven ? addressProof() : h("p", {}, `Signed in as ${session.user?.email ?? ""}.`),
      h("h2", {}, "Password"),
      form,
    );
  }
  const codeStep = h(
    "div",
    { hidden: true },
    codeField(),
    field("New password (8 characters or more)", {
      name: "new_password",
      type: "password",
      autocomplete: "new-password",
      minlength: 8,
    }),
    h("button", { type: "submit", name: "reset" }, "Set the new password"),
  );
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const { email, code, new_password } = values(form);
        if (codeStep.hidden) {
          const ok = await busy(form, box, () => api("POST", "/auth/otp/request", { body: { email } }));
          if (ok === undefined) return;
          codeStep.hidden = false;
          form.elements.code.required = true;
          form.elements.new_password.required = true;
          form.elements.code.focus();
          return;
        }
        const body = { email, code, new_password };
        const tokens = await busy(form, box, () => api("POST", "/auth/password/reset", { body }));
        if (tokens) await signedIn(tokens, new URLSearchParams());
      },
    },
    field("Email", { name: "email", type: "email", autocomplete: "email", required: true }),
    h("button", { type: "submit", name: "send" }, "Send me a code"),
    codeStep,
    box,
  );
  fill(
    main,
    h("h1", {}, "Set a new password"),
    h("p", {}, "A code goes to your address; with it you choose a new password, and every session is signed out."),
    form,
  );
}

export async function register(main, { query }) {
  const box = alertBox();
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const account = values(form);
        const tokens = await busy(form, box, async () => {
          await api("POST", "/auth/register", { body: account });
          return api("POST", "/auth/login", { body: { email: account.email, password: account.password } });
        });
        if (tokens) await signedIn(tokens, query);
      },
    },
    field("Name", { name: "name", autocomplete: "name", required: true }),
    field("Email", { name: "email", type: "email", autocomplete: "email", required: true }),
    field("Password (8 characters or more)", {
      name: "password",
      type: "password",
      autocomplete: "new-password",
      minlength: 8,
      required: true,
    }),
    box,
    h("button", { type: "submit" }, "Create my account"),
  );
  fill(
    main,
    h("h1", {}, "Create an account"),
    form,
    h("p", {}, "Already have one? ", h("a", { href: `/shop/login${location.search}` }, "Sign in"), "."),
  );
}

export async function notifications(main) {
  if (!session.signedIn) return signInFirst("Sign in to see your notifications.");
  const { items } = await api("GET", "/notifications");
  fill(
    main,
    h("h1", {}, "My notifications"),
    h("p", { class: "muted" }, "What the shop sent you, newest first (login codes are shown masked)."),
    items.length === 0
      ? h("p", {}, "Nothing yet.")
      : h(
          "ul",
          { class: "rows" },
          items.map((n) =>
            h(
              "li",
              {},
              h("strong", {}, n.subject),
              h("span", { class: "muted" }, ` · ${n.channel} · ${new Date(n.created_at).toLocaleString()}`),
              h("p", {}, n.body),
            ),
          ),
        ),
  );
}

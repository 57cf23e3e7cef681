// The shop's JSON API, same origin. Tokens live in localStorage so a reload keeps the
// login; an expired access token is refreshed once, transparently.

const KEY = "shop.session";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function load() {
  try {
    return JSON.parse(localStorage.getItem(KEY)) ?? null;
  } catch {
    return null;
  }
}

let tokens = load();
let user = null;
const listeners = new Set();

function changed() {
  for (const listener of listeners) listener(user);
}

export const session = {
  get signedIn() {
    return tokens !== null;
  },
  get user() {
    return user;
  },
  get isAdmin() {
    return user?.roles?.includes("admin") ?? false;
  },
  onChange(listener) {
    listeners.add(listener);
  },
  /** Keeps the tokens of a login and loads who it is. */
  async start(newTokens) {
    tokens = { access_token: newTokens.access_token, refresh_token: newTokens.refresh_token };
    localStorage.setItem(KEY, JSON.stringify(tokens));
    await this.refreshUser();
  },
  async refreshUser() {
    if (!tokens) return;
    try {
      user = await api("GET", "/users/me");
    } catch (error) {
      if (error.status === 401) this.forget();
      else throw error;
    }
    changed();
  },
  forget() {
    tokens = null;
    user = null;
    localStorage.removeItem(KEY);
    changed();
  },
  async end() {
    const refresh = tokens?.refresh_token;
    if (refresh) {
      await api("POST", "/auth/logout", { body: { refresh_token: refresh } }).catch(() => {});
    }
    this.forget();
  },
};

async function send(method, path, body, headers, token) {
  const init = { method, headers: { accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (token) init.headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "The shop cannot be reached. Check your connection and try again.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  return { response, data };
}

async function refreshed() {
  const { response, data } = await send("POST", "/auth/refresh", { refresh_token: tokens.refresh_token }, {});
  if (!response.ok) return false;
  tokens = { access_token: data.access_token, refresh_token: data.refresh_token };
  localStorage.setItem(KEY, JSON.stringify(tokens));
  return true;
}

/** Calls the API; resolves with the JSON body, rejects with an ApiError whose message
 *  is the API's own (`{"error": {"code", "message"}}`). */
export async function api(method, path, { body, headers = {} } = {}) {
  let { response, data } = await send(method, path, body, headers, tokens?.access_token);
  if (response.status === 401 && tokens && !path.startsWith("/auth/")) {
    if (await refreshed()) {
      ({ response, data } = await send(method, path, body, headers, tokens.access_token));
    } else {
      session.forget();
    }
  }
  if (!response.ok) {
    const code = data?.error?.code ?? "error";
    let message = data?.error?.message ?? `The shop answered ${response.status}.`;
    if (response.status === 401 && !path.startsWith("/auth/")) message = "Please sign in first.";
    if (response.status === 429) {
      const wait = response.headers.get("retry-after");
      message = wait ? `${message} (try again in ${wait} s)` : message;
    }
    throw new ApiError(response.status, code, message);
  }
  return data;
}

export const loaded = session.refreshUser().catch(() => {});

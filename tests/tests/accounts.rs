//! Accounts end to end through the gateway: the users service issues RS256 tokens,
//! the gateway verifies them against its JWKS (over local service chaining), and roles
//! decide what each caller may do.

use serde_json::{Value, json};
use shop_tests::*;

const ADMIN_EMAIL: &str = "admin@shop.test";
const ADMIN_PASSWORD: &str = "change-me-now";
const SERVICE_SECRET: &str = "notifications-secret-1";

/// Where the products and users services keep their data.
enum Storage {
    /// Spin SQLite databases under the data dir.
    Sqlite,
    /// A PostgreSQL database each (URLs).
    Postgres { products: String, users: String },
}

impl Storage {
    /// Manifest lines giving a component its database, and the `hosts` it reaches.
    fn component_config(&self, label: &str, hosts: &[&str]) -> String {
        let hosts = |extra: Option<&str>| {
            let all: Vec<String> = extra
                .into_iter()
                .chain(hosts.iter().copied())
                .map(|h| format!("{h:?}"))
                .collect();
            format!("allowed_outbound_hosts = [{}]\n", all.join(", "))
        };
        match self {
            Storage::Sqlite => format!("sqlite_databases = [\"{label}\"]\n{}", hosts(None)),
            Storage::Postgres { products, users } => {
                let url = if label == "products" { products } else { users };
                format!(
                    "{}[component.{label}.variables]\ndatabase_url = \"{url}\"\n",
                    hosts(Some("postgres://127.0.0.1:5432"))
                )
            }
        }
    }
}

/// The app; `key_value` is extra runtime config (e.g. Redis for the `default` store);
/// login codes are mailed to `mail_api`.
fn app(dir: &TempDir, key_value: &str, storage: &Storage, mail_api: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.path().join("runtime-config.toml"),
        format!(
            "[sqlite_database.products]\ntype = \"spin\"\n[sqlite_database.users]\ntype = \"spin\"\n\
             [sqlite_database.notifications]\ntype = \"spin\"\n{key_value}"
        ),
    )
    .unwrap();
    dir.manifest(&format!(
        "[variables]\nadmin_email = {{ default = \"\" }}\nadmin_password = {{ default = \"\", secret = true }}\n{}{}{}{}{}{}{}{}{}{}",
        http_trigger("/...", "gateway"),
        private_trigger("products"),
        private_trigger("users"),
        private_trigger("cart"),
        private_trigger("notifications"),
        component(
            "notifications",
            "notifications-http",
            &format!(
                "sqlite_databases = [\"notifications\"]\nallowed_outbound_hosts = [\"{mail_api}\"]\n\
                 [component.notifications.variables]\nmail_api_url = \"{mail_api}\""
            ),
        ),
        component(
            "cart",
            "cart",
            "key_value_stores = [\"default\"]\nallowed_outbound_hosts = [\"http://products.spin.internal\"]",
        ),
        component(
            "gateway",
            "gateway",
            "allowed_outbound_hosts = [\"http://products.spin.internal\", \"http://users.spin.internal\", \"http://cart.spin.internal\"]\n\
             key_value_stores = [\"default\"]\n[component.gateway.variables]\njwt_issuer = \"https://shop.test\"\n\
             jwks_url = \"http://users.spin.internal/.well-known/jwks.json\"",
        ),
        component(
            "products",
            "products",
            &format!("key_value_stores = [\"default\"]\n{}", storage.component_config("products", &[]))
        ),
        component(
            "users",
            "users",
            &format!(
                "key_value_stores = [\"default\"]\n{}{}jwt_issuer = \"https://shop.test\"\n\
                 admin_email = \"{{{{ admin_email }}}}\"\nadmin_password = \"{{{{ admin_password }}}}\"\n\
                 service_clients = \"notifications={SERVICE_SECRET}\"",
                storage.component_config("users", &["http://notifications.spin.internal"]),
                if matches!(storage, Storage::Sqlite) { "[component.users.variables]\n" } else { "" },
            )
        ),
    ))
}

struct Client<'a> {
    shop: &'a Shop,
}

impl Client<'_> {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = client().request(method.parse().unwrap(), format!("{}{path}", self.shop.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn login(&self, email: &str, password: &str) -> Value {
        let (status, tokens) = self.call(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "email": email, "password": password })),
        );
        assert_eq!(status, 200, "login {email}: {tokens}");
        tokens
    }
}

#[test]
fn the_shop_flow_on_embedded_defaults() {
    shop_flow("", &Storage::Sqlite, "accounts", &[]);
}

/// On Spin 3.6's Redis key-value store (what SpinKube ships) every compare-and-swap
/// that writes reports failure; logins, their throttling and the gateway's rate limits
/// must still work as on `shop up` (the host reproduces Spin's behaviour on request).
#[test]
fn the_shop_flow_on_redis_as_spin_3_6_runs_it() {
    shop_tests::full_shop::flush_redis(5);
    shop_flow(
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/5\"\n",
        &Storage::Sqlite,
        "accounts-spin-redis",
        &[("SHOP_EMULATE_SPIN_REDIS_CAS", "1")],
    );
}

/// Users and products in PostgreSQL (a database each); carts, the JWKS cache and
/// rate-limit buckets in Redis (database 9, flushed first).
#[test]
fn the_shop_flow_on_postgres_and_redis() {
    shop_tests::full_shop::flush_redis(9);
    let storage = Storage::Postgres {
        products: fresh_postgres_database("shop_test_accounts_products"),
        users: fresh_postgres_database("shop_test_accounts_users"),
    };
    shop_flow(
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/9\"\n",
        &storage,
        "accounts-pg-redis",
        &[],
    );
    // The services' rows are in PostgreSQL.
    assert_eq!(
        psql(
            "shop_test_accounts_users",
            "SELECT name FROM users WHERE email = 'ada@example.com'"
        ),
        "Ada Lovelace"
    );
    assert_eq!(psql("shop_test_accounts_products", "SELECT sku FROM products"), "MUG-1");
    use std::io::{Read, Write};
    let mut redis = std::net::TcpStream::connect("127.0.0.1:6379").unwrap();
    redis
        .write_all(b"*2\r\n$6\r\nSELECT\r\n$1\r\n9\r\n*2\r\n$4\r\nKEYS\r\n$6\r\ncart:*\r\n")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut reply = vec![0u8; 4096];
    let n = redis.read(&mut reply).unwrap();
    let text = String::from_utf8_lossy(&reply[..n]);
    assert!(text.contains("cart:"), "the cart lives in Redis: {text}");
}

fn shop_flow(key_value: &str, storage: &Storage, label: &str, env: &[(&str, &str)]) {
    let dir = TempDir::new(label);
    let (mail_api, mails) = recording_api();
    let shop = Shop::start_with(
        &app(&dir, key_value, storage, &mail_api),
        ShopOptions {
            data_dir: &dir.path().join("data"),
            args: vec![],
            env: [
                ("SPIN_VARIABLE_ADMIN_EMAIL", ADMIN_EMAIL),
                ("SPIN_VARIABLE_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ]
            .iter()
            .chain(env)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        },
    );
    let c = Client { shop: &shop };

    // The seeded admin manages the catalog.
    let admin = c.login(ADMIN_EMAIL, ADMIN_PASSWORD);
    let admin_token = admin["access_token"].as_str().unwrap();
    let mug = json!({ "sku": "MUG-1", "name": "Blue mug", "description": "Stoneware", "category": "kitchen",
                      "price": { "amount": 1299, "currency": "EUR" } });
    let (status, product) = c.call("POST", "/products", Some(admin_token), Some(mug.clone()));
    assert_eq!(status, 201, "{product}");

    // A customer registers, logs in, reads the catalog, edits their profile.
    let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
    let (status, registered) = c.call("POST", "/auth/register", None, Some(ada.clone()));
    assert_eq!(
        (status, registered["roles"].clone()),
        (201, json!(["customer"])),
        "{registered}"
    );
    assert_eq!(c.call("POST", "/auth/register", None, Some(ada)).0, 409);
    let tokens = c.login("ada@example.com", "correct horse");
    let token = tokens["access_token"].as_str().unwrap();
    let (status, jwks) = c.call("GET", "/.well-known/jwks.json", None, None);
    assert_eq!((status, jwks["keys"][0]["alg"].as_str()), (200, Some("RS256")));
    let (status, page) = c.call("GET", "/products?q=mug", Some(token), None);
    assert_eq!((status, page["total"].as_i64()), (200, Some(1)));
    let (status, me) = c.call("GET", "/users/me", Some(token), None);
    assert_eq!((status, me["email"].as_str()), (200, Some("ada@example.com")));
    let (status, me) = c.call(
        "PATCH",
        "/users/me",
        Some(token),
        Some(json!({ "name": "Ada Lovelace" })),
    );
    assert_eq!((status, me["name"].as_str()), (200, Some("Ada Lovelace")));

    // A service (here: notifications) gets a short-lived token and reads a user's
    // contact details through the gateway; a customer may not.
    let credentials = json!({ "client_id": "notifications", "client_secret": SERVICE_SECRET });
    let (status, issued) = c.call("POST", "/auth/service-token", None, Some(credentials));
    assert_eq!((status, issued["expires_in"].as_i64()), (200, Some(300)), "{issued}");
    let service_token = issued["access_token"].as_str().unwrap();
    let ada_path = format!("/users/{}", me["id"].as_str().unwrap());
    let (status, contact) = c.call("GET", &ada_path, Some(service_token), None);
    assert_eq!(
        (status, contact["email"].as_str()),
        (200, Some("ada@example.com")),
        "{contact}"
    );
    assert_eq!(c.call("GET", &ada_path, Some(token), None).0, 403);
    assert_eq!(c.call("GET", &ada_path, None, None).0, 401);
    assert_eq!(
        c.call("GET", "/users/me", Some(service_token), None).0,
        403,
        "a service is no customer"
    );
    let wrong = json!({ "client_id": "notifications", "client_secret": "guessed-secret-123" });
    assert_eq!(c.call("POST", "/auth/service-token", None, Some(wrong)).0, 401);

    // The cart, priced with current catalog prices.
    let product_id = product["id"].as_str().unwrap();
    let (status, cart) = c.call(
        "POST",
        "/cart/items",
        Some(token),
        Some(json!({ "product_id": product_id, "quantity": 2 })),
    );
    assert_eq!((status, cart["total"]["amount"].as_i64()), (200, Some(2598)), "{cart}");
    let (status, cart) = c.call(
        "PATCH",
        &format!("/cart/items/{product_id}"),
        Some(token),
        Some(json!({ "quantity": 3 })),
    );
    assert_eq!((status, cart["lines"][0]["quantity"].as_u64()), (200, Some(3)));
    let mut cheaper = mug.clone();
    cheaper["price"]["amount"] = json!(1000);
    assert_eq!(
        c.call(
            "PUT",
            &format!("/products/{product_id}"),
            Some(admin_token),
            Some(cheaper)
        )
        .0,
        200
    );
    let (_, cart) = c.call("GET", "/cart", Some(token), None);
    assert_eq!(
        cart["total"],
        json!({ "amount": 3000, "currency": "EUR" }),
        "the new price shows at once"
    );
    let (status, _) = c.call(
        "POST",
        "/cart/items",
        Some(token),
        Some(json!({ "product_id": "ghost", "quantity": 1 })),
    );
    assert_eq!(status, 404);
    assert_eq!(c.call("GET", "/cart", None, None).0, 401);
    let (status, cart) = c.call("DELETE", &format!("/cart/items/{product_id}"), Some(token), None);
    assert_eq!((status, cart["lines"].as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(c.call("DELETE", "/cart", Some(token), None).0, 200);

    // Roles and tokens are enforced.
    assert_eq!(c.call("POST", "/products", Some(token), Some(mug.clone())).0, 403);
    assert_eq!(c.call("GET", "/users/me", None, None).0, 401);
    let (status, _) = c.call(
        "POST",
        "/auth/login",
        None,
        Some(json!({ "email": "ada@example.com", "password": "nope-nope" })),
    );
    assert_eq!(status, 401);

    // Refresh tokens rotate and are single-use; logout revokes.
    let refresh = json!({ "refresh_token": tokens["refresh_token"] });
    let (status, rotated) = c.call("POST", "/auth/refresh", None, Some(refresh.clone()));
    assert_eq!(status, 200, "{rotated}");
    let new_token = rotated["access_token"].as_str().unwrap();
    assert_eq!(c.call("GET", "/users/me", Some(new_token), None).0, 200);
    let rotated_refresh = json!({ "refresh_token": rotated["refresh_token"] });
    let (status, other_login) = c.call(
        "POST",
        "/auth/login",
        None,
        Some(json!({ "email": "ada@example.com", "password": "correct horse" })),
    );
    assert_eq!(status, 200, "{other_login}");
    assert_eq!(
        c.call("POST", "/auth/logout", None, Some(rotated_refresh.clone())).0,
        204
    );
    assert_eq!(c.call("POST", "/auth/refresh", None, Some(rotated_refresh)).0, 401);
    assert_eq!(
        c.call("POST", "/auth/refresh", None, Some(refresh)).0,
        401,
        "single use"
    );
    // Logout ends the login's access tokens too, at once, not when they expire.
    for ended in [token, new_token] {
        let (status, refused) = c.call("GET", "/users/me", Some(ended), None);
        assert_eq!(status, 401, "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("revoked"),
            "{refused}"
        );
    }
    let other = other_login["access_token"].as_str().unwrap();
    assert_eq!(
        c.call("GET", "/users/me", Some(other), None).0,
        200,
        "another login goes on"
    );

    // OTP login: the code reaches the customer's mailbox (the notifications service
    // mails it), and is nowhere in the users service's outbox.
    let (status, _) = c.call(
        "POST",
        "/auth/otp/request",
        None,
        Some(json!({ "email": "ada@example.com" })),
    );
    assert_eq!(status, 202);
    let mailed = mails.lock().unwrap().len();
    // Asked again at once: the same answer an unknown address gets, and no new mail
    // (the code mailed a moment ago still works).
    assert_eq!(
        c.call(
            "POST",
            "/auth/otp/request",
            None,
            Some(json!({ "email": "ada@example.com" }))
        )
        .0,
        202
    );
    let (code, to) = last_login_code(&mails);
    assert_eq!(mails.lock().unwrap().len(), mailed, "no second mail");
    assert_eq!(to, "ada@example.com");
    let query = "SELECT payload FROM outbox WHERE event_type = 'shop.user.otp_requested' ORDER BY seq DESC LIMIT 1";
    let payload: Vec<u8> = match storage {
        Storage::Sqlite => rusqlite::Connection::open(dir.path().join("data/sqlite_db_users.db"))
            .unwrap()
            .query_row(query, [], |r| r.get(0))
            .unwrap(),
        Storage::Postgres { users, .. } => psql(
            users.rsplit('/').next().unwrap(),
            &query.replace("SELECT payload", "SELECT convert_from(payload, 'UTF8')"),
        )
        .into_bytes(),
    };
    let shop_domain::ShopEvent::OtpRequested(event) =
        shop_domain::ShopEvent::decode("shop.user.otp_requested", &payload).unwrap()
    else {
        panic!("not an otp event")
    };
    assert_eq!(event.destination, "ada@example.com");
    assert!(
        !String::from_utf8_lossy(&payload).contains(&code),
        "the event carries the code"
    );
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let (status, error) = c.call(
        "POST",
        "/auth/otp/verify",
        None,
        Some(json!({ "email": "ada@example.com", "code": wrong })),
    );
    assert_eq!((status, error["error"]["code"].as_str()), (401, Some("invalid_code")));
    let (status, tokens) = c.call(
        "POST",
        "/auth/otp/verify",
        None,
        Some(json!({ "email": "ada@example.com", "code": code })),
    );
    assert_eq!(status, 200, "{tokens}");
    // The first code back from the address proves it: the password set at
    // registration (anyone could have set it) ends with it.
    assert_eq!(tokens["credentials_reset"], true, "{tokens}");
    let otp_token = tokens["access_token"].as_str().unwrap();
    let (status, me) = c.call("GET", "/users/me", Some(otp_token), None);
    assert_eq!((status, me["email_verified"].as_bool()), (200, Some(true)), "{me}");

    // 20 wrong guesses at once: at most 5 are ever evaluated, the rest find it locked.
    // (Counts stay small: the gateway's rate limit holds for this whole test.)
    let bob = json!({ "email": "bob@example.com", "password": "correct horse", "name": "Bob" });
    assert_eq!(c.call("POST", "/auth/register", None, Some(bob)).0, 201);
    let request = json!({ "email": "bob@example.com" });
    assert_eq!(c.call("POST", "/auth/otp/request", None, Some(request)).0, 202);
    let (code, _) = last_login_code(&mails);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    let guess = json!({ "email": "bob@example.com", "code": wrong });
                    let (status, body) = c.call("POST", "/auth/otp/verify", None, Some(guess));
                    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
                })
            })
            .collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    let evaluated = answers.iter().filter(|(_, code)| code == "invalid_code").count();
    let locked = answers.iter().filter(|(_, code)| code == "too_many_attempts").count();
    assert!(
        evaluated <= 4 && evaluated + locked == answers.len() && locked > 0,
        "{evaluated} wrong guesses answered `attempts left`: {answers:?}"
    );
    let right = json!({ "email": "bob@example.com", "code": code });
    assert_eq!(c.call("POST", "/auth/otp/verify", None, Some(right)).0, 429, "locked");

    // 12 wrong passwords, then the right one: paused, with Retry-After.
    let carol = json!({ "email": "carol@example.com", "password": "correct horse", "name": "Carol" });
    assert_eq!(c.call("POST", "/auth/register", None, Some(carol)).0, 201);
    let statuses: Vec<u16> = (0..12)
        .map(|_| {
            let guess = json!({ "email": "carol@example.com", "password": "wrong horse!" });
            c.call("POST", "/auth/login", None, Some(guess)).0
        })
        .collect();
    // 5 free failures, then a pause that doubles with each failure let through (the
    // unit tests follow the exact schedule on a fake clock).
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 5, "{statuses:?}");
    // The right password while paused is refused too. Pauses start at 1 s, which a
    // busy machine can outlast between two requests, so wait out the short ones
    // (each failure let through after one doubles the next) and try the right
    // password during a pause of 3 s or more.
    let login = |password: &str| {
        let response = client()
            .post(format!("{}/auth/login", shop.base))
            .json(&json!({ "email": "carol@example.com", "password": password }))
            .send()
            .unwrap();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        (response.status().as_u16(), retry)
    };
    let mut paused = false;
    for _ in 0..10 {
        match login("wrong horse!") {
            (429, Some(wait)) if wait >= 3 => {
                let (status, retry) = login("correct horse");
                assert_eq!(status, 429, "the right password during a pause");
                assert!(retry.is_some(), "with Retry-After");
                paused = true;
                break;
            }
            (429, Some(wait)) => std::thread::sleep(std::time::Duration::from_secs(wait)),
            (status, _) => assert_eq!(status, 401, "a wrong password let through"),
        }
    }
    assert!(paused, "the pauses never grew to 3 s");

    // Malformed input: 4xx with a JSON error, never a 500.
    for (body, expected) in [
        (
            json!({ "email": "not-an-email", "password": "long enough", "name": "X" }),
            400,
        ),
        (
            json!({ "email": "b@example.com", "password": "short", "name": "X" }),
            400,
        ),
        (
            json!({ "email": "b@example.com", "password": "long enough", "name": "X", "roles": ["admin"] }),
            400,
        ),
    ] {
        let (status, error) = c.call("POST", "/auth/register", None, Some(body));
        assert_eq!(status, expected, "{error}");
        assert!(error["error"]["code"].is_string());
    }
}

/// Account pre-hijacking through the gateway: a stranger registers the victim's
/// address with his own password and signs in. The victim, refused registration,
/// signs in with a code mailed to her address: from then on the stranger's password
/// and his live access token are refused, and the victim sets a password of her own.
#[test]
fn a_stranger_who_registered_an_address_first_loses_it_to_its_owner() {
    let dir = TempDir::new("accounts-prehijack");
    let (mail_api, mails) = recording_api();
    let shop = Shop::start(&app(&dir, "", &Storage::Sqlite, &mail_api), &dir.path().join("data"));
    let c = Client { shop: &shop };
    let register = |password: &str| {
        c.call(
            "POST",
            "/auth/register",
            None,
            Some(json!({ "email": "victim@example.com", "password": password, "name": "Someone" })),
        )
    };
    assert_eq!(register("strangers-pass").0, 201);
    let stranger = c.login("victim@example.com", "strangers-pass");
    let stranger_token = stranger["access_token"].as_str().unwrap();
    assert_eq!(c.call("GET", "/users/me", Some(stranger_token), None).0, 200);

    assert_eq!(register("victims-pass").0, 409);
    let otp = json!({ "email": "victim@example.com" });
    assert_eq!(c.call("POST", "/auth/otp/request", None, Some(otp)).0, 202);
    let (code, to) = last_login_code(&mails);
    assert_eq!(to, "victim@example.com");
    let (status, victim) = c.call(
        "POST",
        "/auth/otp/verify",
        None,
        Some(json!({ "email": "victim@example.com", "code": code })),
    );
    assert_eq!(
        (status, victim["credentials_reset"].as_bool()),
        (200, Some(true)),
        "{victim}"
    );
    let victim_token = victim["access_token"].as_str().unwrap();

    let (status, _) = c.call(
        "POST",
        "/auth/login",
        None,
        Some(json!({ "email": "victim@example.com", "password": "strangers-pass" })),
    );
    assert_eq!(status, 401, "the stranger's password ended");
    let (status, refused) = c.call("GET", "/users/me", Some(stranger_token), None);
    assert_eq!(status, 401, "the stranger's session ended: {refused}");
    let refresh = json!({ "refresh_token": stranger["refresh_token"] });
    assert_eq!(c.call("POST", "/auth/refresh", None, Some(refresh)).0, 401);

    let (status, me) = c.call("GET", "/users/me", Some(victim_token), None);
    assert_eq!((status, me["email_verified"].as_bool()), (200, Some(true)), "{me}");
    let new_password = json!({ "new_password": "victims-pass" });
    let (status, fresh) = c.call("POST", "/users/me/password", Some(victim_token), Some(new_password));
    assert_eq!(status, 200, "{fresh}");
    c.login("victim@example.com", "victims-pass");
}

//! The storefront: its files as a browser gets them through the gateway, and a person's
//! path through it in Debian's Chromium driven by playwright-core (tests/browser/
//! storefront.cjs; scripts/browser-tools installs both). Screenshots of the main pages
//! at desktop and phone width go to `<target>/storefront-screenshots/`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_tests::full_shop::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, FullShop, wait_for};
use shop_tests::{client, target_dir};

const BROWSER_RUN_LIMIT: Duration = Duration::from_secs(300);

fn header(response: &reqwest::blocking::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_gateway_serves_the_app_beside_the_api() {
    let shop = FullShop::start(Backend::Embedded, "storefront-files", 0, &[]);
    let base = shop.api().base;
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut request = client().get(format!("{base}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().unwrap()
    };

    let index = get("/", &[]);
    assert_eq!(index.status(), 200);
    assert_eq!(header(&index, "content-type"), "text/html; charset=utf-8");
    for (name, expected) in gateway::security::HEADERS {
        assert_eq!(header(&index, name), expected, "{name}");
    }
    let html = index.text().unwrap();
    assert!(
        html.contains(r#"<script type="module" src="/assets/app.js">"#),
        "{html}"
    );

    let script = get("/assets/app.js", &[]);
    assert_eq!(script.status(), 200);
    assert_eq!(header(&script, "content-type"), "text/javascript; charset=utf-8");
    assert_eq!(header(&script, "cache-control"), "no-cache");
    let etag = header(&script, "etag");
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag:?}");
    let again = get("/assets/app.js", &[("if-none-match", &etag)]);
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.bytes().unwrap().is_empty());

    // A page of the app, opened directly or reloaded, is the app.
    let page = get("/shop/orders/o-123", &[]);
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().unwrap(), html);

    let missing = get("/assets/nope.js", &[]);
    assert_eq!(missing.status(), 404);
    assert_eq!(header(&missing, "content-type"), "application/json");
    assert_eq!(missing.json::<Value>().unwrap()["error"]["code"], "not_found");

    // The API keeps its paths and answers JSON, with the same security headers.
    let products = get("/products", &[]);
    assert_eq!(products.status(), 200);
    assert_eq!(header(&products, "content-type"), "application/json");
    assert_eq!(header(&products, "x-content-type-options"), "nosniff");
    let refused = client().post(format!("{base}/")).send().unwrap();
    assert_eq!(refused.status(), 405);
    assert_eq!(header(&refused, "allow"), "GET");
}

/// (playwright-core module, Chromium executable) from scripts/browser-tools.
fn browser_tools() -> (String, String) {
    let lines = shop_tests::tool_script("browser-tools");
    let [module, chromium] = lines.as_slice() else {
        panic!("scripts/browser-tools printed {lines:?}")
    };
    assert!(Path::new(chromium).exists(), "no Chromium at {chromium}");
    (module.clone(), chromium.clone())
}

/// The code of the last login-code notification to `email` in the host's log, which is
/// where the notifications service sends it when no mail API is configured.
fn login_code_in_log(shop: &FullShop, email: &str) -> Option<String> {
    let log = shop.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(email) && l.contains("Your login code is"))?;
    let after = line.split("Your login code is ").nth(1)?;
    Some(after.chars().take_while(char::is_ascii_digit).collect())
}

fn seed_catalog(shop: &FullShop) -> String {
    let api = shop.api();
    let admin = api.admin();
    let mut teapot = String::new();
    for (sku, name, description, category, amount) in [
        ("tea-1", "Green tea", "Loose-leaf sencha, 100 g", "tea", 450),
        ("pot-1", "Teapot", "Cast iron, 0.8 litres", "kitchen", 2500),
        ("mug-1", "Travel mug", "Keeps coffee hot for hours", "kitchen", 800),
    ] {
        let product = json!({ "sku": sku, "name": name, "description": description, "category": category,
                              "price": { "amount": amount, "currency": "EUR" } });
        let (status, created) = api.call("POST", "/products", Some(&admin), Some(product));
        assert_eq!(status, 201, "{created}");
        let stock = json!({ "available": 50 });
        let path = format!("/inventory/{sku}");
        assert_eq!(api.call("PUT", &path, Some(&admin), Some(stock)).0, 200);
        if sku == "pot-1" {
            teapot = created["id"].as_str().unwrap().to_string();
        }
    }
    teapot
}

#[test]
fn a_person_shops_signs_in_by_code_and_an_admin_stocks_a_product() {
    let (playwright, chromium) = browser_tools();
    let shop = FullShop::start(Backend::Embedded, "storefront-browser", 0, &[]);
    let teapot = seed_catalog(&shop);
    let screenshots: PathBuf = target_dir().join("storefront-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/storefront.cjs");

    let mut node = Command::new("node")
        .arg(&script)
        .env("SHOP_URL", shop.api().base)
        .env("PLAYWRIGHT", &playwright)
        .env("CHROMIUM", &chromium)
        .env("ADMIN_EMAIL", ADMIN_EMAIL)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SCREENSHOTS", &screenshots)
        .env("TEAPOT_ID", &teapot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Debian: apt-get install nodejs npm)");
    let mut to_node = node.stdin.take().unwrap();
    let stderr = shop_tests::Captured::default();
    stderr.follow(node.stderr.take().unwrap());

    // A hung browser is stopped, which ends its output below and fails the test.
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (finished, pid) = (finished.clone(), node.id());
        std::thread::spawn(move || {
            let deadline = Instant::now() + BROWSER_RUN_LIMIT;
            while Instant::now() < deadline && !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
            }
            if !finished.load(Ordering::SeqCst) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        })
    };

    // The script's progress, the code it asks for, and its result, line by line.
    let mut result = None;
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("browser: {line}");
        if let Some(email) = line.strip_prefix("OTP? ") {
            let deadline = Instant::now() + Duration::from_secs(20);
            let code = loop {
                if let Some(code) = login_code_in_log(&shop, email) {
                    break code;
                }
                assert!(
                    Instant::now() < deadline,
                    "no login code for {email} in the log:\n{}",
                    shop.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            writeln!(to_node, "{code}").unwrap();
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<Value>(json).unwrap());
        }
    }
    let status = node.wait().unwrap();
    finished.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    assert!(
        status.success(),
        "the browser run failed ({status}; it is stopped after {BROWSER_RUN_LIMIT:?}):\n{}",
        stderr.text()
    );
    let result = result.expect("the browser run reports its orders");

    // What the person did, as the API sees it.
    let api = shop.api();
    let admin = api.admin();
    let confirmed = api.concluded(&admin, result["confirmed"].as_str().unwrap(), Duration::from_secs(5));
    assert_eq!(confirmed["status"], "CONFIRMED", "{confirmed}");
    let mut bought: Vec<(String, u64)> = confirmed["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["sku"].as_str().unwrap().to_string(), l["quantity"].as_u64().unwrap()))
        .collect();
    bought.sort();
    assert_eq!(bought, [("pot-1".to_string(), 2), ("tea-1".to_string(), 3)]);
    assert_eq!(confirmed["total"], json!({ "amount": 6350, "currency": "EUR" }));
    let declined = api.concluded(&admin, result["declined"].as_str().unwrap(), Duration::from_secs(5));
    assert_eq!(declined["status"], "CANCELLED", "{declined}");
    let withdrawn = api.concluded(&admin, result["withdrawn"].as_str().unwrap(), Duration::from_secs(10));
    assert_eq!(withdrawn["status"], "CANCELLED", "{withdrawn}");
    // The slow authorization answers after the cancel, and is voided then.
    let withdrawn_id = withdrawn["id"].as_str().unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || api.payment_status(&admin, withdrawn_id)
            == "voided"),
        "payment of {withdrawn_id}: {}",
        api.payment_status(&admin, withdrawn_id)
    );
    assert_eq!(api.stock(&admin, "pot-1"), (48, 0), "2 teapots sold");
    assert_eq!(
        api.stock(&admin, "mug-1"),
        (50, 0),
        "the cancelled mugs' stock came back"
    );
    assert_eq!(api.stock(&admin, "kettle-1"), (7, 0), "the admin's stock");
    let (_, kettles) = api.call("GET", "/products?q=kettle", None, None);
    assert_eq!(
        kettles["items"][0]["price"],
        json!({ "amount": 3990, "currency": "EUR" })
    );
    for page in ["catalog", "product", "cart", "checkout", "order", "login"] {
        assert!(
            screenshots.join(format!("{page}-phone.png")).exists(),
            "{page}-phone.png"
        );
    }
}

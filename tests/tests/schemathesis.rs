//! schemathesis (PyPI, installed by scripts/schemathesis) against the gateway's
//! `/openapi.json` on embedded defaults, as an admin and as a customer: no server
//! error, every status code and response body as documented, JSON where JSON is
//! promised, and every 405 with `Allow`. Bounded in examples (and in time) so it
//! fits the test command; a fixed seed keeps a failure reproducible.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shop_tests::full_shop::{Backend, FullShop};

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,unsupported_method";
const EXAMPLES: &str = "25";
const TIME_LIMIT: Duration = Duration::from_secs(300);

fn schemathesis() -> String {
    shop_tests::tool_script("schemathesis").concat()
}

/// Runs schemathesis with `token`; its report when it finds something.
fn fuzz(st: &str, base: &str, token: &str, seed: &str) -> Result<(), String> {
    let report = std::env::temp_dir().join(format!("shop-schemathesis-{}-{seed}.txt", std::process::id()));
    // schemathesis keeps a cache in its working directory: not in the clone.
    let mut run = Command::new(st)
        .current_dir(std::env::temp_dir())
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS, "--max-examples", EXAMPLES, "--seed", seed])
        .args(["--request-timeout", "10", "--no-color"])
        .stdout(std::fs::File::create(&report).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("schemathesis starts");
    let deadline = Instant::now() + TIME_LIMIT;
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            return Err(format!("schemathesis ran past {TIME_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    match status.success() {
        true => Ok(()),
        false => Err(text),
    }
}

#[test]
fn the_documented_api_holds_under_schemathesis() {
    let st = schemathesis();
    let shop = FullShop::start(Backend::Embedded, "schemathesis", 0, &[]);
    let api = shop.api();
    let admin = api.admin();
    let customer = api.customer("fuzz@example.com");
    let base = shop.shop().base.clone();
    let mut failures = Vec::new();
    for (who, token, seed) in [("admin", &admin, "1"), ("customer", &customer, "2")] {
        if let Err(report) = fuzz(&st, &base, token, seed) {
            failures.push(format!("as {who}:\n{report}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

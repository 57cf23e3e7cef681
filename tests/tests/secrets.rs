//! A secret stays with its owner: after an order and a login-code request on the whole
//! shop, neither the payment token nor the code is in any event record (every topic
//! of the log, dead letters included), outbox row or other service's database, nor in
//! any answer but the owner's. The token's owner is payments; the code's is the
//! customer's mailbox.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use shop_tests::full_shop::{Backend, DATABASES, FullShop, wait_for};

/// Every row of every table of the SQLite file at `path`, as text.
fn dump(path: &Path) -> String {
    let db = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = String::new();
    for table in tables {
        let mut statement = db.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = statement.column_count();
        let mut rows = statement.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            out.push_str(&table);
            for i in 0..columns {
                out.push(' ');
                out.push_str(&match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    other => format!("{other:?}"),
                });
            }
            out.push('\n');
        }
    }
    out
}

#[test]
fn no_token_or_code_outside_its_owner() {
    let (mail_api, mails) = shop_tests::recording_api();
    let shop = FullShop::start(
        Backend::Embedded,
        "secrets",
        0,
        &[
            ("SPIN_VARIABLE_MAIL_API_URL", &mail_api),
            ("SPIN_VARIABLE_MAIL_API_HOST", &mail_api),
        ],
    );
    let api = shop.api();
    let admin = api.admin();
    let mug = api.product(&admin, "MUG", 1250, 10);
    let ada = api.customer("ada@example.com");

    let id = api.place(&ada, &mug, 1, "tok_ok");
    let order = api.concluded(&ada, &id, Duration::from_secs(30));
    assert_eq!(order["status"], "CONFIRMED", "{order}\n{}", shop.log());
    assert!(
        !order.to_string().contains("tok_ok"),
        "GET /orders/{id} shows the token: {order}"
    );
    let (_, mine) = api.call("GET", "/orders", Some(&ada), None);
    assert!(!mine.to_string().contains("tok_ok"), "{mine}");
    let (_, payment) = api.call("GET", &format!("/payments/{id}"), Some(&ada), None);
    assert!(!payment.to_string().contains("tok_ok"), "{payment}");

    let (status, _) = api.call(
        "POST",
        "/auth/otp/request",
        None,
        Some(json!({ "email": "ada@example.com" })),
    );
    assert_eq!(status, 202);
    let (code, _) = shop_tests::last_login_code(&mails);
    let (_, notifications) = api.call("GET", "/notifications", Some(&ada), None);
    assert!(
        notifications.to_string().contains("otp"),
        "the code's message is recorded: {notifications}"
    );
    assert!(!notifications.to_string().contains(&code), "{notifications}");

    let log = shop.data_dir().join("events/log.db");
    assert!(
        wait_for(Duration::from_secs(10), || dump(&log)
            .contains("shop.user.otp_requested")),
        "the otp_requested event is published"
    );
    let events = dump(&log);
    assert!(events.contains(&id), "the log holds the order's events");
    assert!(!events.contains("tok_ok"), "an event carries the payment token");
    assert!(!events.contains(&code), "an event carries the login code");
    for service in DATABASES {
        let stored = dump(&shop.data_dir().join(format!("sqlite_db_{service}.db")));
        assert!(!stored.contains(&code), "the {service} database keeps the login code");
        // The token's owner keeps it until the authorization is answered, then drops it
        // (the sandbox provider, in the same database, keeps its own charges).
        if service != "payments" {
            assert!(
                !stored.contains("tok_ok"),
                "the {service} database keeps the payment token"
            );
        }
    }
    // The hand-over routes are for other services only: the gateway does not route them.
    let delivery = json!({ "user_id": null, "channel": "email", "destination": "eve@example.com",
                           "code": "123456", "expires_at": "2030-01-01T00:00:00Z" });
    assert_eq!(api.call("POST", "/deliveries/otp", Some(&ada), Some(delivery)).0, 404);
    let method = json!({ "token": "tok_declined" });
    assert_eq!(
        api.call("PUT", &format!("/payment-methods/{id}"), Some(&ada), Some(method))
            .0,
        404
    );
    let kept = shop.sql("payments", "SELECT count(*) FROM payment_methods");
    assert_eq!(
        kept, "0",
        "payments dropped the token once the authorization was answered"
    );
}

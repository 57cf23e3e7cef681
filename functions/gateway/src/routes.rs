//! Gateway routing decisions, as plain Rust so they are unit-tested natively.

use serde_json::{Value, json};

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

fn error(status: u16, code: &str, message: String) -> Reply {
    Reply {
        status,
        body: json!({ "error": { "code": code, "message": message } }),
    }
}

pub fn respond(method: &str, path: &str) -> Reply {
    match (method, path) {
        ("GET", "/") => Reply {
            status: 200,
            body: json!({ "service": "shop", "version": env!("CARGO_PKG_VERSION") }),
        },
        (_, "/") => error(405, "method_not_allowed", format!("{method} is not allowed on /")),
        _ => error(404, "not_found", format!("no route for {method} {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_errors() {
        let index = respond("GET", "/");
        assert_eq!(index.status, 200);
        assert_eq!(index.body["service"], "shop");
        let missing = respond("GET", "/nope");
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body["error"]["code"], "not_found");
        assert_eq!(respond("DELETE", "/").status, 405);
    }
}

//! What clients send, checked before anything is stored: JSON product bodies (strict:
//! unknown fields are refused, so a typo is not silently dropped) and list queries.

use serde_json::Value;
use shop_domain::types::ProductInput;

use crate::error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_PER_PAGE: u32 = 20;
pub const MAX_PER_PAGE: u32 = 100;
const PRODUCT_FIELDS: &[&str] = &["sku", "name", "description", "category", "price"];
const MONEY_FIELDS: &[&str] = &["amount", "currency"];
/// Prices up to ten billion in major units.
const MAX_AMOUNT: i64 = 1_000_000_000_000;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("validation_failed", message)
}

fn only_known_fields(object: &serde_json::Map<String, Value>, known: &[&str], what: &str) -> Result<(), ApiError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(invalid(format!(
            "unknown field `{unknown}` in {what}; expected {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let length = value.chars().count();
    if value.trim().len() < min || length > max {
        return Err(invalid(format!("`{field}` must be {min} to {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(format!("`{field}` must not contain control characters")));
    }
    Ok(())
}

/// Parses and validates a product body (create or replace).
pub fn product_input(body: &[u8]) -> Result<ProductInput, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!("bodies are limited to {MAX_BODY_BYTES} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON: {e}")))?;
    let Value::Object(object) = &value else {
        return Err(invalid("expected a JSON object"));
    };
    only_known_fields(object, PRODUCT_FIELDS, "product")?;
    if let Some(Value::Object(price)) = object.get("price") {
        only_known_fields(price, MONEY_FIELDS, "price")?;
    }
    let input: ProductInput = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    let sku_ok = !input.sku.is_empty()
        && input.sku.len() <= 64
        && input
            .sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !sku_ok {
        return Err(invalid("`sku` must be 1 to 64 letters, digits, `-`, `_` or `.`"));
    }
    check_text("name", &input.name, 1, 200)?;
    check_text("description", &input.description, 0, 5000)?;
    check_text("category", &input.category, 1, 64)?;
    if !(0..=MAX_AMOUNT).contains(&input.price.amount) {
        return Err(invalid(format!(
            "`price.amount` must be 0 to {MAX_AMOUNT} (minor units)"
        )));
    }
    if input.price.currency.len() != 3 || !input.price.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(invalid("`price.currency` must be an ISO 4217 code such as EUR"));
    }
    Ok(input)
}

/// `GET /products?page=&per_page=&category=&q=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub page: u32,
    pub per_page: u32,
    pub category: Option<String>,
    pub text: Option<String>,
}

fn decode_component(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_query", format!("bad percent-encoding in `{raw}`"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("invalid_query", "query is not UTF-8"))
}

impl ListQuery {
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut list = ListQuery {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            category: None,
            text: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_component(raw)?;
            let number = |max: u32| -> Result<u32, ApiError> {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| ApiError::bad_request("invalid_query", format!("`{key}` must be 1 to {max}")))
            };
            match key {
                "page" => list.page = number(1_000_000)?,
                "per_page" => list.per_page = number(MAX_PER_PAGE)?,
                "category" if !value.is_empty() => list.category = Some(value),
                "q" if value.chars().count() > 100 => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        "`q` is limited to 100 characters",
                    ));
                }
                "q" if !value.trim().is_empty() => list.text = Some(value.trim().to_string()),
                _ => {}
            }
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MUG: &str = r#"{"sku":"MUG-1","name":"Mug","description":"Blue","category":"kitchen","price":{"amount":1299,"currency":"EUR"}}"#;

    #[test]
    fn valid_products_parse() {
        let input = product_input(MUG.as_bytes()).unwrap();
        assert_eq!((input.sku.as_str(), input.price.amount), ("MUG-1", 1299));
    }

    #[test]
    fn bad_products_get_a_clear_4xx() {
        for (body, status, needle) in [
            ("{", 400, "invalid JSON"),
            ("[]", 400, "JSON object"),
            (r#"{"sku":"A"}"#, 400, "missing field"),
            (&MUG.replace("\"Mug\"", "42"), 400, "invalid type"),
            (
                &MUG.replace("\"category\"", "\"colour\":\"x\",\"category\""),
                400,
                "unknown field `colour`",
            ),
            (&MUG.replace("1299", "-1"), 400, "price.amount"),
            (&MUG.replace("EUR", "eur"), 400, "ISO 4217"),
            (&MUG.replace("MUG-1", "a b"), 400, "sku"),
            (&MUG.replace("\"Mug\"", "\"\""), 400, "name"),
            (
                &MUG.replace("\"currency\"", "\"cents\":1,\"currency\""),
                400,
                "unknown field `cents` in price",
            ),
        ] {
            let err = product_input(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, status, "{body}");
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
        let huge = format!(r#"{{"description":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert_eq!(product_input(huge.as_bytes()).unwrap_err().status, 413);
    }

    #[test]
    fn list_queries_have_defaults_and_limits() {
        assert_eq!(
            ListQuery::parse("").unwrap(),
            ListQuery {
                page: 1,
                per_page: 20,
                category: None,
                text: None
            }
        );
        let q = ListQuery::parse("page=2&per_page=5&category=kitchen&q=blue+mug%21").unwrap();
        assert_eq!((q.page, q.per_page), (2, 5));
        assert_eq!(q.category.as_deref(), Some("kitchen"));
        assert_eq!(q.text.as_deref(), Some("blue mug!"));
        for bad in [
            "page=0",
            "per_page=101",
            "page=x",
            "q=%zz",
            &format!("q={}", "a".repeat(101)),
        ] {
            assert_eq!(ListQuery::parse(bad).unwrap_err().status, 400, "{bad}");
        }
    }
}

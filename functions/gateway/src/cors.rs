//! CORS for browser clients: only configured origins, with preflight answered here.

pub const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
pub const ALLOWED_HEADERS: &str = "authorization, content-type, x-request-id, idempotency-key";

/// The origins from the `cors_origins` variable (comma-separated; `*` allows any).
pub fn origins(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect()
}

pub fn allowed(origin: &str, origins: &[String]) -> bool {
    origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// Headers for a response to `origin` (empty when the origin is not allowed).
pub fn response_headers(origin: Option<&str>, origins: &[String]) -> Vec<(&'static str, String)> {
    match origin {
        Some(origin) if allowed(origin, origins) => vec![
            ("access-control-allow-origin", origin.to_string()),
            ("vary", "origin".to_string()),
        ],
        _ => vec![],
    }
}

/// A preflight (`OPTIONS` with `Access-Control-Request-Method`): the status and headers.
pub fn preflight(origin: Option<&str>, origins: &[String]) -> (u16, Vec<(&'static str, String)>) {
    let mut headers = response_headers(origin, origins);
    if headers.is_empty() {
        return (403, headers);
    }
    headers.extend([
        ("access-control-allow-methods", ALLOWED_METHODS.to_string()),
        ("access-control-allow-headers", ALLOWED_HEADERS.to_string()),
        ("access-control-max-age", "600".to_string()),
    ]);
    (204, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_origins_get_cors_headers() {
        let origins = origins("https://shop.example, http://localhost:5173/");
        assert_eq!(preflight(Some("https://shop.example"), &origins).0, 204);
        assert_eq!(preflight(Some("http://localhost:5173"), &origins).0, 204);
        assert_eq!(preflight(Some("https://evil.example"), &origins), (403, vec![]));
        assert_eq!(preflight(None, &origins).0, 403);
        assert!(response_headers(Some("https://evil.example"), &origins).is_empty());
        assert_eq!(
            response_headers(Some("https://shop.example"), &origins)[0].1,
            "https://shop.example"
        );
        assert!(allowed("https://anything", &super::origins("*")));
        assert!(super::origins("").is_empty());
    }
}

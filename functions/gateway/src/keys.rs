//! Signing keys for token verification: the issuer's JWKS, cached in key-value for
//! five minutes so instances share one fetch, and refetched early (at most once a
//! second) when a token names a key the cache does not have: after a key rotation the
//! issuer's first tokens are accepted within a second, while tokens naming made-up
//! keys cost at most one fetch a second.

use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};

pub const TTL_MS: i64 = 5 * 60 * 1000;
pub const REFRESH_AFTER_MS: i64 = 1000;
pub const CACHE_KEY: &str = "gateway:jwks";

#[derive(Serialize, Deserialize)]
pub struct Cached {
    pub fetched_at_ms: i64,
    pub jwks: JwkSet,
}

/// Whether the cached set can be used for a token naming `kid`.
pub fn usable(cached: &Cached, kid: Option<&str>, now_ms: i64) -> bool {
    let age = now_ms - cached.fetched_at_ms;
    if age >= TTL_MS {
        return false;
    }
    match kid {
        Some(kid) if cached.jwks.find(kid).is_none() => age < REFRESH_AFTER_MS,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_keys_expire_and_unknown_kids_refresh_after_a_while() {
        let cached = Cached {
            fetched_at_ms: 0,
            jwks: serde_json::from_str(r#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}"#).unwrap(),
        };
        assert!(usable(&cached, Some("a"), 1_000));
        assert!(!usable(&cached, Some("a"), TTL_MS));
        assert!(
            usable(&cached, Some("b"), REFRESH_AFTER_MS - 1),
            "no refetch storm for unknown kids"
        );
        assert!(!usable(&cached, Some("b"), REFRESH_AFTER_MS));
        assert!(usable(&cached, None, 1_000));
    }
}

//! Access tokens (RS256 JWTs, short-lived) and refresh tokens (random, stored only as
//! their SHA-256, rotated on every use).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header, encode};
use rand::RngCore as _;
use serde::Serialize;

use crate::keys::{SigningKey, sha256_hex};

pub const ACCESS_TTL_SECS: i64 = 15 * 60;
pub const REFRESH_TTL_SECS: i64 = 30 * 24 * 3600;
/// Service tokens are not refreshable: a service asks again when one runs out.
pub const SERVICE_TTL_SECS: i64 = 5 * 60;

#[derive(Serialize)]
struct AccessClaims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    roles: &'a [String],
    /// The login session (refresh-token family) the token belongs to: the gateway
    /// refuses it once the session ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
}

pub struct Issuer<'a> {
    pub key: &'a SigningKey,
    pub issuer: &'a str,
    pub audience: &'a str,
}

impl Issuer<'_> {
    /// A customer's or admin's token, of the login session `session`.
    pub fn access_token(&self, user_id: &str, roles: &[String], now: i64, session: &str) -> String {
        self.token(user_id, roles, now, ACCESS_TTL_SECS, Some(session))
    }

    /// A token for service `client_id`: subject `service:<id>`, role `service`.
    pub fn service_token(&self, client_id: &str, now: i64) -> String {
        self.token(
            &format!("service:{client_id}"),
            &["service".into()],
            now,
            SERVICE_TTL_SECS,
            None,
        )
    }

    fn token(&self, subject: &str, roles: &[String], now: i64, ttl: i64, sid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.key.kid.clone());
        let claims = AccessClaims {
            sub: subject,
            iss: self.issuer,
            aud: self.audience,
            iat: now,
            nbf: now,
            exp: now + ttl,
            roles,
            sid,
        };
        encode(&header, &claims, &self.key.encoding).expect("RS256 signing with a valid key")
    }
}

/// A new refresh token and the hash to store for it.
pub fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = sha256_hex(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode};

    use super::*;

    #[test]
    fn access_tokens_verify_with_the_published_key() {
        let (der, key) = SigningKey::generate().unwrap();
        let reloaded = SigningKey::from_pkcs1_der(&der).unwrap();
        assert_eq!(reloaded.kid, key.kid, "the key id is stable");
        let issuer = Issuer {
            key: &key,
            issuer: "https://auth.shop",
            audience: "shop",
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let token = issuer.access_token("u-1", &["customer".into()], now, "family-1");
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["shop"]);
        validation.set_issuer(&["https://auth.shop"]);
        let data = decode::<serde_json::Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
        assert_eq!(data.claims["sub"], "u-1");
        assert_eq!(data.claims["roles"], serde_json::json!(["customer"]));
        assert_eq!(data.claims["sid"], "family-1");
        assert_eq!(data.header.kid.as_deref(), Some(key.kid.as_str()));

        let (a, hash) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(hash, sha256_hex(&a));
    }
}

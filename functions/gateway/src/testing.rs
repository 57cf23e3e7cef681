//! Test support: an RS256 issuer that signs tokens and publishes its JWKS.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;

/// A signing key and its JWKS, for tests.
pub struct TestIssuer {
    pub key: EncodingKey,
    pub jwks: JwkSet,
    pub kid: String,
}

pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

impl TestIssuer {
    pub fn new(kid: &str) -> Self {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        let public = private.to_public_key();
        let jwks: JwkSet = serde_json::from_value(json!({ "keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64url(&public.n().to_bytes_be()), "e": b64url(&public.e().to_bytes_be()),
        }]}))
        .unwrap();
        Self {
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwks,
            kid: kid.into(),
        }
    }

    pub fn token(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        encode(&header, &claims, &self.key).unwrap()
    }
}

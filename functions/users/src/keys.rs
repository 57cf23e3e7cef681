//! The RS256 signing key and the JWKS that publishes its public half. The key comes
//! from the secret variable `jwt_signing_key` (PKCS#8 PEM) or, in embedded mode, is a
//! dev key generated once and kept in the service's database.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    /// The public key as a JWK.
    pub jwk: Value,
}

impl SigningKey {
    fn from_private(private: &RsaPrivateKey) -> Result<Self, String> {
        let der = private.to_pkcs1_der().map_err(|e| e.to_string())?;
        let (n, e) = (private.n().to_bytes_be(), private.e().to_bytes_be());
        // A stable id derived from the public key, so every instance names it the same.
        let kid = hex(&Sha256::digest(&n)[..8]);
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e),
        });
        Ok(Self {
            kid,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk,
        })
    }

    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| format!("jwt_signing_key: {e}"))?;
        Self::from_private(&private)
    }

    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, String> {
        let private = RsaPrivateKey::from_pkcs1_der(der).map_err(|e| format!("stored signing key: {e}"))?;
        Self::from_private(&private)
    }

    /// A new 2048-bit key, as PKCS#1 DER (for storing) and ready to use.
    pub fn generate() -> Result<(Vec<u8>, Self), String> {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| e.to_string())?;
        let der = private.to_pkcs1_der().map_err(|e| e.to_string())?.as_bytes().to_vec();
        Ok((der, Self::from_private(&private)?))
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

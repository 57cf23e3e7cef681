//! Registration and login input, and password hashing with Argon2id.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;
use serde_json::Value;

/// An API error: status, code, message.
pub type Refusal = (u16, &'static str, String);

pub fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    (status, code, message.into())
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub name: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    pub name: Option<String>,
    pub phone: Option<String>,
}

/// Parses a JSON body strictly (unknown fields refused) into `T`.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    if body.len() > 16 * 1024 {
        return Err(refuse(413, "payload_too_large", "bodies are limited to 16384 bytes"));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| refuse(400, "invalid_json", format!("invalid JSON: {e}")))?;
    // serde would also fill a struct from an array of its fields (`[null, null]`).
    if !value.is_object() {
        return Err(refuse(400, "validation_failed", "expected a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| refuse(400, "validation_failed", e.to_string()))
}

/// Lower-cased, trimmed, and plausibly an address (one `@`, a dot in the domain).
/// Only ASCII: look-alikes (full-width letters, Cyrillic twins, zero-width marks)
/// would otherwise register as accounts distinct from the real address; a domain
/// with other letters is written in its `xn--` form.
pub fn normalize_email(email: &str) -> Result<String, Refusal> {
    let email = email.trim().to_ascii_lowercase();
    if !email.is_ascii() {
        return Err(refuse(
            400,
            "validation_failed",
            "`email` must be ASCII (an internationalized domain in its xn-- form)",
        ));
    }
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && email.matches('@').count() == 1
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(refuse(400, "validation_failed", "`email` is not a valid address"))
    }
}

/// A phone number as codes are sent to it: 6 to 20 digits, an optional leading `+`,
/// spaces dropped.
pub fn normalize_phone(phone: &str) -> Result<String, Refusal> {
    let phone: String = phone.chars().filter(|c| !c.is_whitespace()).collect();
    let digits = phone.strip_prefix('+').unwrap_or(&phone);
    if (6..=20).contains(&phone.len()) && digits.chars().all(|c| c.is_ascii_digit()) {
        Ok(phone)
    } else {
        Err(refuse(
            400,
            "validation_failed",
            "`phone` must be 6 to 20 digits with an optional leading +",
        ))
    }
}

pub fn check_password(password: &str) -> Result<(), Refusal> {
    let length = password.chars().count();
    if !(8..=128).contains(&length) {
        return Err(refuse(
            400,
            "validation_failed",
            "`password` must be 8 to 128 characters",
        ));
    }
    Ok(())
}

pub fn check_name(name: &str) -> Result<(), Refusal> {
    let length = name.trim().chars().count();
    if !(1..=100).contains(&length) || name.chars().any(char::is_control) {
        return Err(refuse(400, "validation_failed", "`name` must be 1 to 100 characters"));
    }
    Ok(())
}

/// An Argon2id hash (PHC string, with its own random salt).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// A hash no password is known to match, with the parameters real hashes have: a
/// login for an unknown address checks against it, so it takes as long as one for a
/// known address (the answer time does not tell which addresses have accounts).
pub const UNMATCHABLE_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ozCxXs5f5qJraEqDD/BMpw$qsJOO3CMea+Y49PpW6aQ2IfPKsFqwWhpuYoUMtxtNYo";

pub fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(password_matches("correct horse", &hash));
        assert!(!password_matches("wrong horse", &hash));
        assert_ne!(hash, hash_password("correct horse"), "salted");
        assert!(!password_matches("x", "not a hash"));
        assert!(UNMATCHABLE_HASH.starts_with(&hash[..hash.find("$v=19$m=19456,t=2,p=1$").unwrap() + 22]));
        assert!(!password_matches("correct horse", UNMATCHABLE_HASH));
    }

    #[test]
    fn input_is_checked() {
        assert_eq!(normalize_email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in ["", "ada", "@x.com", "a@b", "a@@b.com", "a b@c.com", "a@.com"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        // Look-alikes of ada@example.com: a zero-width space, full-width letters, a
        // Cyrillic `а`.
        for look_alike in ["ada\u{200b}@example.com", "ａｄａ@example.com", "\u{430}da@example.com"] {
            assert!(normalize_email(look_alike).is_err(), "{look_alike}");
        }
        assert!(normalize_email("ada@xn--bcher-kva.example").is_ok());
        assert_eq!(normalize_phone(" +44 1234 5678 ").unwrap(), "+4412345678");
        for bad in ["", "+", "12345", "1+23456789", "+12345678901234567890", "12345a"] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_name("").is_err() && check_name("Ada").is_ok());
        let err = parse::<Registration>(br#"{"email":"a@b.c","password":"x","name":"n","admin":true}"#).unwrap_err();
        assert_eq!((err.0, err.1), (400, "validation_failed"));
        assert!(err.2.contains("admin"), "{}", err.2);
        assert_eq!(parse::<Login>(b"{").unwrap_err().1, "invalid_json");
    }
}

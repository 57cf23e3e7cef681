//! Who is calling: RS256 bearer tokens checked against the issuer's JWKS (`iss`,
//! `aud`, `exp`, `nbf`, and the algorithm pinned to RS256, so `alg: none` or an HMAC
//! token signed with the public key is refused), and what each route requires.

use jsonwebtoken::dangerous::insecure_decode_claims;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Tokens whose signature this gateway has already verified: the latest one per
/// subject, by digest. An RS256 verification costs milliseconds in WebAssembly, and a
/// client sends the same token with every request until it expires; a token seen
/// before costs a hash instead. Its claims are still checked every time, and its key
/// must still be in the issuer's current JWKS, so rotating a key out refuses its
/// tokens at once.
pub trait TokenMemory {
    /// The digest of the last verified token of `subject`.
    fn recall(&self, subject: &str) -> Option<String>;
    fn remember(&self, subject: &str, digest: &str);
    /// Whether the login session `session` (a token's `sid`) was ended: logged out,
    /// or revoked after a refresh token was reused. `Err` when it cannot be known now.
    fn session_ended(&self, session: &str) -> Result<bool, String>;
}

/// The key-value entry the users service writes when a login session ends; it
/// holds the Unix time after which no access token of that session is valid anyway.
pub fn ended_session_key(session: &str) -> String {
    format!("ended-session:{session}")
}

/// No memory: every token is verified and no session is known to have ended
/// (tests, or without a key-value store).
pub struct NoMemo;

impl TokenMemory for NoMemo {
    fn recall(&self, _: &str) -> Option<String> {
        None
    }
    fn remember(&self, _: &str, _: &str) {}
    fn session_ended(&self, _: &str) -> Result<bool, String> {
        Ok(false)
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Customer,
    Admin,
    /// Another service (a service token) or an admin.
    Service,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub roles: Vec<String>,
}

impl Principal {
    pub fn may(&self, access: Access) -> bool {
        let has = |role: &str| self.roles.iter().any(|r| r == role);
        match access {
            Access::Public => true,
            Access::Customer => has("customer") || has("admin"),
            Access::Admin => has("admin"),
            Access::Service => has("service") || has("admin"),
        }
    }
}

/// Why a request was refused: 401 (no usable identity), 403 (not allowed) or 503
/// (the token could not be checked right now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(String),
    Forbidden(String),
    Unavailable(String),
}

/// Where tokens must come from.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub issuer: String,
    pub audience: String,
}

#[derive(Deserialize)]
struct RealmAccess {
    #[serde(default)]
    roles: Vec<String>,
}

/// `aud` is a string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// The login session (our auth service's claim): ended at logout.
    sid: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iss: Option<String>,
    aud: Option<Audience>,
    /// Our auth service's claim.
    #[serde(default)]
    roles: Vec<String>,
    /// Keycloak's.
    realm_access: Option<RealmAccess>,
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, Refusal> {
    let value = header.ok_or_else(|| Refusal::Unauthenticated("missing bearer token".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| Refusal::Unauthenticated("malformed Authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Refusal::Unauthenticated(
            "expected `Authorization: Bearer <token>`".into(),
        ));
    }
    Ok(token.trim())
}

/// The `kid` a token names (to pick or refresh keys), if its header parses.
pub fn key_id(token: &str) -> Option<String> {
    decode_header(token).ok()?.kid
}

/// Verifies `token` against `keys`, skipping the signature check for the exact token
/// `memo` remembers for its subject.
pub fn verify(token: &str, keys: &JwkSet, rules: &TokenRules, memo: &dyn TokenMemory) -> Result<Principal, Refusal> {
    let invalid = |why: String| Refusal::Unauthenticated(format!("invalid token: {why}"));
    let library = |e: jsonwebtoken::errors::Error| invalid(describe(&e).into());
    let header = decode_header(token).map_err(library)?;
    if header.alg != Algorithm::RS256 {
        return Err(invalid(format!("algorithm {:?} is not accepted", header.alg)));
    }
    let jwk = match &header.kid {
        Some(kid) => keys.find(kid),
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    }
    .ok_or_else(|| invalid("signed with an unknown key".into()))?;
    let digest = hex(&Sha256::digest(token.as_bytes()));
    let unverified: Claims = insecure_decode_claims(token).map_err(library)?;
    let claims = if memo.recall(&unverified.sub).as_deref() == Some(digest.as_str()) {
        check_claims(&unverified, rules, now_secs()).map_err(invalid)?;
        unverified
    } else {
        let key = DecodingKey::from_jwk(jwk).map_err(library)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&rules.issuer]);
        validation.set_audience(&[&rules.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = decode::<Claims>(token, &key, &validation).map_err(library)?.claims;
        memo.remember(&claims.sub, &digest);
        claims
    };
    if let Some(session) = &claims.sid {
        let ended = memo.session_ended(session).map_err(|e| {
            eprintln!("gateway: cannot check whether login {session} ended: {e}");
            Refusal::Unavailable("the token's login cannot be checked now; try again shortly".into())
        })?;
        if ended {
            return Err(Refusal::Unauthenticated(
                "token revoked: its login ended (logout, or a refresh token used twice)".into(),
            ));
        }
    }
    let mut roles = claims.roles;
    roles.extend(claims.realm_access.map(|r| r.roles).unwrap_or_default());
    Ok(Principal {
        subject: claims.sub,
        roles,
    })
}

/// What is wrong with a token, in the gateway's words: the library's own messages
/// name its internals (serde variants, base64 offsets) and are not for clients.
fn describe(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => "the signature does not match",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::InvalidIssuer => "issued by another issuer",
        ErrorKind::InvalidAudience => "meant for another audience",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "its algorithm is not accepted",
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEcdsaKey => {
            "its signing key cannot be used"
        }
        _ => "not a well-formed JWT",
    }
}

/// The claim checks `decode` makes, for a token whose signature was verified before.
fn check_claims(claims: &Claims, rules: &TokenRules, now: u64) -> Result<(), String> {
    match claims.exp {
        None => return Err("missing `exp`".into()),
        Some(exp) if exp + LEEWAY_SECS < now => return Err("expired".into()),
        Some(_) => {}
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err("not valid yet".into());
    }
    if claims.iss.as_deref() != Some(rules.issuer.as_str()) {
        return Err("issued by another issuer".into());
    }
    let audience_ok = match &claims.aud {
        Some(Audience::One(aud)) => *aud == rules.audience,
        Some(Audience::Many(auds)) => auds.contains(&rules.audience),
        None => false,
    };
    if !audience_ok {
        return Err("meant for another audience".into());
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a request needing `access`: `Ok(None)` for public routes.
pub fn authorize(
    access: Access,
    authorization: Option<&str>,
    keys: impl FnOnce(Option<String>) -> Result<JwkSet, String>,
    rules: &TokenRules,
    memo: &dyn TokenMemory,
) -> Result<Option<Principal>, Refusal> {
    if access == Access::Public {
        return Ok(None);
    }
    let token = bearer(authorization)?;
    let keys = keys(key_id(token)).map_err(|e| {
        eprintln!("gateway: cannot load signing keys: {e}");
        Refusal::Unavailable("the keys that verify tokens cannot be loaded now; try again shortly".into())
    })?;
    let principal = verify(token, &keys, rules, memo)?;
    if !principal.may(access) {
        return Err(Refusal::Forbidden(
            format!("this route needs the {access:?} role").to_lowercase(),
        ));
    }
    Ok(Some(principal))
}

#[cfg(test)]
pub mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{TestIssuer, b64url};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn rules() -> TokenRules {
        TokenRules {
            issuer: "https://auth.shop".into(),
            audience: "shop".into(),
        }
    }

    fn claims(roles: &[&str]) -> serde_json::Value {
        json!({ "sub": "u-1", "iss": "https://auth.shop", "aud": "shop", "exp": now() + 300, "nbf": now() - 1, "roles": roles })
    }

    #[test]
    fn good_tokens_pass_and_every_kind_of_bad_one_is_refused() {
        let issuer = TestIssuer::new("k1");
        let other = TestIssuer::new("k1");
        let verify_token = |t: &str| verify(t, &issuer.jwks, &rules(), &NoMemo);

        let principal = verify_token(&issuer.token(claims(&["customer"]))).unwrap();
        assert_eq!(principal.subject, "u-1");
        assert!(principal.may(Access::Customer) && !principal.may(Access::Admin));

        let mut expired = claims(&[]);
        expired["exp"] = json!(now() - 600);
        let mut future = claims(&[]);
        future["nbf"] = json!(now() + 600);
        let mut wrong_audience = claims(&[]);
        wrong_audience["aud"] = json!("other");
        let mut wrong_issuer = claims(&[]);
        wrong_issuer["iss"] = json!("https://evil");
        let unsigned = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(claims(&["admin"]).to_string().as_bytes())
        );
        let bad_algorithm = format!("{}.x.y", b64url(br#"{"alg":"XX999","typ":"JWT"}"#));
        // Each is refused in the gateway's words, never the library's (which name
        // serde variants and base64 offsets).
        for (token, why) in [
            (issuer.token(expired), "expired"),
            (issuer.token(future), "not valid yet"),
            (issuer.token(wrong_audience), "meant for another audience"),
            (issuer.token(wrong_issuer), "issued by another issuer"),
            (other.token(claims(&["admin"])), "the signature does not match"),
            (unsigned, "not a well-formed JWT"),
            (bad_algorithm, "not a well-formed JWT"),
            ("not.a.token".into(), "not a well-formed JWT"),
            ("a.b.c.d".into(), "not a well-formed JWT"),
        ] {
            match verify_token(&token) {
                Err(Refusal::Unauthenticated(message)) => {
                    assert_eq!(message, format!("invalid token: {why}"), "{token}");
                }
                other => panic!("{token} must be refused: {other:?}"),
            }
        }
    }

    #[test]
    fn routes_check_roles_and_headers() {
        let issuer = TestIssuer::new("k1");
        let keys = |_: Option<String>| Ok(issuer.jwks.clone());
        let customer = format!("Bearer {}", issuer.token(claims(&["customer"])));
        let admin = format!("Bearer {}", issuer.token(claims(&["admin"])));
        assert_eq!(authorize(Access::Public, None, keys, &rules(), &NoMemo), Ok(None));
        assert!(matches!(
            authorize(Access::Admin, None, keys, &rules(), &NoMemo),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            authorize(Access::Admin, Some("Basic abc"), keys, &rules(), &NoMemo),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            authorize(Access::Admin, Some(&customer), keys, &rules(), &NoMemo),
            Err(Refusal::Forbidden(_))
        ));
        assert!(
            authorize(Access::Admin, Some(&admin), keys, &rules(), &NoMemo)
                .unwrap()
                .is_some()
        );
        let keycloak = json!({ "sub": "kc", "iss": "https://auth.shop", "aud": "shop", "exp": now() + 60,
                                "realm_access": { "roles": ["admin"] } });
        let token = format!("Bearer {}", issuer.token(keycloak));
        assert!(
            authorize(Access::Admin, Some(&token), keys, &rules(), &NoMemo).is_ok(),
            "Keycloak realm roles count"
        );
    }

    /// Remembers in memory, counting how often a signature was really checked.
    #[derive(Default)]
    struct CountingMemo {
        digests: std::cell::RefCell<std::collections::HashMap<String, String>>,
        verified: std::cell::Cell<u32>,
        ended: std::cell::RefCell<Vec<String>>,
    }

    impl TokenMemory for CountingMemo {
        fn recall(&self, subject: &str) -> Option<String> {
            self.digests.borrow().get(subject).cloned()
        }
        fn remember(&self, subject: &str, digest: &str) {
            self.verified.set(self.verified.get() + 1);
            self.digests.borrow_mut().insert(subject.into(), digest.into());
        }
        fn session_ended(&self, session: &str) -> Result<bool, String> {
            Ok(self.ended.borrow().iter().any(|s| s == session))
        }
    }

    #[test]
    fn a_token_of_an_ended_login_is_refused_even_when_remembered() {
        let issuer = TestIssuer::new("k1");
        let memo = CountingMemo::default();
        let of_session = |sid: &str| {
            let mut c = claims(&["customer"]);
            c["sid"] = json!(sid);
            issuer.token(c)
        };
        let (ended, other) = (of_session("s-1"), of_session("s-2"));
        assert!(verify(&ended, &issuer.jwks, &rules(), &memo).is_ok());
        memo.ended.borrow_mut().push("s-1".into());
        let refused = verify(&ended, &issuer.jwks, &rules(), &memo);
        assert!(
            matches!(&refused, Err(Refusal::Unauthenticated(why)) if why.contains("revoked")),
            "{refused:?}"
        );
        assert!(
            verify(&other, &issuer.jwks, &rules(), &memo).is_ok(),
            "another login of the user"
        );
        let without_session = issuer.token(claims(&["customer"]));
        assert!(verify(&without_session, &issuer.jwks, &rules(), &memo).is_ok());

        // When the store cannot say, the token is not let through: 503, not a pass.
        struct StoreDown;
        impl TokenMemory for StoreDown {
            fn recall(&self, _: &str) -> Option<String> {
                None
            }
            fn remember(&self, _: &str, _: &str) {}
            fn session_ended(&self, _: &str) -> Result<bool, String> {
                Err("connection refused".into())
            }
        }
        assert!(matches!(
            verify(&other, &issuer.jwks, &rules(), &StoreDown),
            Err(Refusal::Unavailable(_))
        ));
    }

    #[test]
    fn a_remembered_token_skips_only_the_signature_check() {
        let issuer = TestIssuer::new("k1");
        let memo = CountingMemo::default();
        let token = issuer.token(claims(&["customer"]));
        for _ in 0..3 {
            assert_eq!(verify(&token, &issuer.jwks, &rules(), &memo).unwrap().subject, "u-1");
        }
        assert_eq!(memo.verified.get(), 1, "verified once, then recognised");

        // A forged token for the same subject is a different digest: verified, refused.
        let forger = TestIssuer::new("k1");
        let forged = forger.token(claims(&["admin"]));
        assert!(verify(&forged, &issuer.jwks, &rules(), &memo).is_err());

        // Claims are still checked for a remembered token: expiry and audience...
        let mut short = claims(&["customer"]);
        short["exp"] = json!(now() + 1);
        let short = issuer.token(short);
        verify(&short, &issuer.jwks, &rules(), &memo).unwrap();
        let later = now() + LEEWAY_SECS + 5;
        let unverified: Claims = insecure_decode_claims(&short).unwrap();
        assert_eq!(check_claims(&unverified, &rules(), later), Err("expired".into()));
        let other_audience = TokenRules {
            issuer: "https://auth.shop".into(),
            audience: "elsewhere".into(),
        };
        assert!(verify(&short, &issuer.jwks, &other_audience, &memo).is_err());
        // ...and a key rotated out of the JWKS refuses its remembered tokens.
        let rotated = TestIssuer::new("k2");
        assert!(verify(&short, &rotated.jwks, &rules(), &memo).is_err());
    }
}

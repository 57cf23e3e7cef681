//! One-time-password login: a 6-digit code, stored only as a hash with a 5-minute
//! expiry, at most 5 wrong attempts, and a resend pause. The code itself leaves the
//! service only to the notifications service, which sends it. Each verification
//! replaces the stored state with a compare-and-swap, so parallel guesses are each
//! counted and a code works once.

use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::keys::sha256_hex;

pub const TTL_MS: i64 = 5 * 60 * 1000;
pub const MAX_ATTEMPTS: u32 = 5;
pub const RESEND_AFTER_MS: i64 = 30 * 1000;

/// What key-value holds per destination (`otp:<destination>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub code_hash: String,
    pub expires_ms: i64,
    pub sent_ms: i64,
    pub attempts: u32,
    /// Logged in with: it works no more.
    #[serde(default)]
    pub used: bool,
}

/// Why a verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No code, or it expired: request a new one.
    Expired,
    /// Too many wrong attempts: request a new one.
    Locked,
    Wrong {
        attempts_left: u32,
    },
}

fn hash(destination: &str, code: &str) -> String {
    sha256_hex(&format!("{destination}:{code}"))
}

pub fn new_code() -> String {
    format!("{:06}", rand::thread_rng().gen_range(0..1_000_000))
}

/// A fresh pending code, or how many seconds until one may be sent again.
pub fn issue(previous: Option<&Pending>, destination: &str, code: &str, now_ms: i64) -> Result<Pending, u64> {
    if let Some(previous) = previous
        && now_ms - previous.sent_ms < RESEND_AFTER_MS
    {
        return Err(((RESEND_AFTER_MS - (now_ms - previous.sent_ms)) as u64).div_ceil(1000));
    }
    Ok(Pending {
        code_hash: hash(destination, code),
        expires_ms: now_ms + TTL_MS,
        sent_ms: now_ms,
        attempts: 0,
        used: false,
    })
}

/// Checks `code` against `pending`: the state to store in its place, on success (the
/// code used) or on a wrong code (the attempt counted); `None` when nothing changes.
pub fn verify(
    pending: Option<Pending>,
    destination: &str,
    code: &str,
    now_ms: i64,
) -> Result<Pending, (Rejection, Option<Pending>)> {
    let Some(mut pending) = pending.filter(|p| p.expires_ms > now_ms && !p.used) else {
        return Err((Rejection::Expired, None));
    };
    if pending.attempts >= MAX_ATTEMPTS {
        return Err((Rejection::Locked, None));
    }
    if crate::secrets::same_secret(hash(destination, code).as_bytes(), pending.code_hash.as_bytes()) {
        pending.used = true;
        return Ok(pending);
    }
    pending.attempts += 1;
    let attempts_left = MAX_ATTEMPTS - pending.attempts;
    let rejection = if attempts_left == 0 {
        Rejection::Locked
    } else {
        Rejection::Wrong { attempts_left }
    };
    Err((rejection, Some(pending)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_expire_lock_after_five_misses_and_resend_is_throttled() {
        let code = new_code();
        assert_eq!(code.len(), 6);
        let pending = issue(None, "a@b.c", &code, 0).unwrap();
        assert_eq!(
            issue(Some(&pending), "a@b.c", "123456", 10_000),
            Err(20),
            "resend waits"
        );
        assert!(issue(Some(&pending), "a@b.c", "123456", RESEND_AFTER_MS).is_ok());

        let used = verify(Some(pending.clone()), "a@b.c", &code, 1_000).unwrap();
        assert!(used.used);
        assert_eq!(
            verify(Some(used), "a@b.c", &code, 1_000).unwrap_err().0,
            Rejection::Expired,
            "a code works once"
        );
        assert_eq!(
            verify(Some(pending.clone()), "a@b.c", &code, TTL_MS).unwrap_err().0,
            Rejection::Expired
        );
        assert_eq!(verify(None, "a@b.c", &code, 0).unwrap_err().0, Rejection::Expired);
        assert!(
            verify(Some(pending.clone()), "x@b.c", &code, 1_000).is_err(),
            "bound to its destination"
        );

        let wrong = if code == "000000" { "000001" } else { "000000" };
        let mut state = Some(pending);
        for left in (1..MAX_ATTEMPTS).rev() {
            let (rejection, next) = verify(state, "a@b.c", wrong, 1_000).unwrap_err();
            assert_eq!(rejection, Rejection::Wrong { attempts_left: left });
            state = next;
        }
        let (rejection, next) = verify(state, "a@b.c", wrong, 1_000).unwrap_err();
        assert_eq!(rejection, Rejection::Locked, "the fifth miss locks");
        let (rejection, _) = verify(next, "a@b.c", &code, 1_000).unwrap_err();
        assert_eq!(
            rejection,
            Rejection::Locked,
            "even the right code is refused once locked"
        );
    }
}

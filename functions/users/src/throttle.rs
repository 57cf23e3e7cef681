//! Password-login throttling. Each attempt is counted before the password is checked
//! (a compare-and-swap on the counter, so parallel guesses each take a turn), and a
//! success clears the caller's own counter. Past a few free failures the next attempt
//! waits, twice as long each time, up to 15 minutes; failures older than an hour are
//! forgotten.
//!
//! Three counters: per account *and* client address (an attacker slows only their own
//! guesses at that account: the owner logging in from elsewhere is not held up), per
//! client address across accounts (one address trying many accounts), and per account
//! across addresses with a larger allowance (many addresses guessing one account; past
//! it the owner too waits for password logins, and signs in with a mailed code).

use serde::{Deserialize, Serialize};

/// Failures before the first pause, per account and client.
pub const FREE_PER_ACCOUNT: u32 = 5;
/// Failures before the first pause, per client across accounts.
pub const FREE_PER_CLIENT: u32 = 20;
pub const MAX_PAUSE_SECS: u64 = 15 * 60;
/// A failure older than this no longer counts.
pub const FORGET_AFTER_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    pub count: u32,
    pub last_ms: i64,
}

/// Counts one more attempt on `previous` (which allows `free` failures), or how many
/// seconds the caller must wait first.
pub fn attempt(previous: Option<&Failures>, free: u32, now_ms: i64) -> Result<Failures, u64> {
    let count = match previous {
        Some(f) if now_ms - f.last_ms < FORGET_AFTER_MS => f.count,
        _ => 0,
    };
    if count >= free {
        let pause_secs = 1u64.checked_shl(count - free).unwrap_or(u64::MAX).min(MAX_PAUSE_SECS);
        let ready_ms = previous.map_or(0, |f| f.last_ms) + (pause_secs * 1000) as i64;
        if ready_ms > now_ms {
            return Err(((ready_ms - now_ms) as u64).div_ceil(1000));
        }
    }
    Ok(Failures {
        count: count + 1,
        last_ms: now_ms,
    })
}

/// The counter key of an account tried from a client.
pub fn account_key(email: &str, client: &str) -> String {
    format!("login-failures:{email}:{client}")
}

/// Codes sent to a customer's new phone per day (SMS cost money: a stream of phone
/// changes must not turn into a stream of messages).
pub const PHONE_CODES_PER_DAY: u32 = 5;
pub const DAY_MS: i64 = 24 * 3600 * 1000;

/// The counter key of codes sent to prove `user_id`'s phone.
pub fn phone_codes_key(user_id: &str) -> String {
    format!("phone-codes:{user_id}")
}

/// One more use of a budget of `max` per `window_ms` (for a budget, `last_ms` is when
/// its window began), or how many seconds until the window ends.
pub fn spend(previous: Option<&Failures>, max: u32, window_ms: i64, now_ms: i64) -> Result<Failures, u64> {
    match previous {
        Some(window) if now_ms - window.last_ms < window_ms => {
            if window.count >= max {
                return Err(((window.last_ms + window_ms - now_ms) as u64).div_ceil(1000));
            }
            Ok(Failures {
                count: window.count + 1,
                last_ms: window.last_ms,
            })
        }
        _ => Ok(Failures {
            count: 1,
            last_ms: now_ms,
        }),
    }
}

/// Wrong one-time codes per destination, across codes, before the first pause.
pub const FREE_CODE_GUESSES: u32 = 10;

/// The counter key of wrong codes for a destination (an address or a phone).
pub fn code_guesses_key(destination: &str) -> String {
    format!("code-failures:{destination}")
}

/// Wrong passwords for one account from every address together before the first
/// pause (each address also has its own, smaller allowance).
pub const FREE_PER_ACCOUNT_EVERYWHERE: u32 = 20;

/// The counter key of an account's failures from every address.
pub fn account_everywhere_key(email: &str) -> String {
    format!("login-failures:account:{email}")
}

/// The counter key of a client across accounts.
pub fn client_key(client: &str) -> String {
    format!("login-failures:client:{client}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_its_maximum_per_window() {
        let mut window = None;
        for _ in 0..PHONE_CODES_PER_DAY {
            window = Some(spend(window.as_ref(), PHONE_CODES_PER_DAY, DAY_MS, 1_000).unwrap());
        }
        assert_eq!(
            spend(window.as_ref(), PHONE_CODES_PER_DAY, DAY_MS, 1_000),
            Err((DAY_MS / 1000) as u64),
            "the sixth waits for the day to end"
        );
        let next_day = spend(window.as_ref(), PHONE_CODES_PER_DAY, DAY_MS, 1_000 + DAY_MS).unwrap();
        assert_eq!(next_day.count, 1);
    }

    #[test]
    fn free_failures_then_doubling_pauses_up_to_a_cap_then_forgotten() {
        let mut state: Option<Failures> = None;
        for i in 0..FREE_PER_ACCOUNT {
            state = Some(attempt(state.as_ref(), FREE_PER_ACCOUNT, i as i64).unwrap());
        }
        let now = FREE_PER_ACCOUNT as i64;
        assert_eq!(
            attempt(state.as_ref(), FREE_PER_ACCOUNT, now),
            Err(1),
            "the sixth waits 1 s"
        );
        state = Some(attempt(state.as_ref(), FREE_PER_ACCOUNT, now + 1_000).unwrap());
        assert_eq!(
            attempt(state.as_ref(), FREE_PER_ACCOUNT, now + 1_000),
            Err(2),
            "then 2 s"
        );
        let many = Failures { count: 60, last_ms: 0 };
        assert_eq!(attempt(Some(&many), FREE_PER_ACCOUNT, 0), Err(MAX_PAUSE_SECS), "capped");
        assert!(
            attempt(Some(&many), FREE_PER_ACCOUNT, MAX_PAUSE_SECS as i64 * 1000).is_ok(),
            "never locked for good"
        );
        assert_eq!(
            attempt(Some(&many), FREE_PER_ACCOUNT, FORGET_AFTER_MS).unwrap().count,
            1,
            "an hour later it starts over"
        );
    }
}

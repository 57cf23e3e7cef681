//! Rate limiting: a token bucket per client address and per user, kept in key-value so
//! every instance shares it (updated with compare-and-swap, so concurrent requests do
//! not both spend the last token).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Most requests in a burst.
    pub capacity: f64,
    /// Tokens added per second.
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub tokens: f64,
    pub updated_ms: i64,
}

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    Allowed(Bucket),
    /// Denied; retry after this many whole seconds.
    Limited {
        retry_after_secs: u64,
        bucket: Bucket,
    },
}

/// Refills `bucket` up to `now_ms` and takes one token if there is one.
pub fn take(bucket: Option<Bucket>, rate: Rate, now_ms: i64) -> Take {
    let bucket = bucket.unwrap_or(Bucket {
        tokens: rate.capacity,
        updated_ms: now_ms,
    });
    let elapsed = (now_ms - bucket.updated_ms).max(0) as f64 / 1000.0;
    let tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.capacity);
    if tokens >= 1.0 {
        Take::Allowed(Bucket {
            tokens: tokens - 1.0,
            updated_ms: now_ms,
        })
    } else {
        let wait = (1.0 - tokens) / rate.per_second;
        Take::Limited {
            retry_after_secs: wait.ceil().max(1.0) as u64,
            bucket: Bucket {
                tokens,
                updated_ms: now_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        capacity: 3.0,
        per_second: 0.5,
    };

    #[test]
    fn a_burst_is_allowed_then_limited_until_tokens_refill() {
        let mut bucket = None;
        for _ in 0..3 {
            match take(bucket, RATE, 0) {
                Take::Allowed(b) => bucket = Some(b),
                other => panic!("{other:?}"),
            }
        }
        let Take::Limited { retry_after_secs, .. } = take(bucket, RATE, 0) else {
            panic!("limited")
        };
        assert_eq!(retry_after_secs, 2, "one token every 2 s");
        assert!(matches!(
            take(bucket, RATE, 1_000),
            Take::Limited {
                retry_after_secs: 1,
                ..
            }
        ));
        assert!(matches!(take(bucket, RATE, 2_000), Take::Allowed(_)));
        let Take::Allowed(full) = take(bucket, RATE, 3_600_000) else {
            panic!()
        };
        assert_eq!(full.tokens, RATE.capacity - 1.0, "refill stops at capacity");
    }
}

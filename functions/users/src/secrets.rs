//! Comparing secrets (passwords from configuration, client secrets, OTP digests)
//! without the time taken telling how much of them matched.

use sha2::{Digest, Sha256};

/// Whether `offered` is `expected`. Both are hashed to fixed-length digests first, so
/// neither their lengths nor a matching prefix shows in the time taken.
pub fn same_secret(offered: &[u8], expected: &[u8]) -> bool {
    let offered: [u8; 32] = Sha256::digest(offered).into();
    let expected: [u8; 32] = Sha256::digest(expected).into();
    same_digest(&offered, &expected)
}

/// Whether two digests are equal, looking at every byte whatever the first difference.
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"change-me-now", b"change-me-now"));
        assert!(!same_secret(b"change-me-now", b"change-me-nox"));
        assert!(
            !same_secret(b"change-me", b"change-me-now"),
            "a prefix is not the secret"
        );
        assert!(!same_secret(b"", b"x"));
        assert!(same_secret(b"", b""));
    }
}

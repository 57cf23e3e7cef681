//! Record ids as the services issue them (UUIDs) and accept in paths and bodies.

/// Whether `id` can name a record: 1–64 ASCII letters, digits or dashes. Anything else
/// (`?`, `#`, `/`, spaces, control characters…) is refused before it can reach a URL
/// another service is called with.
pub fn is_record_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_plain() {
        assert!(is_record_id("6f1c2a9e-8d2b-4c3a-9f1e-2b7d5c4a1e00"));
        assert!(is_record_id("BENCH-1"));
        for bad in [
            "",
            "?q=mug",
            "p1?x=1",
            "p1#a",
            "a b",
            "<script>",
            "a/b",
            "a\u{7}",
            "ü",
            &"a".repeat(65),
        ] {
            assert!(!is_record_id(bad), "{bad:?}");
        }
    }
}

//! Kafka's default partitioner for keyed records, so a key lands on the same partition
//! in the embedded log as it would on a Kafka cluster with the same partition count.

/// Kafka's `Utils.murmur2`: MurmurHash2 (32-bit) with Kafka's fixed seed, little-endian
/// blocks, returned as Java's signed `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java takes the length as an `int`; keys never approach 4 GiB, so truncation is moot.
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // The tail mixes in the last 1-3 bytes exactly like the Java switch fall-through.
    let tail = blocks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's Java producer picks for `key`: `toPositive(murmur2(key)) % n`.
/// `partitions` must be positive.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // The first six are the cases of Kafka's own `UtilsTest.testMurmur2`.
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
            // Empty key: no blocks, no tail, only the final mix of `seed ^ 0`.
            (b"", 275646681),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_is_positive_hash_modulo_count() {
        // -973932308 & 0x7fffffff = 1173551340; 1173551340 % 3 = 0, % 7 = 3.
        assert_eq!(partition_for_key(b"21", 3), 0);
        assert_eq!(partition_for_key(b"21", 7), 1173551340 % 7);
        for key in [&b"order-1"[..], b"order-2", b"", b"\xff\xfe\x00"] {
            for n in 1..=12 {
                let p = partition_for_key(key, n);
                assert!((0..n).contains(&p), "{p} out of range for {n} partitions");
            }
        }
    }
}

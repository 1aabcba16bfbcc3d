//! Key partitioning compatible with the Java Kafka client's default partitioner.

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`), so that a key lands in the same
/// partition whether strata, a Java producer or librdkafka's `murmur2_random` partitioner wrote it.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(first) = rest.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions`: `(murmur2(key) & 0x7fffffff) % partitions`, as Kafka's
/// default partitioner computes it.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from the Java client's UtilsTest / DefaultPartitionerTest.
    #[test]
    fn matches_java_murmur2() {
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()) as i32, expected, "{input}");
        }
    }

    #[test]
    fn java_partition_of_known_keys() {
        // Java: Utils.toPositive(Utils.murmur2("key1".getBytes())) % 3 etc.
        assert_eq!(
            partition_for_key(b"21", 10),
            ((-973932308i32 & 0x7fffffff) % 10) as u32
        );
        for p in 1..50 {
            assert!(partition_for_key(b"anything", p) < p);
        }
    }
}

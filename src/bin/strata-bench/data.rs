//! The deterministic data set: orders-like events, each a function of its index.

/// splitmix64: a tiny, well-distributed generator; event `i` draws from the stream seeded by `i`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Distinct customers (the event key).
pub const CUSTOMERS: u64 = 100_000;
/// Start of the month the events span: 2024-05-01T00:00:00Z.
pub const START_MS: i64 = 1_714_521_600_000;
/// The month, in milliseconds.
pub const SPAN_MS: i64 = 30 * 86_400_000;

const COUNTRIES: [&str; 50] = [
    "NL", "DE", "FR", "GB", "US", "ES", "IT", "BE", "SE", "NO", "DK", "FI", "PL", "CZ", "AT", "CH",
    "PT", "IE", "GR", "HU", "RO", "BG", "HR", "SI", "SK", "LT", "LV", "EE", "LU", "MT", "CY", "IS",
    "CA", "MX", "BR", "AR", "CL", "CO", "PE", "JP", "KR", "CN", "IN", "SG", "AU", "NZ", "ZA", "EG",
    "TR", "IL",
];
const STATUSES: [&str; 5] = ["paid", "pending", "shipped", "refunded", "cancelled"];
const CHANNELS: [&str; 4] = ["web", "ios", "android", "store"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];

/// Appends event `i` of `n` as one NDJSON line (~300 bytes, ~200 of them `data`).
pub fn write_event(i: u64, n: u64, out: &mut String) {
    use std::fmt::Write;
    let mut rng = Rng(i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
    let customer = rng.next() % CUSTOMERS;
    // Skewed countries: a few large markets, a long tail.
    let c = rng.next() % 1000;
    let country = COUNTRIES[if c < 500 {
        (c % 5) as usize
    } else {
        (c % 50) as usize
    }];
    let cents = rng.next() % 100_000;
    let status = STATUSES[(rng.next() % 5) as usize];
    let channel = CHANNELS[(rng.next() % 4) as usize];
    let currency = CURRENCIES[(rng.next() % 3) as usize];
    let items = 1 + rng.next() % 9;
    let sku = rng.next() % 100_000_000;
    let jitter = (rng.next() % 1000) as i64;
    let time = START_MS + (i as i128 * SPAN_MS as i128 / n.max(1) as i128) as i64 + jitter;
    let _ = writeln!(
        out,
        "{{\"key\":\"c{customer:06}\",\"id\":\"o{i:010}\",\"type\":\"order\",\"time\":{time},\"data\":{{\"customer\":\"c{customer:06}\",\"country\":\"{country}\",\"amount\":{}.{:02},\"status\":\"{status}\",\"channel\":\"{channel}\",\"currency\":\"{currency}\",\"items\":{items},\"sku\":\"SKU-{sku:08}\",\"gift\":{},\"note\":\"deliver between 9 and 17, leave at the door\"}}}}",
        cents / 100,
        cents % 100,
        sku.is_multiple_of(7),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_are_deterministic_and_about_300_bytes() {
        let (mut a, mut b) = (String::new(), String::new());
        super::write_event(42, 1000, &mut a);
        super::write_event(42, 1000, &mut b);
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert!(
            v["data"].to_string().len() > 180 && v["data"].to_string().len() < 240,
            "{a}"
        );
    }
}

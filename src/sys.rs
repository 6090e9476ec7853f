//! The process's only readers of the wall clock and of the OS random source.
//! Everything else takes time and random ids as arguments, so it stays deterministic in tests.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Fills `buf` from the OS's cryptographic random source.
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf).map_err(|e| std::io::Error::other(e.to_string()))
}

/// A new 17-character `[A-Za-z0-9]` id from the cryptographic random source (Apify's id shape).
pub fn new_id() -> std::io::Result<String> {
    // Rejection sampling keeps every character uniform: 248 = 4 * 62.
    let mut out = String::with_capacity(crate::model::ID_LEN);
    let mut buf = [0u8; 32];
    while out.len() < crate::model::ID_LEN {
        random_bytes(&mut buf)?;
        for &b in &buf {
            if b < 248 && out.len() < crate::model::ID_LEN {
                out.push(crate::model::ID_ALPHABET[usize::from(b % 62)] as char);
            }
        }
    }
    Ok(out)
}

/// Characters of a time-ordered id, in ASCII order, so that string order is numeric order.
const SORTED_ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of a time-ordered id that hold the time: 62^8 ms is about 6,900 years.
const TIME_CHARS: usize = 8;

/// A new 17-character `[A-Za-z0-9]` id that begins with `ms` (8 characters, base 62, in ASCII
/// order) and ends with 9 random characters (53 bits). Ids made later sort later, so tables
/// keyed by them grow at one end. (Apify's ids are 17 random characters; the shape is the same.)
pub fn new_time_id(ms: u64) -> std::io::Result<String> {
    let mut out = time_id_prefix(ms).into_bytes();
    let mut buf = [0u8; 24];
    while out.len() < crate::model::ID_LEN {
        random_bytes(&mut buf)?;
        for &b in &buf {
            // Rejection sampling keeps every character uniform: 248 = 4 * 62.
            if b < 248 && out.len() < crate::model::ID_LEN {
                out.push(SORTED_ALPHABET[usize::from(b % 62)]);
            }
        }
    }
    String::from_utf8(out).map_err(|e| std::io::Error::other(e.to_string()))
}

/// The 8 characters every id made at `ms` begins with: ids made at `ms` or later sort at or
/// after it.
pub fn time_id_prefix(ms: u64) -> String {
    let mut out = [b'0'; TIME_CHARS];
    let mut rest = ms;
    for slot in out.iter_mut().rev() {
        *slot = SORTED_ALPHABET[(rest % 62) as usize];
        rest /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// A uniform number in [0, 1) from the random source (retry jitter); 0 if it fails.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if random_bytes(&mut b).is_err() {
        return 0.0;
    }
    // 53 random bits make every representable step in [0, 1) equally likely.
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ids_sort_by_time_and_have_the_apify_shape() {
        let times = [0u64, 1, 61, 62, 1_700_000_000_000, 1_800_000_000_000, 1_800_000_000_001];
        let ids: Vec<String> = times.iter().map(|&t| new_time_id(t).unwrap()).collect();
        for id in &ids {
            assert_eq!(id.len(), crate::model::ID_LEN);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        assert_ne!(new_time_id(5).unwrap(), new_time_id(5).unwrap());
    }
}

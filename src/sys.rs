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

/// A uniform number in [0, 1) from the random source (retry jitter); 0 if it fails.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if random_bytes(&mut b).is_err() {
        return 0.0;
    }
    // 53 random bits make every representable step in [0, 1) equally likely.
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

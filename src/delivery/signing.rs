//! Standard Webhooks signatures: `webhook-signature` is `v1,` + base64 of HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the bytes of the webhook's `whsec_`
//! secret; while a rotated-out key still signs, the header carries both signatures,
//! space-separated. Pure: the time comes in as an argument.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::model::SigningKeys;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a generated key.
pub const KEY_BYTES: usize = 32;
/// Bytes a given key may have (the Standard Webhooks range).
pub const KEY_BYTES_MIN: usize = 24;
pub const KEY_BYTES_MAX: usize = 64;

/// The text form of a key: `whsec_` + base64.
pub fn secret_text(key: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The key bytes of a `whsec_` secret, or what is wrong with it.
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let encoded = text
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("must start with \"{SECRET_PREFIX}\""))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| format!("must be \"{SECRET_PREFIX}\" followed by standard base64"))?;
    if !(KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&key.len()) {
        return Err(format!(
            "must encode {KEY_BYTES_MIN} to {KEY_BYTES_MAX} bytes, not {}",
            key.len()
        ));
    }
    Ok(key)
}

/// The `webhook-signature` value for one call: one `v1,` signature per key that signs at
/// `now_ms`, the current key first.
pub fn signature_header(
    keys: &SigningKeys,
    now_ms: u64,
    message_id: &str,
    timestamp_s: u64,
    body: &[u8],
) -> String {
    let mut header = String::new();
    for key in keys.signing_at(now_ms) {
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let mut ctx = ring::hmac::Context::with_key(&hmac_key);
        ctx.update(message_id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp_s.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        header.push_str(&STANDARD.encode(ctx.sign().as_ref()));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_like_the_reference_libraries() {
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let keys = SigningKeys { current: key, previous: None };
        let body = br#"{"test": 2432232314}"#;
        let got = signature_header(&keys, 0, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotated_key_signs_beside_the_new_one_until_its_time() {
        let keys = SigningKeys { current: vec![1; 32], previous: Some((vec![2; 32], 1000)) };
        assert_eq!(signature_header(&keys, 999, "m", 1, b"x").split(' ').count(), 2);
        assert_eq!(signature_header(&keys, 1000, "m", 1, b"x").split(' ').count(), 1);
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_named() {
        let key = vec![7u8; KEY_BYTES];
        assert_eq!(parse_secret(&secret_text(&key)), Ok(key));
        assert!(parse_secret("abc").unwrap_err().contains("whsec_"));
        assert!(parse_secret("whsec_!!").unwrap_err().contains("base64"));
        assert!(parse_secret(&secret_text(&[1; 8])).unwrap_err().contains("24 to 64"));
    }
}

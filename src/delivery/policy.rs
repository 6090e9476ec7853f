//! Pure retry policy: after a call, is the dispatch done, or when is the next call due?
//! Time and randomness are arguments, so the policy is deterministic under test.

pub use crate::model::Decision;

/// `Retry-After` is honoured up to this long.
pub const RETRY_AFTER_MS_MAX: u64 = 24 * 3600 * 1000;
/// Jitter adds up to this fraction of a delay.
pub const JITTER_FRACTION: f64 = 0.1;

/// What happened to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Any failure; `retry_after_ms` from a 429/503 `Retry-After`, if it asked for one.
    Failed {
        retry_after_ms: Option<u64>,
    },
}

/// The decision after call number `calls_made` (1 for the first call) ended at `now_ms`.
/// `jitter_unit` is uniform in [0, 1).
pub fn decide(
    outcome: Outcome,
    calls_made: usize,
    do_not_retry: bool,
    retry_delays_ms: &[u64],
    now_ms: u64,
    jitter_unit: f64,
) -> Decision {
    let retry_after_ms = match outcome {
        Outcome::Delivered => return Decision::Succeeded,
        Outcome::Failed { retry_after_ms } => retry_after_ms,
    };
    if do_not_retry {
        return Decision::Failed;
    }
    // Delay i is the wait before retry i + 1; after calls_made calls, the next retry is
    // number calls_made.
    let Some(&base) = retry_delays_ms.get(calls_made.saturating_sub(1)) else {
        return Decision::Failed;
    };
    let jitter = (base as f64 * JITTER_FRACTION * jitter_unit.clamp(0.0, 1.0)) as u64;
    let mut delay = base.saturating_add(jitter);
    if let Some(asked) = retry_after_ms {
        delay = delay.max(asked.min(RETRY_AFTER_MS_MAX));
    }
    Decision::RetryAt(now_ms.saturating_add(delay))
}

/// Parses `Retry-After`: delta seconds, or an HTTP date relative to `now_ms`.
pub fn parse_retry_after(value: &str, now_ms: u64) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(u64::try_from(at_ms).ok()?.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DELAYS: [u64; 3] = [1000, 2000, 4000];
    const FAIL: Outcome = Outcome::Failed { retry_after_ms: None };

    #[test]
    fn table() {
        let cases: &[(Outcome, usize, bool, f64, Decision)] = &[
            (Outcome::Delivered, 1, false, 0.0, Decision::Succeeded),
            (Outcome::Delivered, 4, true, 0.0, Decision::Succeeded),
            (FAIL, 1, false, 0.0, Decision::RetryAt(11_000)),
            (FAIL, 2, false, 0.0, Decision::RetryAt(12_000)),
            (FAIL, 3, false, 0.0, Decision::RetryAt(14_000)),
            (FAIL, 4, false, 0.0, Decision::Failed),
            (FAIL, 1, true, 0.0, Decision::Failed),
            (FAIL, 1, false, 0.999_999, Decision::RetryAt(11_099)),
            (
                Outcome::Failed { retry_after_ms: Some(500) },
                1,
                false,
                0.0,
                Decision::RetryAt(11_000),
            ),
            (
                Outcome::Failed { retry_after_ms: Some(30_000) },
                1,
                false,
                0.0,
                Decision::RetryAt(40_000),
            ),
            (
                Outcome::Failed { retry_after_ms: Some(u64::MAX) },
                1,
                false,
                0.0,
                Decision::RetryAt(10_000 + RETRY_AFTER_MS_MAX),
            ),
            (Outcome::Failed { retry_after_ms: Some(30_000) }, 4, false, 0.0, Decision::Failed),
        ];
        for &(outcome, calls, dnr, jitter, want) in cases {
            assert_eq!(
                decide(outcome, calls, dnr, &DELAYS, 10_000, jitter),
                want,
                "{outcome:?} {calls} {dnr}"
            );
        }
        assert_eq!(decide(FAIL, 1, false, &[], 0, 0.0), Decision::Failed);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120", 0), Some(120_000));
        assert_eq!(parse_retry_after(" 0 ", 0), Some(0));
        let now = 1_795_353_255_000; // 2026-11-22T13:14:15Z
        assert_eq!(parse_retry_after("Sun, 22 Nov 2026 13:15:15 GMT", now), Some(60_000));
        assert_eq!(parse_retry_after("Sun, 22 Nov 2026 13:00:00 GMT", now), Some(0));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    proptest! {
        #[test]
        fn due_times_never_go_backwards_and_attempts_are_bounded(
            delays in prop::collection::vec(0u64..10_000_000, 0..15),
            now in 0u64..u64::MAX / 4,
            jitter in 0.0f64..1.0,
            retry_after in prop::option::of(any::<u64>()),
        ) {
            let mut calls = 1;
            let mut t = now;
            loop {
                match decide(Outcome::Failed { retry_after_ms: retry_after }, calls, false, &delays, t, jitter) {
                    Decision::RetryAt(at) => {
                        prop_assert!(at >= t);
                        let base = delays[calls - 1];
                        prop_assert!(at - t >= base);
                        prop_assert!(at - t <= (base + base / 10 + 1).max(retry_after.unwrap_or(0).min(RETRY_AFTER_MS_MAX)));
                        t = at;
                        calls += 1;
                    }
                    Decision::Failed => break,
                    Decision::Succeeded => prop_assert!(false),
                }
            }
            prop_assert_eq!(calls, delays.len() + 1);
        }
    }
}

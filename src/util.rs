//! Small pieces the client, the worker and the command share: randomness for ids and
//! jitter, reconnect back-off, and the text of a caught panic.

#[cfg(any(feature = "client", feature = "worker"))]
use std::time::Duration;

#[cfg(any(feature = "client", feature = "worker"))]
/// A random u64 from the process's hash keys, the clock and a counter (for
/// unique ids, jitter and file names; not for secrets).
pub(crate) fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

/// Exponential reconnect back-off with jitter: after the n-th failure in a
/// row the wait is between half and all of `min * 2^(n-1)`, capped at
/// `max`; a success starts again from `min`.
#[cfg(any(feature = "client", feature = "worker"))]
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

#[cfg(any(feature = "client", feature = "worker"))]
impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, failures: 0 }
    }

    /// Failures in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts one more failure and returns how long to wait before the
    /// next try.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = self.min.saturating_mul(1u32 << (self.failures - 1).min(16));
        let full = exp.min(self.max.max(self.min));
        full.mul_f64(0.5 + (random_u64() % 1000) as f64 / 2000.0)
    }

    /// A success: the next failure waits about `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The message of a caught panic or a panic hook's payload
/// (`panic!("...")` with a literal or a formatted string), else
/// `unknown panic`.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "client", feature = "worker"))]
    #[test]
    fn backoff_doubles_within_jitter_caps_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(350));
        let mut b = Backoff::new(min, max);
        for full in [100, 200, 350, 350] {
            let w = b.fail();
            let full = Duration::from_millis(full);
            assert!(w >= full / 2 && w <= full, "{w:?} not in [{:?}, {full:?}]", full / 2);
        }
        assert_eq!(b.failures(), 4);
        b.reset();
        assert!(b.fail() <= min);
    }

    #[cfg(any(feature = "client", feature = "worker"))]
    #[test]
    fn random_u64_differs_between_calls() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn panic_messages() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
        let p = std::panic::catch_unwind(|| panic!("lit")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "lit");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "unknown panic");
    }
}

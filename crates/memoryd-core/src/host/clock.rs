//! The wall clock the domain's `now` comes from. A test may shift it
//! (`MEMORYD_TEST_CLOCK_OFFSET_MS`, honoured only in the test sandbox) to
//! show that a host whose clock is off changes no stored time, lease or
//! threshold of a shared store (spec 80).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The test offset in milliseconds (may be negative), read once; 0 in use.
pub fn offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        if !crate::sandbox_armed() {
            return 0;
        }
        std::env::var("MEMORYD_TEST_CLOCK_OFFSET_MS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    })
}

/// Now, as this host's clock says (shifted by the test offset).
pub fn now() -> SystemTime {
    shifted(SystemTime::now(), offset_ms())
}

fn shifted(t: SystemTime, offset_ms: i64) -> SystemTime {
    let by = Duration::from_millis(offset_ms.unsigned_abs());
    if offset_ms >= 0 { t + by } else { t.checked_sub(by).unwrap_or(t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_both_ways() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(shifted(t, 300_000), t + Duration::from_secs(300));
        assert_eq!(shifted(t, -1500), t - Duration::from_millis(1500));
        assert_eq!(shifted(t, 0), t);
    }
}

//! What identifies one version of a file without reading it: device,
//! inode, size, mtime and ctime, and git's racy-mtime rule for trusting it.
//!
//! A file whose stamp is the one seen when it was last read (or written)
//! is taken as unchanged, unless it changed within the timestamp
//! granularity of that read: a write in the same clock tick as the read
//! leaves the stamp as it was (git's "racily clean" index entries), so
//! such a file is read again until its stamp is older than the read.

use std::os::unix::fs::MetadataExt;
use std::time::{SystemTime, UNIX_EPOCH};

/// How far a file time may lag the clock the reader sees: Linux stamps
/// files from a coarse clock (one jiffy, at most 10 ms at HZ=100); the
/// margin covers it several times over.
pub const RACY_WINDOW_NS: i64 = 50_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    /// The stamp of what `stat(2)` said.
    pub fn of_stat(st: &nix::sys::stat::FileStat) -> Stamp {
        // The field widths differ between targets; none of these overflow.
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        Stamp {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            len: st.st_size as u64,
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
        }
    }
}

/// A stamp and when the reader started the read that saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub stamp: Stamp,
    pub read_ns: i64,
}

impl Seen {
    /// `stamp`, as seen by a read that started at `read_at`.
    pub fn new(stamp: Stamp, read_at: SystemTime) -> Seen {
        Seen { stamp, read_ns: nanos(read_at) }
    }

    /// Whether a file now stamped `now` is the version read: the same
    /// stamp, and no change close enough to the read to hide another.
    pub fn unchanged(&self, now: &Stamp) -> bool {
        self.stamp == *now && self.stamp.mtime_ns.max(self.stamp.ctime_ns) < self.read_ns - RACY_WINDOW_NS
    }
}

/// Nanoseconds since the epoch (0 before it).
pub fn nanos(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stamp(mtime_ns: i64, ctime_ns: i64) -> Stamp {
        Stamp { dev: 1, ino: 2, len: 3, mtime_ns, ctime_ns }
    }

    #[test]
    fn a_change_within_the_timestamp_granularity_of_the_read_is_never_trusted() {
        let read_at = UNIX_EPOCH + Duration::from_secs(1_000);
        let read = nanos(read_at);
        // Written a second before the read: the stamp tells.
        let old = Seen::new(stamp(read - 1_000_000_000, read - 1_000_000_000), read_at);
        assert!(old.unchanged(&old.stamp));
        assert!(!old.unchanged(&Stamp { ctime_ns: read + 5, ..old.stamp }), "ctime moved");
        assert!(!old.unchanged(&Stamp { ino: 9, ..old.stamp }), "replaced by a rename");
        assert!(!old.unchanged(&Stamp { dev: 9, ..old.stamp }));
        assert!(!old.unchanged(&Stamp { len: 9, ..old.stamp }));
        // Written in the read's clock tick: a second write in that tick
        // keeps every field of the stamp, so it is read again.
        let racy = Seen::new(stamp(read - 1_000_000, read - 1_000_000), read_at);
        assert!(!racy.unchanged(&racy.stamp), "racily clean is not clean");
        // The ctime alone within the tick (mtime set back) is racy too.
        let touched = Seen::new(stamp(read - 1_000_000_000, read), read_at);
        assert!(!touched.unchanged(&touched.stamp));
    }
}

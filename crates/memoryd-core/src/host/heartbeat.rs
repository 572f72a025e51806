//! The heartbeat file: `"<RFC 3339 UTC> <hostname> watch=on|off\n"`.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// One heartbeat as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub at: SystemTime,
    pub host: String,
    pub watch_on: bool,
}

impl Heartbeat {
    pub fn render(at: SystemTime, host: &str, watch_on: bool) -> String {
        format!("{} {host} watch={}\n", humantime::format_rfc3339_seconds(at), if watch_on { "on" } else { "off" })
    }

    pub fn parse(text: &str) -> Option<Heartbeat> {
        let mut parts = text.split_whitespace();
        let at = humantime::parse_rfc3339(parts.next()?).ok()?;
        let host = parts.next()?.to_owned();
        let watch_on = match parts.next()? {
            "watch=on" => true,
            "watch=off" => false,
            _ => return None,
        };
        Some(Heartbeat { at, host, watch_on })
    }

    /// Reads the heartbeat file; None when it is missing or unreadable.
    pub fn read(path: &Path) -> Option<Heartbeat> {
        Heartbeat::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Age at `now` (zero for a heartbeat from the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.at).unwrap_or_default()
    }
}

/// This host's name, for the heartbeat line.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let at = humantime::parse_rfc3339("2026-11-23T10:00:00Z").unwrap();
        let line = Heartbeat::render(at, "box", false);
        assert_eq!(line, "2026-11-23T10:00:00Z box watch=off\n");
        let hb = Heartbeat::parse(&line).unwrap();
        assert_eq!(hb, Heartbeat { at, host: "box".into(), watch_on: false });
        assert_eq!(hb.age(at + Duration::from_secs(5)), Duration::from_secs(5));
        assert!(Heartbeat::parse("").is_none());
        assert!(Heartbeat::parse("2026-11-23T10:00:00Z box watch=maybe").is_none());
    }
}

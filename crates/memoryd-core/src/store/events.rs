//! Reading the event log `S/events.jsonl` (written by [`crate::store`]):
//! the recent events, and following new ones across rotations.

use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether an event concerns `node` (all events when None).
pub fn matches(event: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|n| event["nodeId"].as_str() == Some(n))
}

/// The last `limit` events of the current log, oldest first.
pub fn recent(path: &Path, node: Option<&str>, limit: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut events: Vec<Value> =
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|e| matches(e, node)).collect();
    let skip = events.len().saturating_sub(limit);
    events.drain(..skip);
    events
}

/// Follows the log from its current end, like `tail -F`: a rotation (a new
/// file at the path) is read from its start.
pub struct Follower {
    path: PathBuf,
    inode: Option<u64>,
    offset: u64,
    partial: String,
}

impl Follower {
    pub fn from_end(path: &Path) -> Follower {
        let meta = std::fs::metadata(path).ok();
        Follower {
            path: path.to_path_buf(),
            inode: meta.as_ref().map(|m| m.ino()),
            offset: meta.map_or(0, |m| m.len()),
            partial: String::new(),
        }
    }

    /// The events appended since the last call.
    pub fn poll(&mut self) -> Vec<Value> {
        let Ok(meta) = std::fs::metadata(&self.path) else { return Vec::new() };
        if Some(meta.ino()) != self.inode || meta.len() < self.offset {
            (self.inode, self.offset) = (Some(meta.ino()), 0);
            self.partial.clear();
        }
        if meta.len() == self.offset {
            return Vec::new();
        }
        let mut text = String::new();
        let read = std::fs::File::open(&self.path)
            .and_then(|mut f| f.seek(SeekFrom::Start(self.offset)).and_then(|_| f.read_to_string(&mut text)));
        let Ok(n) = read else { return Vec::new() };
        self.offset += n as u64;
        self.partial.push_str(&text);
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..complete).collect();
        lines.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_appends_and_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        std::fs::write(&log, "{\"nodeId\":\"claude-a\",\"n\":1}\n").unwrap();
        let mut f = Follower::from_end(&log);
        assert!(f.poll().is_empty());
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(b"{\"nodeId\":\"claude-b\",\"n\":2}\n{\"n\":").unwrap();
        assert_eq!(f.poll().len(), 1, "a partial line waits");
        file.write_all(b"3}\n").unwrap();
        assert_eq!(f.poll()[0]["n"], 3);
        std::fs::rename(&log, dir.path().join("events.jsonl.1")).unwrap();
        std::fs::write(&log, "{\"n\":4}\n").unwrap();
        assert_eq!(f.poll()[0]["n"], 4);
        assert_eq!(recent(&dir.path().join("events.jsonl.1"), Some("claude-b"), 10).len(), 1);
    }
}

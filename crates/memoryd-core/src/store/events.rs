//! Reading the file store's event log `S/events.jsonl`: the recent events
//! and a cursor after them from one read, and what came after a cursor,
//! across rotations.

use super::{Cursor, StoreError};
use crate::host::files::rotated_name;
use crate::presence::Event;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The complete lines of `path` from `offset`, read from one open file, and
/// that file's inode: a line still being written waits for the next read.
fn read_from(path: &Path, offset: u64) -> Result<Option<(u64, String)>, StoreError> {
    let failed = |e: std::io::Error| StoreError::Corrupt { path: path.to_path_buf(), error: e.to_string() };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let meta = file.metadata().map_err(failed)?;
    // A log cut shorter than the offset was replaced in place: read it all.
    let offset = if meta.len() < offset { 0 } else { offset };
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_to_end(&mut bytes)).map_err(failed)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(complete);
    Ok(Some((meta.ino(), String::from_utf8_lossy(&bytes).into_owned())))
}

fn parse(text: &str, node: Option<&str>) -> impl Iterator<Item = Event> {
    text.lines().filter_map(|l| serde_json::from_str::<Event>(l).ok()).filter(move |e| e.concerns(node))
}

/// The last `limit` events of the current log, oldest first, and the
/// cursor after the last complete line read.
pub(super) fn recent(path: &Path, node: Option<&str>, limit: usize) -> Result<(Vec<Event>, Cursor), StoreError> {
    let Some((log, text)) = read_from(path, 0)? else { return Ok((Vec::new(), Cursor::default())) };
    let cursor = Cursor { log, at: text.len() as u64 };
    let mut events: Vec<Event> = parse(&text, node).collect();
    let skip = events.len().saturating_sub(limit);
    events.drain(..skip);
    Ok((events, cursor))
}

/// The events after `cursor`, like `tail -F`: a log rotated away since is
/// read to its end first, then the new one from its start.
pub(super) fn follow(path: &Path, cursor: &mut Cursor, node: Option<&str>) -> Result<Vec<Event>, StoreError> {
    let Some((log, text)) = read_from(path, cursor.at)? else { return Ok(Vec::new()) };
    if log == cursor.log {
        cursor.at += text.len() as u64;
        return Ok(parse(&text, node).collect());
    }
    let mut events = Vec::new();
    let old = rotated_name(path, 1);
    if cursor.log != 0
        && std::fs::metadata(&old).is_ok_and(|m| m.ino() == cursor.log)
        && let Some((_, rest)) = read_from(&old, cursor.at)?
    {
        events.extend(parse(&rest, node));
    }
    let Some((log, text)) = read_from(path, 0)? else { return Ok(events) };
    *cursor = Cursor { log, at: text.len() as u64 };
    events.extend(parse(&text, node));
    Ok(events)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use std::io::Write;

    fn line(node: &str, n: u32) -> String {
        format!(
            "{{\"ts\":\"2027-01-15T08:00:0{n}.000Z\",\"event\":\"runtime_node.unrevoked\",\"nodeId\":\"{node}\",\
             \"by\":\"operator\",\"previousState\":\"revoked\",\"newState\":\"offline\"}}\n"
        )
    }

    fn seconds(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.ts.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 10).collect()
    }

    #[test]
    fn follows_appends_partial_lines_and_rotations_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        std::fs::write(&log, line("claude-a", 1)).unwrap();
        let (first, mut cursor) = recent(&log, None, 10).unwrap();
        assert_eq!(seconds(&first), [1]);
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        let two = line("claude-b", 2);
        file.write_all(two.as_bytes()).unwrap();
        file.write_all(&line("claude-a", 3).as_bytes()[..20]).unwrap();
        assert_eq!(seconds(&follow(&log, &mut cursor, None).unwrap()), [2], "a partial line waits");
        file.write_all(&line("claude-a", 3).as_bytes()[20..]).unwrap();
        file.write_all(line("claude-a", 4).as_bytes()).unwrap();
        assert_eq!(seconds(&follow(&log, &mut cursor, Some("claude-a")).unwrap()), [3, 4], "filtered by node");
        // Written just before the rotation, then the log rotates: the rest
        // of the old log comes first, then the new one.
        file.write_all(line("claude-a", 5).as_bytes()).unwrap();
        std::fs::rename(&log, rotated_name(&log, 1)).unwrap();
        std::fs::write(&log, line("claude-a", 6)).unwrap();
        assert_eq!(seconds(&follow(&log, &mut cursor, None).unwrap()), [5, 6]);
        assert!(follow(&log, &mut cursor, None).unwrap().is_empty());
        assert_eq!(seconds(&recent(&rotated_name(&log, 1), Some("claude-b"), 10).unwrap().0), [2]);
        let (none, at) = recent(&dir.path().join("absent.jsonl"), None, 10).unwrap();
        assert!(none.is_empty() && at == Cursor::default());
    }
}

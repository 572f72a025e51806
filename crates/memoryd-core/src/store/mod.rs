//! The embedded store `S/store/` (spec 00, 40, 50): presence, links and
//! inboxes, safe across processes and crashes.
//!
//! Every change of lasting state is one call that takes the store lock,
//! re-reads what it changes, writes the new document through a tmp file and
//! a rename, and appends its events, before the lock is released: a check
//! and its write are never two calls, so the daemon and an offline
//! `memoryctl` can never overwrite each other's change. A document that
//! does not parse is reported, never replaced.

pub mod events;

use crate::host::files::{FileError, FileGuard};
use crate::host::lock::{LockError, StoreGuard, StoreLock};
use crate::host::paths::Paths;
use crate::presence::{Event, Presence, Refusal};
use memoryd_proto::status::SweepStatus;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rotate the event log past this size, keeping this many old ones.
const EVENTS_MAX: u64 = 10 << 20;
const EVENTS_KEPT: usize = 3;
/// How long a store call waits for the lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// The presence document, relative to `S/store/`.
const PRESENCE: &str = "presence.json";
/// The daemon's last whole-fleet sweep, relative to `S/store/`: kept on
/// disk so that `status` can show it while no daemon runs.
const LAST_SWEEP: &str = "last-sweep.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", .0.message)]
    Refused(Refusal),
    #[error("{path} does not load: {error}; it is kept as it is (fix or move it away)")]
    Corrupt { path: PathBuf, error: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    File(#[from] FileError),
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> StoreError {
        StoreError::Refused(r)
    }
}

/// The store of one root.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    events: PathBuf,
    files: FileGuard,
    lock: StoreLock,
    /// The last presence document parsed, with what identifies the file
    /// it came from: heartbeats, rosters and status read it far more often
    /// than it changes, and at a thousand sessions parsing it dominates
    /// their cost.
    presence_cache: Mutex<Option<Cached>>,
    /// Presence writes by this process so far: an entry read before one of
    /// them is never served after it, whatever the file's stamp says.
    presence_writes: AtomicU64,
}

#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    writes: u64,
    doc: Arc<Presence>,
}

/// One version of a store document as the file system shows it. Documents
/// are only ever replaced by a rename, so a new version is a new inode;
/// an inode number reused within one timestamp tick with the same length
/// is told apart only for this process's own writes (by the count above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

impl Store {
    /// Opens the store, creating `S/store/` (0700) if missing.
    pub fn open(paths: &Paths, files: &FileGuard) -> Result<Store, StoreError> {
        files.create_dir_all(&paths.store, 0o700)?;
        let lock = StoreLock::open(files, &paths.store.join("store.lock"))?;
        Ok(Store {
            dir: paths.store.clone(),
            events: paths.events.clone(),
            files: files.clone(),
            lock,
            presence_cache: Mutex::new(None),
            presence_writes: AtomicU64::new(0),
        })
    }

    /// Takes the store lock.
    pub fn hold(&self, what: &str) -> Result<StoreGuard<'_>, StoreError> {
        Ok(self.lock.acquire(what, LOCK_WAIT, &|| false)?)
    }

    /// A consistent snapshot of one document (files are only ever replaced
    /// by rename); `file` is relative to `S/store/`.
    pub fn read<D: DeserializeOwned + Default>(&self, file: &str) -> Result<D, StoreError> {
        read_doc(&self.dir.join(file))
    }

    /// A snapshot of the presence document, parsed again only when the
    /// file changed since the last call.
    pub fn presence(&self) -> Result<Arc<Presence>, StoreError> {
        let path = self.dir.join(PRESENCE);
        let corrupt = |e: std::io::Error| StoreError::Corrupt { path: path.clone(), error: e.to_string() };
        let writes = self.presence_writes.load(Ordering::Acquire);
        // The stamp and the bytes come from one open file, so they always
        // describe the same version.
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(corrupt(e)),
        };
        let stamp = Stamp::of(&file.metadata().map_err(corrupt)?);
        if let Ok(cache) = self.presence_cache.lock()
            && let Some(cached) = cache.as_ref()
            && cached.stamp == stamp
            && cached.writes == writes
        {
            return Ok(cached.doc.clone());
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(corrupt)?;
        let doc: Arc<Presence> =
            Arc::new(serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path, error: e.to_string() })?);
        if let Ok(mut cache) = self.presence_cache.lock() {
            *cache = Some(Cached { stamp, writes, doc: doc.clone() });
        }
        Ok(doc)
    }

    /// Re-reads one document under the held lock, applies `change`, writes
    /// it if it changed and appends the events.
    pub fn update<D, T>(
        &self,
        held: &StoreGuard<'_>,
        file: &str,
        change: impl FnOnce(&mut D) -> Result<(T, Vec<Event>), Refusal>,
    ) -> Result<T, StoreError>
    where
        D: Serialize + DeserializeOwned + Default + Clone + PartialEq,
    {
        let path = self.dir.join(file);
        let mut doc: D = read_doc(&path)?;
        let before = doc.clone();
        let (value, events) = change(&mut doc)?;
        if doc != before {
            if let Some(dir) = path.parent() {
                self.files.create_dir_all(dir, 0o700)?;
            }
            write_doc(&self.files, &path, &doc)?;
            if file == PRESENCE {
                self.presence_writes.fetch_add(1, Ordering::Release);
            }
        }
        self.append_events(held, &events)?;
        Ok(value)
    }

    /// One locked read-modify-write of one document.
    pub fn change<D, T>(
        &self,
        what: &str,
        file: &str,
        change: impl FnOnce(&mut D) -> Result<(T, Vec<Event>), Refusal>,
    ) -> Result<T, StoreError>
    where
        D: Serialize + DeserializeOwned + Default + Clone + PartialEq,
    {
        let held = self.hold(what)?;
        self.update(&held, file, change)
    }

    /// One locked read-modify-write of the presence document.
    pub fn change_presence<T>(
        &self,
        what: &str,
        change: impl FnOnce(&mut Presence) -> Result<(T, Vec<Event>), Refusal>,
    ) -> Result<T, StoreError> {
        self.change(what, PRESENCE, change)
    }

    /// Records a whole-fleet sweep as the last one.
    pub fn record_sweep(&self, sweep: &SweepStatus) -> Result<(), StoreError> {
        self.change("sweep-record", LAST_SWEEP, |last: &mut Option<SweepStatus>| {
            *last = Some(sweep.clone());
            Ok(((), Vec::new()))
        })
    }

    /// Appends events to `S/events.jsonl`, rotating it past 10 MiB.
    pub fn append_events(&self, _held: &StoreGuard<'_>, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if std::fs::metadata(&self.events).is_ok_and(|m| m.len() > EVENTS_MAX) {
            for n in (1..EVENTS_KEPT).rev() {
                let from = rotated(&self.events, n);
                if from.exists() {
                    self.files.rename(&from, &rotated(&self.events, n + 1))?;
                }
            }
            self.files.rename(&self.events, &rotated(&self.events, 1))?;
        }
        let mut text = String::new();
        for e in events {
            text.push_str(&e.to_string());
            text.push('\n');
        }
        let mut log = self.files.open_append(&self.events)?;
        log.write_all(text.as_bytes()).map_err(FileError::io("append to", &self.events))?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> &FileGuard {
        &self.files
    }
}

/// `events.jsonl.<n>`.
pub fn rotated(log: &Path, n: usize) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{n}"));
    log.with_file_name(name)
}

/// The presence document as stored, read without opening the store (which
/// would create its directory): for a reader that finds no daemon.
pub fn stored_presence(paths: &Paths) -> Result<Presence, StoreError> {
    read_doc(&paths.store.join(PRESENCE))
}

/// The last whole-fleet sweep a daemon recorded, if any (see
/// [`stored_presence`]).
pub fn stored_last_sweep(paths: &Paths) -> Result<Option<SweepStatus>, StoreError> {
    read_doc(&paths.store.join(LAST_SWEEP))
}

/// A store document; a missing file is the empty document.
pub fn read_doc<T: DeserializeOwned + Default>(path: &Path) -> Result<T, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), error: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(StoreError::Corrupt { path: path.to_path_buf(), error: e.to_string() }),
    }
}

/// Writes a store document through a tmp file and a rename, both synced:
/// a change acknowledged to a caller survives a crash.
pub fn write_doc<T: Serialize>(files: &FileGuard, path: &Path, doc: &T) -> Result<(), FileError> {
    let mut bytes = serde_json::to_vec_pretty(doc).unwrap_or_default();
    bytes.push(b'\n');
    files.write_durable(path, &bytes, Some(0o600))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use crate::presence::Presence;
    use serde_json::json;

    #[test]
    fn the_cached_presence_follows_a_change_made_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        let (reader, writer) =
            (Store::open(&paths, &FileGuard::live()).unwrap(), Store::open(&paths, &FileGuard::live()).unwrap());
        assert!(reader.presence().unwrap().revoked.is_empty(), "no file yet");
        let now = std::time::SystemTime::now();
        for node in ["claude-a", "claude-b"] {
            writer.change_presence("t", |p: &mut Presence| Ok(((), p.revoke(node, "operator", None, now)?))).unwrap();
            let seen = reader.presence().unwrap();
            assert!(seen.revoked.contains_key(node), "{node} revoked by the other store is seen");
            assert!(Arc::ptr_eq(&seen, &reader.presence().unwrap()), "an unchanged file is not parsed again");
        }
        std::fs::write(paths.store.join(PRESENCE), "{not json").unwrap();
        assert!(
            matches!(reader.presence(), Err(StoreError::Corrupt { .. })),
            "a broken file is reported, not cached over"
        );
    }

    #[test]
    fn a_reader_without_a_daemon_sees_the_stored_documents_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("r"));
        assert_eq!(stored_presence(&paths).unwrap(), Presence::default(), "nothing stored yet");
        assert_eq!(stored_last_sweep(&paths).unwrap(), None);
        assert!(!paths.store.exists(), "reading created the store");
        let store = Store::open(&paths, &FileGuard::live()).unwrap();
        let sweep = SweepStatus { at: "2026-12-01T10:00:00Z".into(), ok: 3, failed: 1 };
        store.record_sweep(&sweep).unwrap();
        let now = std::time::SystemTime::now();
        store.change_presence("t", |p: &mut Presence| Ok(((), p.revoke("claude-a", "operator", None, now)?))).unwrap();
        assert_eq!(stored_last_sweep(&paths).unwrap(), Some(sweep));
        assert!(stored_presence(&paths).unwrap().revoked.contains_key("claude-a"));
        std::fs::write(paths.store.join(PRESENCE), "{torn").unwrap();
        assert!(matches!(stored_presence(&paths), Err(StoreError::Corrupt { .. })), "unreadable is not empty");
    }

    #[test]
    fn changes_are_written_with_their_events_and_the_log_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        let store = Store::open(&paths, &FileGuard::live()).unwrap();
        let now = std::time::SystemTime::now();
        store.change_presence("t", |p: &mut Presence| Ok(((), p.revoke("claude-a", "operator", None, now)?))).unwrap();
        assert!(store.presence().unwrap().revoked.contains_key("claude-a"));
        let log = std::fs::read_to_string(&paths.events).unwrap();
        assert_eq!(log.lines().count(), 1);
        // A refused change writes nothing.
        let refused =
            store.change_presence("t", |p: &mut Presence| Ok(((), p.revoke("bad node", "operator", None, now)?)));
        assert!(matches!(refused, Err(StoreError::Refused(_))));
        // Past 10 MiB the log rotates, keeping three.
        std::fs::write(&paths.events, vec![b'x'; (EVENTS_MAX + 1) as usize]).unwrap();
        for n in 0..4 {
            std::fs::write(&paths.events, vec![b'x'; (EVENTS_MAX + 1) as usize]).unwrap();
            let held = store.lock.acquire("t", LOCK_WAIT, &|| false).unwrap();
            store.append_events(&held, &[json!({"n": n})]).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&paths.events).unwrap().trim(), r#"{"n":3}"#);
        for n in 1..=EVENTS_KEPT {
            assert!(rotated(&paths.events, n).exists(), "{n}");
        }
        assert!(!rotated(&paths.events, EVENTS_KEPT + 1).exists());
        // A document that does not parse is reported, never replaced.
        std::fs::write(store.dir().join(PRESENCE), "{torn").unwrap();
        let e = store.change_presence("t", |_: &mut Presence| Ok(((), Vec::new()))).unwrap_err();
        assert!(e.to_string().contains("kept as it is"), "{e}");
        assert_eq!(std::fs::read_to_string(store.dir().join(PRESENCE)).unwrap(), "{torn");
    }
}

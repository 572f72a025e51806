//! The embedded store (spec 00, 40, 50): `S/store/` holds `presence.json`,
//! `links.json`, `inbox/<peer>.json` and `last-sweep.json`; events go to
//! `S/events.jsonl`.
//!
//! Every change takes the store lock (`S/store/store.lock`, flock with a
//! deadline), re-reads the document it changes, runs the domain function,
//! writes the document through a tmp file and a rename, both synced, when it
//! changed, and appends its events, before the lock is released: safe across
//! processes and crashes. A document that does not parse is reported, never
//! replaced.

use super::events;
use super::{Cursor, EventLog, PeerStore, PresenceStore, StateStore, StoreError};
use crate::config::ClientVersion;
use crate::fleet::FleetMap;
use crate::host::files::{FileError, FileGuard};
use crate::host::lock::{StoreGuard, StoreLock};
use crate::host::paths::Paths;
use crate::host::stamp::{Seen, Stamp};
use crate::peers::{self, Draft, Inbox, Limits, Links, Message, OutboxRow};
use crate::presence::{
    AttachParams, Attached, Event, Health, Presence, Probe, Refusal, Revoker, RosterRow, Rules, SoftBeats,
};
use memoryd_proto::peers::{Acknowledged, ReplyParams, Sent};
use memoryd_proto::presence::CapabilityUpdated;
use memoryd_proto::status::SweepStatus;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Rotate the event log past this size, keeping this many old ones.
const EVENTS_MAX: u64 = 10 << 20;
const EVENTS_KEPT: usize = 3;
/// How long a store call waits for the lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// The documents, relative to `S/store/`.
const PRESENCE: &str = "presence.json";
const LINKS: &str = "links.json";
const INBOXES: &str = "inbox";
/// The daemon's last whole-fleet sweep: kept on disk so that `status` can
/// show it while no daemon runs.
const LAST_SWEEP: &str = "last-sweep.json";

fn inbox_file(personality: &str) -> String {
    format!("{INBOXES}/{personality}.json")
}

/// The store of one root, in files.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    events: PathBuf,
    /// None when opened to read only.
    writer: Option<Writer>,
    /// The last presence document parsed, with what identifies the file
    /// it came from: heartbeats, rosters and status read it far more often
    /// than it changes, and at a thousand sessions parsing it dominates
    /// their cost.
    presence_cache: Mutex<Option<Cached>>,
    /// Presence writes by this process so far: an entry read before one of
    /// them is never served after it, whatever the file's stamp says.
    presence_writes: AtomicU64,
    /// Heartbeats that changed nothing but the time, by (node, session),
    /// written by the next sweep (spec 40 soft state).
    kept: Mutex<SoftBeats>,
    /// `status` asks for the waiting counts at every call; they are read
    /// again only when an inbox changed.
    waiting: Mutex<Option<Waiting>>,
    /// Inbox writes by this process so far (as `presence_writes`).
    inbox_writes: AtomicU64,
}

#[derive(Debug)]
struct Writer {
    files: FileGuard,
    lock: StoreLock,
}

/// Documents are only ever replaced by a rename, so a new version is a new
/// inode (a [`Stamp`]); an inode number reused within one timestamp tick
/// with the same length is told apart only for this process's own writes
/// (by the write counts).
#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    writes: u64,
    /// When the file was last seen to have `stamp`.
    checked: Instant,
    doc: Arc<Presence>,
    /// The document's active rows by node, for the beats kept in memory.
    rows: Arc<HashMap<String, usize>>,
}

/// The messages waiting per peer, as counted under one stamp of the inbox
/// directory: every inbox write is a rename into it, which moves its stamp.
#[derive(Debug)]
struct Waiting {
    seen: Seen,
    writes: u64,
    counts: BTreeMap<String, usize>,
}

impl FileStore {
    /// Opens the store, creating `S/store/` (0700) if missing.
    pub fn open(paths: &Paths, files: &FileGuard) -> Result<FileStore, StoreError> {
        files.create_dir_all(&paths.store, 0o700)?;
        let lock = StoreLock::open(files, &paths.store.join("store.lock"))?;
        Ok(FileStore::new(paths, Some(Writer { files: files.clone(), lock })))
    }

    /// The store as a reader that finds no daemon sees it: nothing is
    /// created (not even `S/store/`), and every change is refused.
    pub fn read_only(paths: &Paths) -> FileStore {
        FileStore::new(paths, None)
    }

    fn new(paths: &Paths, writer: Option<Writer>) -> FileStore {
        FileStore {
            dir: paths.store.clone(),
            events: paths.events.clone(),
            writer,
            presence_cache: Mutex::new(None),
            presence_writes: AtomicU64::new(0),
            kept: Mutex::default(),
            waiting: Mutex::new(None),
            inbox_writes: AtomicU64::new(0),
        }
    }

    /// Takes the store lock, with the file guard that writes under it.
    fn hold(&self, what: &'static str) -> Result<(StoreGuard<'_>, &FileGuard), StoreError> {
        let writer = self.writer.as_ref().ok_or_else(|| StoreError::ReadOnly { path: self.dir.clone(), what })?;
        Ok((writer.lock.acquire(what, LOCK_WAIT, &|| false)?, &writer.files))
    }

    /// A consistent snapshot of one document (files are only ever replaced
    /// by rename); `file` is relative to `S/store/`.
    fn read<D: DeserializeOwned + Default>(&self, file: &str) -> Result<D, StoreError> {
        read_doc(&self.dir.join(file))
    }

    /// Under the held lock: re-reads one document, applies `change`, writes
    /// it if it changed and appends the events.
    fn apply<D, T>(
        &self,
        held: &(StoreGuard<'_>, &FileGuard),
        file: &str,
        change: impl FnOnce(&mut D) -> Result<(T, Vec<Event>), Refusal>,
    ) -> Result<(T, Vec<Event>), StoreError>
    where
        D: Serialize + DeserializeOwned + Default + Clone + PartialEq,
    {
        let files = held.1;
        let path = self.dir.join(file);
        let mut doc: D = read_doc(&path)?;
        let before = doc.clone();
        let (value, events) = change(&mut doc)?;
        if doc != before {
            if let Some(dir) = path.parent() {
                files.create_dir_all(dir, 0o700)?;
            }
            write_doc(files, &path, &doc)?;
            if file == PRESENCE {
                self.presence_writes.fetch_add(1, Ordering::Release);
            } else if file.starts_with(INBOXES) {
                self.inbox_writes.fetch_add(1, Ordering::Release);
            }
        }
        self.append_events(files, &events)?;
        Ok((value, events))
    }

    /// One locked change of one document.
    fn change<D, T>(
        &self,
        what: &'static str,
        file: &str,
        change: impl FnOnce(&mut D) -> Result<(T, Vec<Event>), Refusal>,
    ) -> Result<(T, Vec<Event>), StoreError>
    where
        D: Serialize + DeserializeOwned + Default + Clone + PartialEq,
    {
        let held = self.hold(what)?;
        self.apply(&held, file, change)
    }

    /// One locked change of the presence document.
    fn change_presence<T>(
        &self,
        what: &'static str,
        change: impl FnOnce(&mut Presence) -> Result<(T, Vec<Event>), Refusal>,
    ) -> Result<(T, Vec<Event>), StoreError> {
        self.change(what, PRESENCE, change)
    }

    /// Appends events to `S/events.jsonl`, rotating it past 10 MiB; called
    /// with the store lock held.
    fn append_events(&self, files: &FileGuard, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        files.rotate_log(&self.events, EVENTS_MAX, EVENTS_KEPT)?;
        let mut text = String::new();
        for e in events {
            // An event is plain data: it always serializes.
            text.push_str(&serde_json::to_string(e).unwrap_or_default());
            text.push('\n');
        }
        let mut log = files.open_append(&self.events)?;
        log.write_all(text.as_bytes()).map_err(FileError::io("append to", &self.events))?;
        Ok(())
    }

    /// The kept heartbeats; a panic elsewhere leaves them usable.
    fn kept(&self) -> MutexGuard<'_, SoftBeats> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `peer.send` under the held lock: the checks against stored state,
    /// every recipient's inbox, then the sender's history. A crash between
    /// these writes loses no acknowledged send (none was acknowledged yet).
    fn send_held(
        &self,
        held: &(StoreGuard<'_>, &FileGuard),
        fleet: &FleetMap,
        message: Message,
        limits: &Limits,
        now: SystemTime,
    ) -> Result<Sent, StoreError> {
        if message.operator {
            for to in &message.to {
                peers::check_known(Some(fleet), to, false)?;
            }
        } else {
            let links: Links = self.read(LINKS)?;
            for to in &message.to {
                peers::check_visible(&links, fleet, &message.from, to)?;
            }
            self.read::<Inbox>(&inbox_file(&message.from))?.check_rate(&message.from, limits, now)?;
        }
        let mut recipients = Vec::new();
        for to in &message.to {
            let (queued, _) = self
                .apply(held, &inbox_file(to), |inbox: &mut Inbox| Ok(inbox.queue(to, message.clone(), limits, now)))?;
            recipients.push(queued);
        }
        if !message.operator {
            self.apply(held, &inbox_file(&message.from), |inbox: &mut Inbox| {
                inbox.record_sent(&message, limits, now);
                Ok(((), Vec::new()))
            })?;
        }
        Ok(peers::sent(&message, recipients))
    }

    /// Every stored mailbox, by peer (for `memoryctl store import`).
    pub fn mailboxes(&self) -> Result<Vec<(String, Inbox)>, StoreError> {
        self.inboxes()?.into_iter().map(|(peer, path)| Ok((peer, read_doc(&path)?))).collect()
    }

    /// The inbox files: (peer, path).
    fn inboxes(&self) -> Result<Vec<(String, PathBuf)>, StoreError> {
        let dir = self.dir.join(INBOXES);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Corrupt { path: dir, error: e.to_string() }),
        };
        let mut inboxes = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| StoreError::Corrupt { path: dir.clone(), error: e.to_string() })?.path();
            if let Some(peer) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) {
                inboxes.push((peer.to_owned(), path.clone()));
            }
        }
        inboxes.sort();
        Ok(inboxes)
    }
}

impl PresenceStore for FileStore {
    fn attach(
        &self,
        req: &AttachParams,
        known: bool,
        rules: &Rules,
        now: SystemTime,
        probe: Probe<'_>,
    ) -> Result<(Attached, Vec<Event>), StoreError> {
        self.change_presence("attach", |p| p.attach(req, known, rules, now, probe))
    }

    fn heartbeat(
        &self,
        node: &str,
        session: Option<&str>,
        health: Health,
        now: SystemTime,
    ) -> Result<Vec<Event>, StoreError> {
        // The kept beats stay locked from the check to the insert, and a
        // sweep holds them from its drain to its write, so a beat is either
        // in a sweep's batch or judged against what that sweep wrote.
        {
            let mut kept = self.kept();
            let presence = self.presence()?;
            if let Some(session) = presence.soft_beat(node, session, health)? {
                kept.insert((node.to_owned(), session.to_owned()), now);
                return Ok(Vec::new());
            }
        }
        let ((), events) =
            self.change_presence("heartbeat", |p| p.heartbeat(node, session, health, now).map(|e| ((), e)))?;
        Ok(events)
    }

    /// Memory only: the cached presence, trusted for `recheck` after its
    /// file was last seen unchanged (this process's own writes void it at
    /// once); a sweep writing holds the kept beats, and then the beat
    /// takes the full path rather than wait here.
    fn soft_heartbeat(
        &self,
        node: &str,
        session: Option<&str>,
        health: Health,
        now: SystemTime,
        recheck: Duration,
    ) -> bool {
        let Ok(mut kept) = self.kept.try_lock() else { return false };
        let writes = self.presence_writes.load(Ordering::Acquire);
        let (presence, rows) = match self.presence_cache.lock().as_deref() {
            Ok(Some(cached)) if cached.writes == writes && cached.checked.elapsed() < recheck => {
                (cached.doc.clone(), cached.rows.clone())
            }
            _ => return false,
        };
        // A refusal is answered by the full path, against the file.
        let Some(session) = rows.get(node).and_then(|&i| presence.soft_beat_at(i, node, session, health)) else {
            return false;
        };
        kept.insert((node.to_owned(), session.to_owned()), now);
        true
    }

    fn detach(&self, node: &str, session: Option<&str>, now: SystemTime) -> Result<Vec<Event>, StoreError> {
        Ok(self.change_presence("detach", |p| p.detach(node, session, now).map(|e| ((), e)))?.1)
    }

    fn capability_update(
        &self,
        node: &str,
        capabilities: &Map<String, Value>,
        health: Option<Health>,
        floor: Option<ClientVersion>,
        now: SystemTime,
    ) -> Result<(CapabilityUpdated, Vec<Event>), StoreError> {
        self.change_presence("capabilityupdate", |p| p.capability_update(node, capabilities, health, floor, now))
    }

    fn revoke(
        &self,
        node: &str,
        by: Revoker<'_>,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(self.change_presence("revocation", |p| p.revoke(node, by, reason, now).map(|e| ((), e)))?.1)
    }

    fn unrevoke(&self, node: &str, by: Revoker<'_>, now: SystemTime) -> Result<Vec<Event>, StoreError> {
        Ok(self.change_presence("revocation", |p| p.unrevoke(node, by, now).map(|e| ((), e)))?.1)
    }

    fn sweep(&self, rules: &Rules, now: SystemTime, probe: Probe<'_>) -> Result<Vec<Event>, StoreError> {
        let mut kept = self.kept();
        let ((), events) = self.change_presence("presence-sweep", |p| {
            p.apply_beats(&kept);
            Ok(((), p.sweep(rules, now, probe)))
        })?;
        // Kept until written: a sweep that failed leaves them for the next.
        kept.clear();
        Ok(events)
    }

    fn roster(&self, floor: Option<ClientVersion>) -> Result<Vec<RosterRow>, StoreError> {
        let mut presence = Presence::clone(&*self.presence()?);
        presence.apply_beats(&self.kept());
        Ok(presence.roster(floor))
    }

    /// Parsed again only when the file changed since the last call.
    fn presence(&self) -> Result<Arc<Presence>, StoreError> {
        let path = self.dir.join(PRESENCE);
        let corrupt = |e: std::io::Error| StoreError::Corrupt { path: path.clone(), error: e.to_string() };
        let writes = self.presence_writes.load(Ordering::Acquire);
        let checked = Instant::now();
        // The stamp and the bytes come from one open file, so they always
        // describe the same version.
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(corrupt(e)),
        };
        let stamp = Stamp::of(&file.metadata().map_err(corrupt)?);
        if let Ok(mut cache) = self.presence_cache.lock()
            && let Some(cached) = cache.as_mut()
            && cached.stamp == stamp
            && cached.writes == writes
        {
            cached.checked = checked;
            return Ok(cached.doc.clone());
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(corrupt)?;
        let doc: Arc<Presence> =
            Arc::new(serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path, error: e.to_string() })?);
        if let Ok(mut cache) = self.presence_cache.lock() {
            *cache = Some(Cached { stamp, writes, checked, rows: Arc::new(doc.active_rows()), doc: doc.clone() });
        }
        Ok(doc)
    }
}

impl PeerStore for FileStore {
    fn link(&self, fleet: &FleetMap, a: &str, b: &str) -> Result<bool, StoreError> {
        Ok(self.change("peer-link", LINKS, |links: &mut Links| Ok((links.link(fleet, a, b)?, Vec::new())))?.0)
    }

    fn unlink(&self, fleet: Option<&FleetMap>, a: &str, b: &str) -> Result<bool, StoreError> {
        Ok(self.change("peer-unlink", LINKS, |links: &mut Links| Ok((links.unlink(fleet, a, b)?, Vec::new())))?.0)
    }

    fn links(&self) -> Result<Links, StoreError> {
        self.read(LINKS)
    }

    fn send(&self, fleet: &FleetMap, draft: &Draft, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
        let message = peers::compose(draft, now)?;
        let held = self.hold("peer-send")?;
        self.send_held(&held, fleet, message, limits, now)
    }

    fn reply(&self, fleet: &FleetMap, p: &ReplyParams, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
        peers::check_name(&p.from)?;
        let held = self.hold("peer-reply")?;
        let mailbox: Inbox = self.read(&inbox_file(&p.from))?;
        let original = &mailbox.received_message(&p.message_id)?.message;
        let message = peers::compose(&Draft::reply(&p.from, original, &p.message, p.ack_required)?, now)?;
        self.send_held(&held, fleet, message, limits, now)
    }

    fn inbox(&self, p: &str, now: SystemTime) -> Result<Vec<Message>, StoreError> {
        peers::check_name(p)?;
        Ok(self.read::<Inbox>(&inbox_file(p))?.free(now, false))
    }

    fn lease(&self, p: &str, urgent_only: bool, now: SystemTime) -> Result<Vec<Message>, StoreError> {
        peers::check_name(p)?;
        // Every hook asks, and most find nothing: a look without the lock
        // spares them the wait (a message queued meanwhile waits for the
        // next hook, as it would have a moment earlier).
        if self.read::<Inbox>(&inbox_file(p))?.free(now, urgent_only).is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .change("peer-inbox", &inbox_file(p), |inbox: &mut Inbox| Ok((inbox.lease(now, urgent_only), Vec::new())))?
            .0)
    }

    fn ack(&self, p: &str, ids: &[String], limits: &Limits, now: SystemTime) -> Result<usize, StoreError> {
        peers::check_name(p)?;
        Ok(self.change("peer-ack", &inbox_file(p), |inbox: &mut Inbox| Ok(inbox.deliver(p, ids, limits, now)))?.0)
    }

    fn acknowledge(&self, p: &str, id: &str, limits: &Limits, now: SystemTime) -> Result<Acknowledged, StoreError> {
        peers::check_name(p)?;
        let held = self.hold("peer-acknowledge")?;
        let mailbox: Inbox = self.read(&inbox_file(p))?;
        let kept = mailbox.acknowledgeable(id)?;
        // The receipt first: a crash between the two writes leaves the
        // state behind, and the retried acknowledgement finds the receipt
        // already queued (one receipt, never none).
        let receipt = match kept.acknowledged_at {
            None => peers::receipt(p, &kept.message, now),
            Some(_) => None,
        };
        let sent_receipt = receipt.is_some();
        if let Some(receipt) = receipt {
            let sender = kept.message.from.clone();
            self.apply(&held, &inbox_file(&sender), |inbox: &mut Inbox| {
                Ok(((), inbox.queue(&sender, receipt, limits, now).1))
            })?;
        }
        let (changed, _) = self.apply(&held, &inbox_file(p), |inbox: &mut Inbox| inbox.acknowledge(p, id, now))?;
        Ok(Acknowledged { message_id: id.to_owned(), acknowledged: changed, receipt: sent_receipt })
    }

    fn outbox(&self, p: &str, limit: Option<usize>) -> Result<Vec<OutboxRow>, StoreError> {
        peers::check_name(p)?;
        let sender: Inbox = self.read(&inbox_file(p))?;
        let mut mailboxes = BTreeMap::new();
        for to in peers::outbox_recipients(&sender, limit) {
            let mailbox: Inbox = self.read(&inbox_file(&to))?;
            mailboxes.insert(to, mailbox);
        }
        Ok(peers::outbox(&sender, limit, |to| mailboxes.get(to)))
    }

    fn mailbox(&self, p: &str) -> Result<Inbox, StoreError> {
        peers::check_name(p)?;
        self.read(&inbox_file(p))
    }

    /// Read again only when the inbox directory's stamp moved (or this
    /// process wrote an inbox) since the last count.
    fn waiting(&self) -> Result<BTreeMap<String, usize>, StoreError> {
        let dir = self.dir.join(INBOXES);
        let writes = self.inbox_writes.load(Ordering::Acquire);
        let read_at = SystemTime::now();
        let stamp = match std::fs::metadata(&dir) {
            Ok(meta) => Stamp::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(StoreError::Corrupt { path: dir, error: e.to_string() }),
        };
        let mut cache = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.as_ref()
            && cached.writes == writes
            && cached.seen.unchanged(&stamp)
        {
            return Ok(cached.counts.clone());
        }
        let mut counts = BTreeMap::new();
        for (peer, path) in self.inboxes()? {
            let n = read_doc::<Inbox>(&path)?.messages.len();
            if n > 0 {
                counts.insert(peer, n);
            }
        }
        *cache = Some(Waiting { seen: Seen::new(stamp, read_at), writes, counts: counts.clone() });
        Ok(counts)
    }
}

impl EventLog for FileStore {
    fn recent(&self, node: Option<&str>, limit: usize) -> Result<(Vec<Event>, Cursor), StoreError> {
        events::recent(&self.events, node, limit)
    }

    fn follow(&self, cursor: &mut Cursor, node: Option<&str>) -> Result<Vec<Event>, StoreError> {
        events::follow(&self.events, cursor, node)
    }
}

impl StateStore for FileStore {
    fn record_sweep(&self, sweep: &SweepStatus) -> Result<(), StoreError> {
        self.change("sweep-record", LAST_SWEEP, |last: &mut Option<SweepStatus>| {
            *last = Some(sweep.clone());
            Ok(((), Vec::new()))
        })?;
        Ok(())
    }

    fn last_sweep(&self) -> Result<Option<SweepStatus>, StoreError> {
        self.read(LAST_SWEEP)
    }

    /// Loads every document with its real type: presence, links, each
    /// inbox. A document that does not load is named, never deleted.
    fn check(&self) -> Result<String, StoreError> {
        self.presence()?;
        self.links()?;
        let inboxes = self.inboxes()?;
        for (_, path) in &inboxes {
            read_doc::<Inbox>(path)?;
        }
        Ok(format!("presence, links and {} inbox(es) load", inboxes.len()))
    }
}

/// A store document; a missing file is the empty document.
fn read_doc<T: DeserializeOwned + Default>(path: &Path) -> Result<T, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), error: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(StoreError::Corrupt { path: path.to_path_buf(), error: e.to_string() }),
    }
}

/// Writes a store document through a tmp file and a rename, both synced:
/// a change acknowledged to a caller survives a crash.
fn write_doc<T: Serialize>(files: &FileGuard, path: &Path, doc: &T) -> Result<(), FileError> {
    let mut bytes = serde_json::to_vec_pretty(doc).unwrap_or_default();
    bytes.push(b'\n');
    files.write_durable(path, &bytes, Some(0o600))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use memoryd_proto::event::{Actor, EventKind};

    fn revoke(store: &FileStore, node: &str) -> Result<Vec<Event>, StoreError> {
        store.revoke(node, Revoker::Core, None, SystemTime::now())
    }

    #[test]
    fn the_file_store_passes_the_domain_suite() {
        let dirs = std::cell::RefCell::new(Vec::new());
        crate::store::suite::run_all(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = FileStore::open(&Paths::new(dir.path().to_path_buf()), &FileGuard::live()).unwrap();
            dirs.borrow_mut().push(dir);
            store
        });
    }

    /// Two stores on one root, as the daemon and an offline memoryctl.
    fn two_stores(paths: &Paths) -> (FileStore, FileStore) {
        (FileStore::open(paths, &FileGuard::live()).unwrap(), FileStore::open(paths, &FileGuard::live()).unwrap())
    }

    #[test]
    fn an_inbox_written_before_threads_loads_and_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        let store = FileStore::open(&paths, &FileGuard::live()).unwrap();
        std::fs::create_dir_all(paths.store.join(INBOXES)).unwrap();
        let old = r#"{"messages":[{"id":"msg-1","from":"ada","ts":"2026-11-01T10:00:00.000Z","text":"old words"}]}"#;
        std::fs::write(paths.store.join(inbox_file("bob")), old).unwrap();
        assert_eq!(store.check().unwrap(), "presence, links and 1 inbox(es) load");
        let now = SystemTime::now();
        let leased = store.lease("bob", false, now).unwrap();
        assert_eq!((leased[0].text.as_str(), leased[0].thread()), ("old words", "msg-1"), "its own thread");
        let limits = peers::Limits {
            capacity: 10,
            send_rate: 10,
            history_max: 10,
            history_age: Duration::from_secs(3600 * 24 * 365 * 10),
        };
        assert_eq!(store.ack("bob", &["msg-1".to_owned()], &limits, now).unwrap(), 1);
        let text = std::fs::read_to_string(paths.store.join(inbox_file("bob"))).unwrap();
        assert!(text.contains("\"received\"") && text.contains("\"deliveredAt\""), "{text}");
        let params =
            peers::HistoryParams { personality: "bob".into(), query: Some("words".into()), ..Default::default() };
        assert_eq!(peers::history(&store.mailbox("bob").unwrap(), &params).unwrap().len(), 1);
    }

    #[test]
    fn the_cached_presence_follows_a_change_made_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        let (reader, writer) = two_stores(&paths);
        assert!(reader.presence().unwrap().revoked.is_empty(), "no file yet");
        for node in ["claude-a", "claude-b"] {
            revoke(&writer, node).unwrap();
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

    fn attach(store: &FileStore, node: &str, session: &str) {
        let req = AttachParams {
            session_id: session.into(),
            node_id: node.into(),
            client_version: "1.0".into(),
            capabilities: Map::new(),
            health_state: Health::Online,
            pid: None,
        };
        let rules =
            Rules { degraded_after: Duration::from_secs(30), offline_after: Duration::from_secs(60), floor: None };
        store.attach(&req, true, &rules, SystemTime::now(), &|_| None).unwrap();
    }

    #[test]
    fn a_beat_that_changes_nothing_but_the_time_touches_no_file_until_its_recheck_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        let store = FileStore::open(&paths, &FileGuard::live()).unwrap();
        let minute = Duration::from_secs(60);
        let beat = |session| store.soft_heartbeat("claude-a", session, Health::Online, SystemTime::now(), minute);
        attach(&store, "claude-a", "s1");
        assert!(!beat(Some("s1")), "the store's own write voids the cached document");
        store.heartbeat("claude-a", Some("s1"), Health::Online, SystemTime::now()).unwrap();
        // Checked just now: the next beats are kept without opening the
        // file, which is now unreadable (a file access would fail).
        let file = paths.store.join(PRESENCE);
        std::fs::rename(&file, dir.path().join("moved")).unwrap();
        std::fs::write(&file, "{torn").unwrap();
        assert!(beat(Some("s1")) && beat(None), "kept in memory");
        assert_eq!(store.kept().len(), 1);
        // Refusals, state moves and an overdue recheck take the full path.
        assert!(!beat(Some("old")), "a stale session is answered against the file");
        assert!(!store.soft_heartbeat("claude-a", None, Health::Degraded, SystemTime::now(), minute));
        assert!(!store.soft_heartbeat("claude-b", None, Health::Online, SystemTime::now(), minute));
        assert!(!store.soft_heartbeat("claude-a", None, Health::Online, SystemTime::now(), Duration::ZERO));
        assert!(matches!(store.presence(), Err(StoreError::Corrupt { .. })), "the recheck sees the other writer");
        // A sweep writing holds the kept beats: the beat does not wait.
        let held = store.kept();
        assert!(!beat(None));
        drop(held);
    }

    #[test]
    fn the_waiting_counts_are_read_again_only_when_an_inbox_changed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        let (store, other) = two_stores(&paths);
        let fleet: FleetMap =
            serde_json::from_value(serde_json::json!({"updatedAt": "2026-12-01T10:00:00Z", "peers": [
                {"personality": "ada", "runtimes": ["claude"], "cwd": "/tmp/a"},
                {"personality": "bob", "runtimes": ["claude"], "cwd": "/tmp/b"}
            ]}))
            .unwrap();
        store.link(&fleet, "ada", "bob").unwrap();
        assert!(store.waiting().unwrap().is_empty());
        let limits =
            peers::Limits { capacity: 10, send_rate: 10, history_max: 10, history_age: Duration::from_secs(3600) };
        store.send(&fleet, &Draft::plain("ada", "bob", "hi"), &limits, SystemTime::now()).unwrap();
        assert_eq!(store.waiting().unwrap(), BTreeMap::from([("bob".to_owned(), 1)]), "its own write");
        other.send(&fleet, &Draft::plain("bob", "ada", "hello"), &limits, SystemTime::now()).unwrap();
        let both = BTreeMap::from([("ada".to_owned(), 1), ("bob".to_owned(), 1)]);
        assert_eq!(store.waiting().unwrap(), both, "another writer's rename into the inbox dir");
        // Once the directory is older than the racy window, its stamp is
        // trusted: a file changed in place (never done by a store) is not
        // read again.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(store.waiting().unwrap(), both);
        std::fs::write(paths.store.join(inbox_file("ada")), "{torn").unwrap();
        assert_eq!(store.waiting().unwrap(), both, "no inbox read per call");
    }

    #[test]
    fn a_reader_without_a_daemon_sees_the_stored_documents_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("r"));
        let reader = FileStore::read_only(&paths);
        assert_eq!(*reader.presence().unwrap(), Presence::default(), "nothing stored yet");
        assert_eq!(reader.last_sweep().unwrap(), None);
        assert!(reader.waiting().unwrap().is_empty());
        assert!(matches!(revoke(&reader, "claude-a"), Err(StoreError::ReadOnly { .. })));
        assert!(!paths.store.exists(), "reading created the store");
        let store = FileStore::open(&paths, &FileGuard::live()).unwrap();
        let sweep = SweepStatus { at: "2026-12-01T10:00:00Z".into(), ok: 3, failed: 1 };
        store.record_sweep(&sweep).unwrap();
        revoke(&store, "claude-a").unwrap();
        assert_eq!(reader.last_sweep().unwrap(), Some(sweep));
        assert!(reader.presence().unwrap().revoked.contains_key("claude-a"));
        std::fs::write(paths.store.join(PRESENCE), "{torn").unwrap();
        assert!(matches!(reader.presence(), Err(StoreError::Corrupt { .. })), "unreadable is not empty");
    }

    #[test]
    fn changes_are_written_with_their_events_and_the_log_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        let store = FileStore::open(&paths, &FileGuard::live()).unwrap();
        revoke(&store, "claude-a").unwrap();
        assert!(store.presence().unwrap().revoked.contains_key("claude-a"));
        let log = std::fs::read_to_string(&paths.events).unwrap();
        assert_eq!(log.lines().count(), 1);
        // A refused change writes nothing.
        assert!(matches!(revoke(&store, "bad node"), Err(StoreError::Refused(_))));
        // Past 10 MiB the log rotates, keeping three.
        for n in 0..4 {
            std::fs::write(&paths.events, vec![b'x'; (EVENTS_MAX + 1) as usize]).unwrap();
            revoke(&store, &format!("claude-n{n}")).unwrap();
        }
        let (last, _) = store.recent(None, 10).unwrap();
        assert!(
            matches!(&last[..], [Event { kind: EventKind::Revoked { node_id, actor: Actor::Core, .. }, .. }]
                if node_id == "claude-n3"),
            "{last:?}"
        );
        for n in 1..=EVENTS_KEPT {
            assert!(crate::host::files::rotated_name(&paths.events, n).exists(), "{n}");
        }
        assert!(!crate::host::files::rotated_name(&paths.events, EVENTS_KEPT + 1).exists());
        // A document that does not load is reported, never replaced, and
        // `check` names it.
        std::fs::write(paths.store.join(PRESENCE), "{torn").unwrap();
        let e = revoke(&store, "claude-z").unwrap_err();
        assert!(e.to_string().contains("kept as it is"), "{e}");
        assert_eq!(std::fs::read_to_string(paths.store.join(PRESENCE)).unwrap(), "{torn");
        assert!(store.check().unwrap_err().to_string().contains("presence.json does not load"));
        std::fs::remove_file(paths.store.join(PRESENCE)).unwrap();
        std::fs::create_dir_all(paths.store.join(INBOXES)).unwrap();
        std::fs::write(paths.store.join(inbox_file("bob")), "[").unwrap();
        assert!(store.check().unwrap_err().to_string().contains("bob.json does not load"));
        std::fs::write(paths.store.join(inbox_file("bob")), "{}").unwrap();
        assert_eq!(store.check().unwrap(), "presence, links and 1 inbox(es) load");
    }
}

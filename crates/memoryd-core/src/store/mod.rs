//! Where the state of spec 40 and 50 lasts: presence, links, inboxes and
//! the event log, behind traits whose methods are the state changes
//! themselves (in the spirit of atuin's `Database`), never document reads
//! and writes.
//!
//! Every changing method checks and writes in one step: it takes the
//! store's lock (a transaction, for a database), re-reads what it changes,
//! runs the pure state machine of [`crate::presence`] or [`crate::peers`]
//! with the caller's `now`, writes the difference and appends the events,
//! before anything else can change the same state. A check and its write are
//! never two calls, so the daemon and an offline `memoryctl` never overwrite
//! each other's change.
//!
//! The traits are synchronous and object-safe: the daemon holds one
//! `Box<dyn StateStore>` and calls it from blocking threads (store work is
//! disk or network I/O and lock waits, which never run on an async worker);
//! a backend with an async driver blocks on its own runtime there.
//!
//! [`FileStore`] is the embedded backend (`S/store/` and `S/events.jsonl`);
//! [`suite`] is the domain test suite every backend passes.

mod events;
mod file;
#[cfg(any(test, feature = "store-suite"))]
pub mod suite;

pub use file::FileStore;

use crate::config::ClientVersion;
use crate::fleet::FleetMap;
use crate::host::files::FileError;
use crate::host::lock::LockError;
use crate::peers::{Draft, Inbox, Limits, Links, Message, OutboxRow};
use crate::presence::{AttachParams, Attached, Event, Health, Presence, Probe, Refusal, Revoker, RosterRow, Rules};
use memoryd_proto::peers::{Acknowledged, ReplyParams, Sent};
use memoryd_proto::presence::CapabilityUpdated;
use memoryd_proto::status::SweepStatus;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", .0.message)]
    Refused(Refusal),
    #[error("{path} does not load: {error}; it is kept as it is (fix or move it away)")]
    Corrupt { path: PathBuf, error: String },
    #[error("the store at {path} was opened to read only and cannot {what}; open it with FileStore::open")]
    ReadOnly { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    File(#[from] FileError),
    /// A shared store (spec 80) that is down, did not answer in time, or
    /// cannot be used; answered at once, never retried by the caller.
    #[error("{message}")]
    Unavailable { kind: memoryd_proto::ErrorKind, message: String },
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> StoreError {
        StoreError::Refused(r)
    }
}

/// The state changes of session presence (spec 40). Each returns the events
/// it recorded, already appended to the log.
pub trait PresenceStore: Send + Sync {
    /// `runtimenode.attach`; `known`: whether the fleet map has the node.
    fn attach(
        &self,
        req: &AttachParams,
        known: bool,
        rules: &Rules,
        now: SystemTime,
        probe: Probe<'_>,
    ) -> Result<(Attached, Vec<Event>), StoreError>;

    /// `runtimenode.heartbeat`. A beat that changes nothing but the time is
    /// soft state (spec 40): kept in memory, checked against the stored
    /// session, and written by the next [`sweep`](Self::sweep); one that
    /// moves a state is written at once.
    fn heartbeat(
        &self,
        node: &str,
        session: Option<&str>,
        health: Health,
        now: SystemTime,
    ) -> Result<Vec<Event>, StoreError>;

    /// A heartbeat that changes nothing but the time, kept without any I/O
    /// or wait (the caller's async task may run it): true when kept. False
    /// sends the beat to [`heartbeat`](Self::heartbeat): one that moves a
    /// state or is refused, or whose session was not checked against the
    /// stored document within `recheck`.
    fn soft_heartbeat(
        &self,
        _node: &str,
        _session: Option<&str>,
        _health: Health,
        _now: SystemTime,
        _recheck: Duration,
    ) -> bool {
        false
    }

    /// `runtimenode.detach`.
    fn detach(&self, node: &str, session: Option<&str>, now: SystemTime) -> Result<Vec<Event>, StoreError>;

    /// `runtimenode.capabilityupdate`, refused below `floor`.
    fn capability_update(
        &self,
        node: &str,
        capabilities: &Map<String, Value>,
        health: Option<Health>,
        floor: Option<ClientVersion>,
        now: SystemTime,
    ) -> Result<(CapabilityUpdated, Vec<Event>), StoreError>;

    fn revoke(
        &self,
        node: &str,
        by: Revoker<'_>,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Event>, StoreError>;

    fn unrevoke(&self, node: &str, by: Revoker<'_>, now: SystemTime) -> Result<Vec<Event>, StoreError>;

    /// The staleness sweep: writes the kept heartbeats, then demotes silent
    /// sessions, in one change. Beats are kept until a sweep wrote them.
    fn sweep(&self, rules: &Rules, now: SystemTime, probe: Probe<'_>) -> Result<Vec<Event>, StoreError>;

    /// One row per node, with the kept heartbeats.
    fn roster(&self, floor: Option<ClientVersion>) -> Result<Vec<RosterRow>, StoreError>;

    /// The stored presence, as last written (kept heartbeats not applied).
    fn presence(&self) -> Result<Arc<Presence>, StoreError>;
}

/// The state changes of peer links and messages (spec 50).
pub trait PeerStore: Send + Sync {
    /// `peer.link`: reciprocal, idempotent; whether a new link was made.
    fn link(&self, fleet: &FleetMap, a: &str, b: &str) -> Result<bool, StoreError>;

    /// `peer.unlink`: both sides at once; whether there was a link. A peer
    /// that left the fleet keeps its links, and may be unlinked.
    fn unlink(&self, fleet: Option<&FleetMap>, a: &str, b: &str) -> Result<bool, StoreError>;

    fn links(&self) -> Result<Links, StoreError>;

    /// `peer.send`: checked in the order of spec 50 (an operator's message
    /// needs no link and counts against no rate), then queued durably in
    /// every recipient's inbox, the oldest dropped past `limits.capacity`
    /// (each drop a `peer.message_dropped` event), then recorded in the
    /// sender's history. The caller refuses a read-only sending node first.
    fn send(&self, fleet: &FleetMap, draft: &Draft, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError>;

    /// `peer.reply`: a send to the sender of a message `p.from` received, in
    /// its thread (see [`Draft::reply`]).
    fn reply(&self, fleet: &FleetMap, p: &ReplyParams, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError>;

    /// The messages waiting for `p` and not leased at `now`, oldest first.
    fn inbox(&self, p: &str, now: SystemTime) -> Result<Vec<Message>, StoreError>;

    /// The same (only urgent ones with `urgent_only`), each returned one
    /// hidden from other readers for [`crate::peers::LEASE`].
    fn lease(&self, p: &str, urgent_only: bool, now: SystemTime) -> Result<Vec<Message>, StoreError>;

    /// `peer.ack`: the named messages were delivered; they move to `p`'s
    /// history (a `peer.message_delivered` event each); how many were there.
    fn ack(&self, p: &str, ids: &[String], limits: &Limits, now: SystemTime) -> Result<usize, StoreError>;

    /// `peer.acknowledge`: `p`'s agent confirms an `ackRequired` message it
    /// received; the receipt is queued for the sender before the state
    /// moves, and queued once whatever is retried.
    fn acknowledge(&self, p: &str, id: &str, limits: &Limits, now: SystemTime) -> Result<Acknowledged, StoreError>;

    /// `peer.outbox`: what `p` sent lately, newest first, with each
    /// recipient's state.
    fn outbox(&self, p: &str, limit: Option<usize>) -> Result<Vec<OutboxRow>, StoreError>;

    /// `p`'s mailbox: waiting messages and the kept history, which
    /// [`crate::peers::history`] narrows and ranks.
    fn mailbox(&self, p: &str) -> Result<Inbox, StoreError>;

    /// How many messages wait for each peer (leased or not; none left out).
    fn waiting(&self) -> Result<BTreeMap<String, usize>, StoreError>;
}

/// A position in the event log: the events after it are those not yet
/// returned. What the numbers mean is the backend's (the file store: the
/// log file's inode and a byte offset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub log: u64,
    pub at: u64,
}

/// The event log. Events are appended by the changes above, in the same
/// step; there is no other way in.
pub trait EventLog: Send + Sync {
    /// The last `limit` events (of `node`, or all), oldest first, and the
    /// cursor just after the last one read: following from it misses none.
    fn recent(&self, node: Option<&str>, limit: usize) -> Result<(Vec<Event>, Cursor), StoreError>;

    /// The events (of `node`, or all) written after `cursor`, which moves
    /// past them.
    fn follow(&self, cursor: &mut Cursor, node: Option<&str>) -> Result<Vec<Event>, StoreError>;

    /// What `events.tail` shows before following: [`EventLog::recent`] of
    /// at most `limit` (and never more than [`RECENT_EVENTS`]) events,
    /// keeping those at or after `since`.
    fn recent_since(
        &self,
        node: Option<&str>,
        limit: Option<usize>,
        since: Option<SystemTime>,
    ) -> Result<(Vec<Event>, Cursor), StoreError> {
        let (mut events, cursor) = self.recent(node, limit.unwrap_or(RECENT_EVENTS).min(RECENT_EVENTS))?;
        if let Some(since) = since {
            events.retain(|e| e.ts >= since);
        }
        Ok((events, cursor))
    }
}

/// The most recent events shown before a follow.
pub const RECENT_EVENTS: usize = 200;

/// A whole store: what the daemon and `memoryctl` hold.
pub trait StateStore: PresenceStore + PeerStore + EventLog {
    /// Makes `local` (this host's fleet map) the host's part of the fleet
    /// registry: called at start, on every fleet-map change and at every
    /// resync. The file store's registry is the local map itself.
    fn publish(&self, _local: &FleetMap) -> Result<(), StoreError> {
        Ok(())
    }

    /// The fleet that links, visibility and sends are checked against:
    /// every present peer of every host (spec 80), else the local map.
    fn registry(&self, local: &FleetMap) -> Result<FleetMap, StoreError> {
        Ok(local.clone())
    }

    /// Records a whole-fleet surface sweep as the last one.
    fn record_sweep(&self, sweep: &SweepStatus) -> Result<(), StoreError>;

    /// The last whole-fleet sweep recorded, if any.
    fn last_sweep(&self) -> Result<Option<SweepStatus>, StoreError>;

    /// Loads everything stored: what loaded, or the first thing that does
    /// not (for `verify`).
    fn check(&self) -> Result<String, StoreError>;
}

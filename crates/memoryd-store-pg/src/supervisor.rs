//! The store's background work: connect (migrate, claim the host's row,
//! measure the clock skew) with backoff 250 ms → 5 s, keep the listener
//! connection (`LISTEN`), resync the caches after every (re)connect and
//! every `resync_every`, and turn the store `down` and back `up`.
#![allow(dead_code, unused_variables)] // TODO(helper): filled in

use crate::Options;
use crate::db::Db;
use std::sync::Arc;

/// A notification from another host's change (spec 80): a hint, never
/// data; the daemon refreshes what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A node's presence moved.
    Presence {
        node: String,
        state: String,
    },
    /// Many nodes moved, or the listener (re)connected: reload everything.
    Roster,
    /// A peer's inbox changed.
    Inbox {
        personality: String,
    },
    Link {
        a: String,
        b: String,
    },
    Peer {
        personality: String,
    },
    Settings,
}

/// What the store keeps in memory, shared with its tasks.
pub struct Shared {
    pub options: Options,
    pub hints: tokio::sync::broadcast::Sender<Hint>,
    /// The fleet registry as last read, and this host's name conflicts.
    pub registry: crate::registry::Cache,
}

impl Shared {
    pub fn new(options: Options) -> Shared {
        Shared { options, hints: tokio::sync::broadcast::Sender::new(256), registry: Default::default() }
    }

    /// The store is being dropped: tasks end.
    pub fn stopping(&self) {}
}

pub fn spawn(db: Arc<Db>, shared: Arc<Shared>) {}

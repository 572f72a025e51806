//! The store's background work: connect (migrate, claim the host's row,
//! measure the clock skew) with backoff 250 ms → 5 s, keep the listener
//! connection (`LISTEN`), resync the caches after every (re)connect and
//! every `resync_every`, and turn the store `down` and back `up`.
#![allow(dead_code, unused_variables)] // TODO(helper): filled in

use crate::Options;
use crate::db::{Db, Failure};
use std::sync::Arc;

/// A notification from another host's change (spec 80): a hint, never
/// data; the daemon refreshes what it names. On the wire it is the JSON
/// payload of spec 80's table (`{"k":"presence","n":…,"s":…}`, …).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Hint {
    /// A node's presence moved.
    Presence {
        #[serde(rename = "n")]
        node: String,
        #[serde(rename = "s")]
        state: String,
    },
    /// Many nodes moved, or the listener (re)connected: reload everything.
    Roster,
    /// A peer's inbox changed.
    Inbox {
        #[serde(rename = "p")]
        personality: String,
    },
    Link {
        a: String,
        b: String,
    },
    Peer {
        #[serde(rename = "p")]
        personality: String,
    },
    Settings,
}

/// The notification channel of `schema`.
pub fn channel(schema: &str) -> String {
    format!("{schema}_fleet")
}

/// Sends `hint` to every host's listener when the caller's transaction
/// commits (never on rollback).
pub async fn notify(tx: &deadpool_postgres::Transaction<'_>, schema: &str, hint: &Hint) -> Result<(), Failure> {
    let payload = serde_json::to_string(hint).map_err(|e| {
        Failure::Store(memoryd_core::store::StoreError::Unavailable {
            kind: memoryd_proto::ErrorKind::Internal,
            message: format!("a notification does not encode: {e}"),
        })
    })?;
    tx.execute("SELECT pg_notify($1, $2)", &[&channel(schema), &payload]).await?;
    Ok(())
}

/// What the store keeps in memory, shared with its tasks.
pub struct Shared {
    pub options: Options,
    pub hints: tokio::sync::broadcast::Sender<Hint>,
}

impl Shared {
    pub fn new(options: Options) -> Shared {
        Shared { options, hints: tokio::sync::broadcast::Sender::new(256) }
    }

    /// The store is being dropped: tasks end.
    pub fn stopping(&self) {}
}

pub fn spawn(db: Arc<Db>, shared: Arc<Shared>) {}

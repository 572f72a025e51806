//! What the changes of the registry, links and mailboxes share inside
//! their transaction: the one lock order on `peers` rows, the events, the
//! notifications.

use crate::db::{Db, Failure};
use crate::supervisor::Hint;
use memoryd_core::presence::Event;
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;

pub type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Locks the `peers` rows of `names` `FOR NO KEY UPDATE` (the mailbox
/// owner's lock: foreign-key checks still pass), always in byte order of
/// the names, so two changes that lock overlapping sets (a send and a send
/// the other way, an acknowledgement and its receipt, a publish) wait for
/// each other instead of deadlocking. A name without a row locks
/// nothing (it has no mailbox either).
pub async fn lock_peers(tx: &Tx<'_>, names: &[&str]) -> Result<(), Failure> {
    tx.execute(
        "SELECT 1 FROM peers WHERE personality = ANY($1) ORDER BY personality COLLATE \"C\" FOR NO KEY UPDATE",
        &[&names],
    )
    .await?;
    Ok(())
}

/// Appends `events` to the fleet's log in the change's transaction (their
/// times on the host's clock, as the domain made them).
// TODO(merge): replaced by H1's `events::insert` once it is on main.
pub async fn insert_events(tx: &Tx<'_>, host_id: &str, events: &[Event]) -> Result<(), Failure> {
    for e in events {
        let body = serde_json::to_value(e).map_err(|e| internal(format!("an event does not serialize: {e}")))?;
        let name = body.get("event").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        tx.execute(
            "INSERT INTO events (ts, host_id, event, node_id, body) VALUES ($1, $2, $3, $4, $5)",
            &[&e.ts, &host_id, &name, &e.node_id(), &body],
        )
        .await?;
    }
    Ok(())
}

/// Tells the other hosts what changed, delivered at commit.
// TODO(merge): replaced by H1's `supervisor::notify` once it is on main.
pub async fn notify(tx: &Tx<'_>, db: &Db, hint: &Hint) -> Result<(), Failure> {
    let payload = match hint {
        Hint::Peer { personality } => serde_json::json!({"k": "peer", "p": personality}),
        Hint::Inbox { personality } => serde_json::json!({"k": "inbox", "p": personality}),
        Hint::Link { a, b } => serde_json::json!({"k": "link", "a": a, "b": b}),
        Hint::Settings => serde_json::json!({"k": "settings"}),
        Hint::Roster => serde_json::json!({"k": "roster"}),
        Hint::Presence { node, state } => serde_json::json!({"k": "presence", "n": node, "s": state}),
    };
    tx.execute("SELECT pg_notify($1, $2)", &[&format!("{}_fleet", db.settings.schema), &payload.to_string()]).await?;
    Ok(())
}

/// A failure that is this build's fault, not the database's.
pub fn internal(message: String) -> Failure {
    Failure::Store(StoreError::Unavailable { kind: ErrorKind::Internal, message: format!("fleet database: {message}") })
}

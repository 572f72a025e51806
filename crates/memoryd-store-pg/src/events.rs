//! The event log on the fleet database: every host's spec 40/50 events,
//! written in the transaction of their change.
//!
//! A row's `body` is the event as the domain made it (serde JSON, its
//! times in the writing host's clock, as its caller saw them); `ts` is the
//! event's time too and serves pruning only. A [`Cursor`] stands after a
//! `seq` (`log` is always 0: there is one log) below which no open
//! transaction can still add an event.

use crate::db::{Db, Failure};
use memoryd_core::presence::Event;
use memoryd_core::store::{Cursor, StoreError};

/// How many events one prune deletes at most (spec 80: 10,000 at a time).
pub const PRUNE_BATCH: i64 = 10_000;

/// How long events are kept.
pub const KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Appends `events` in the caller's transaction, in order.
pub async fn insert(tx: &deadpool_postgres::Transaction<'_>, host_id: &str, events: &[Event]) -> Result<(), Failure> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ts = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut nodes = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    for event in events {
        let body = serde_json::to_value(event).map_err(|e| {
            Failure::Store(StoreError::Unavailable {
                kind: memoryd_proto::ErrorKind::Internal,
                message: format!("an event does not encode: {e}"),
            })
        })?;
        kinds.push(body.get("event").and_then(|k| k.as_str()).unwrap_or("unknown").to_owned());
        ts.push(event.ts);
        nodes.push(event.node_id().map(str::to_owned));
        bodies.push(body);
    }
    // One statement for the batch; WITH ORDINALITY keeps their order in seq.
    tx.execute(
        "INSERT INTO events (ts, host_id, event, node_id, body)
         SELECT e.ts, $1, e.event, e.node_id, e.body
           FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::jsonb[]) WITH ORDINALITY
                AS e(ts, event, node_id, body, n)
          ORDER BY e.n",
        &[&host_id, &ts, &kinds, &nodes, &bodies],
    )
    .await?;
    Ok(())
}

fn decode(rows: Vec<tokio_postgres::Row>) -> Result<(Vec<Event>, u64), Failure> {
    let mut last = 0;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        let body: serde_json::Value = row.try_get(1)?;
        last = u64::try_from(seq).unwrap_or(0);
        match serde_json::from_value::<Event>(body) {
            Ok(event) => events.push(event),
            // A newer binary's event kind: skipped here, never fatal.
            Err(e) => tracing::debug!(seq, error = %e, "an event this memoryd does not know"),
        }
    }
    Ok((events, last))
}

/// How long a transaction may live at most (a call's deadline, the
/// server's statement and idle-in-transaction timeouts, with margin): a
/// gap in `seq` older than this is a rolled-back insert, never a late one.
const LONGEST_TRANSACTION: &str = "15 seconds";

/// The rows after `after`, in seq order, cut before the first gap that a
/// transaction still open may fill: identity values are taken at insert
/// and committed in any order, so a follower that moved past a gap could
/// miss the event that lands in it. The cursor after them.
async fn settled_after(
    client: &impl tokio_postgres::GenericClient,
    after: i64,
) -> Result<(Vec<tokio_postgres::Row>, i64), Failure> {
    let rows = client
        .query(
            &format!(
                "SELECT seq, body, node_id, now() - written_at > interval '{LONGEST_TRANSACTION}'
                   FROM events WHERE seq > $1 ORDER BY seq"
            ),
            &[&after],
        )
        .await?;
    let mut cursor = after;
    let mut settled = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        let old: bool = row.try_get(3)?;
        if seq != cursor + 1 && !old {
            break;
        }
        cursor = seq;
        settled.push(row);
    }
    Ok((settled, cursor))
}

fn of_node(rows: Vec<tokio_postgres::Row>, node: Option<&str>) -> Result<Vec<tokio_postgres::Row>, Failure> {
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let of: Option<String> = row.try_get(2)?;
        if node.is_none() || of.as_deref() == node {
            kept.push(row);
        }
    }
    Ok(kept)
}

fn cursor_at(seq: i64) -> Cursor {
    Cursor { log: 0, at: u64::try_from(seq).unwrap_or(0) }
}

/// The last `limit` events (of `node`, or all), oldest first, and the
/// cursor after the newest one that no open transaction can precede.
pub async fn recent(db: &Db, node: Option<&str>, limit: usize) -> Result<(Vec<Event>, Cursor), StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    db.call(db.settings.operator_timeout, async |client| {
        // One snapshot for both reads, so following from the cursor misses
        // nothing and repeats nothing.
        let tx = client
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        // The settled prefix starts before the open transactions' window:
        // the newest rows older than it, then everything after.
        let start: Option<i64> = tx
            .query_one(
                &format!("SELECT max(seq) FROM events WHERE now() - written_at > interval '{LONGEST_TRANSACTION}'"),
                &[],
            )
            .await?
            .try_get(0)?;
        let start = start.unwrap_or(0);
        let older = tx
            .query(
                "SELECT seq, body, node_id FROM (SELECT seq, body, node_id FROM events
                   WHERE seq <= $1 AND ($2::text IS NULL OR node_id = $2) ORDER BY seq DESC LIMIT $3) r ORDER BY seq",
                &[&start, &node, &limit],
            )
            .await?;
        let (newer, cursor) = settled_after(&*tx, start).await?;
        tx.commit().await?;
        let mut rows = older;
        rows.extend(of_node(newer, node)?);
        let skip = rows.len().saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
        let (events, _) = decode(rows.into_iter().skip(skip).collect())?;
        Ok((events, cursor_at(cursor)))
    })
    .await
}

/// The events (of `node`, or all) after `cursor`, which moves past every
/// settled event read (of any node).
pub async fn follow(db: &Db, cursor: &mut Cursor, node: Option<&str>) -> Result<Vec<Event>, StoreError> {
    let after = i64::try_from(cursor.at).unwrap_or(i64::MAX);
    let (events, at) = db
        .call(db.settings.operator_timeout, async |client| {
            let (rows, at) = settled_after(&**client, after).await?;
            let (events, _) = decode(of_node(rows, node)?)?;
            Ok((events, at))
        })
        .await?;
    *cursor = cursor_at(at);
    Ok(events)
}

/// Deletes events older than [`KEPT_FOR`] before `now` (database time),
/// at most [`PRUNE_BATCH`]; how many.
pub async fn prune(tx: &deadpool_postgres::Transaction<'_>, now: std::time::SystemTime) -> Result<u64, Failure> {
    let before = now.checked_sub(KEPT_FOR).unwrap_or(std::time::UNIX_EPOCH);
    Ok(tx
        .execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts < $1 ORDER BY seq LIMIT $2)",
            &[&before, &PRUNE_BATCH],
        )
        .await?)
}

//! The event log on the fleet database: every host's spec 40/50 events,
//! written in the transaction of their change.
//!
//! A row's `body` is the event as the domain made it (serde JSON, its
//! times in the writing host's clock, as its caller saw them); `ts` is the
//! event's time too and serves pruning only. A [`Cursor`] stands after a
//! `seq` (`log` is always 0: there is one log).

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

/// The last `limit` events (of `node`, or all), oldest first, and the
/// cursor after the newest event of the whole log.
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
        let rows = tx
            .query(
                "SELECT seq, body FROM (SELECT seq, body FROM events
                   WHERE $1::text IS NULL OR node_id = $1 ORDER BY seq DESC LIMIT $2) r ORDER BY seq",
                &[&node, &limit],
            )
            .await?;
        let newest: Option<i64> = tx.query_one("SELECT max(seq) FROM events", &[]).await?.try_get(0)?;
        tx.commit().await?;
        let (events, _) = decode(rows)?;
        Ok((events, Cursor { log: 0, at: newest.and_then(|s| u64::try_from(s).ok()).unwrap_or(0) }))
    })
    .await
}

/// The events (of `node`, or all) after `cursor`, which moves past every
/// event read (of any node).
pub async fn follow(db: &Db, cursor: &mut Cursor, node: Option<&str>) -> Result<Vec<Event>, StoreError> {
    let after = i64::try_from(cursor.at).unwrap_or(i64::MAX);
    let (events, last) = db
        .call(db.settings.operator_timeout, async |client| {
            let tx = client
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await?;
            let rows = tx
                .query(
                    "SELECT seq, body FROM events WHERE seq > $1 AND ($2::text IS NULL OR node_id = $2) ORDER BY seq",
                    &[&after, &node],
                )
                .await?;
            let newest: Option<i64> = tx.query_one("SELECT max(seq) FROM events", &[]).await?.try_get(0)?;
            tx.commit().await?;
            let (events, _) = decode(rows)?;
            Ok((events, newest.and_then(|s| u64::try_from(s).ok()).unwrap_or(0)))
        })
        .await?;
    cursor.at = cursor.at.max(last);
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

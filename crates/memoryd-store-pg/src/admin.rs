//! The operator's side of the fleet database: `memoryctl fleet
//! hosts|settings|release|leave|migrate`, `memoryctl store import`, the
//! per-host sweep record and `verify`'s check. Each runs within
//! `postgres.operator_timeout`.

use crate::db::{Db, Failure};
use crate::mail;
use crate::migrate::{MIGRATION_LOCK, Migration, Schema};
use crate::supervisor::{Hint, Shared};
use crate::tx;
use memoryd_core::config::ClientVersion;
use memoryd_core::peers::{Inbox, Links};
use memoryd_core::presence::{Event, Refusal, Revocation};
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;
use memoryd_proto::status::SweepStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// The host-down threshold when the settings row is not there yet.
const HOST_OFFLINE_AFTER: &str = "COALESCE((SELECT host_offline_after FROM fleet_settings), interval '90 s')";

/// One row of `memoryctl fleet hosts`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRow {
    pub host: String,
    pub daemon_version: String,
    pub schema_version: i32,
    /// How long ago the host last flushed or published, by the
    /// database's clock.
    pub last_seen_ms: i64,
    /// Running (a boot id) and seen within `host_offline_after`.
    pub up: bool,
    /// The personalities it owns and has present.
    pub peers: Vec<String>,
}

/// A change of `fleet_settings` (`memoryctl fleet settings`): each field
/// set is changed, the others kept.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsChange {
    /// A new version floor, `MAJOR.MINOR`.
    pub min_client_version: Option<String>,
    /// Removes the floor.
    pub no_floor: bool,
    pub degraded_after: Option<Duration>,
    pub offline_after: Option<Duration>,
    pub inbox_capacity: Option<usize>,
}

/// A personality a host cannot have: another host owns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameConflict {
    pub personality: String,
    pub host: String,
}

/// What `memoryctl store import` did or would do.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Import {
    /// Written (`--apply`), or only counted.
    pub applied: bool,
    /// Personalities the database did not know, added as this host's and
    /// not present (its next publish marks those in its map present).
    pub peers_added: Vec<String>,
    pub links: usize,
    pub mailboxes: usize,
    pub waiting: usize,
    pub revocations: usize,
    /// Left out: their links and mailbox stay in `S/store/`.
    pub conflicts: Vec<NameConflict>,
}

fn refuse(kind: ErrorKind, message: String) -> Failure {
    Failure::Store(StoreError::Refused(Refusal { kind, message, details: None }))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub async fn fleet_hosts(db: &Db) -> Result<Vec<HostRow>, StoreError> {
    db.call(db.settings.operator_timeout, async |c| -> Result<_, Failure> {
        let rows = c
            .query(
                &format!(
                    "SELECT h.host_id, h.daemon_version, h.schema_version,
                            (extract(epoch FROM now() - h.last_seen_at) * 1000)::bigint,
                            h.boot_id IS NOT NULL AND now() - h.last_seen_at < {HOST_OFFLINE_AFTER},
                            ARRAY(SELECT p.personality FROM peers p WHERE p.host_id = h.host_id AND p.present
                                   ORDER BY p.personality COLLATE \"C\")
                       FROM hosts h ORDER BY h.host_id"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| HostRow {
                host: r.get(0),
                daemon_version: r.get(1),
                schema_version: r.get(2),
                last_seen_ms: r.get(3),
                up: r.get(4),
                peers: r.get(5),
            })
            .collect())
    })
    .await
}

/// Updates the fleet's settings and tells every host: a raised floor makes
/// sessions on every host read-only at their next write.
pub async fn update_settings(db: &Db, change: &SettingsChange) -> Result<(), StoreError> {
    let invalid =
        |message: String| StoreError::Refused(Refusal { kind: ErrorKind::RequestInvalid, message, details: None });
    if change.no_floor && change.min_client_version.is_some() {
        return Err(invalid("give either a new floor or --no-floor, not both".into()));
    }
    let floor = match &change.min_client_version {
        Some(v) => {
            Some(v.parse::<ClientVersion>().map_err(|e| invalid(format!("min_client_version: {e}")))?.to_string())
        }
        None => None,
    };
    let capacity = match change.inbox_capacity {
        Some(0) => return Err(invalid("inbox_capacity must be at least 1".into())),
        Some(n) => Some(i32::try_from(n).map_err(|_| invalid(format!("inbox_capacity {n} is too large")))?),
        None => None,
    };
    let set_floor = floor.is_some() || change.no_floor;
    let degraded = change.degraded_after.map(millis);
    let offline = change.offline_after.map(millis);
    db.call(db.settings.operator_timeout, async |c| -> Result<(), Failure> {
        let tx = c.transaction().await?;
        tx.execute("INSERT INTO fleet_settings (id) VALUES (true) ON CONFLICT DO NOTHING", &[]).await?;
        let row = tx
            .query_one(
                "UPDATE fleet_settings SET
                   min_client_version = CASE WHEN $1 THEN $2 ELSE min_client_version END,
                   degraded_after = COALESCE($3::bigint * interval '1 ms', degraded_after),
                   offline_after = COALESCE($4::bigint * interval '1 ms', offline_after),
                   inbox_capacity = COALESCE($5, inbox_capacity),
                   updated_at = now()
                 RETURNING offline_after > degraded_after, offline_after::text, degraded_after::text",
                &[&set_floor, &floor, &degraded, &offline, &capacity],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Err(refuse(
                ErrorKind::RequestInvalid,
                format!(
                    "offline_after ({}) must be longer than degraded_after ({}); nothing was changed",
                    row.get::<_, String>(1),
                    row.get::<_, String>(2)
                ),
            ));
        }
        crate::supervisor::notify(&tx, &db.settings.schema, &Hint::Settings).await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// `memoryctl fleet leave`: every personality of this host `present =
/// false` (deleting nothing), then each of its active sessions offline
/// with `explicit_shutdown`, one change each. The personalities released.
pub async fn leave(db: &Db, shared: &Shared, now: SystemTime) -> Result<(Vec<String>, Vec<Event>), StoreError> {
    let me = db.host_id.as_str();
    let (released, nodes) = db
        .call(db.settings.operator_timeout, async |c| -> Result<_, Failure> {
            let tx = c.transaction().await?;
            let rows = tx
                .query(
                    "UPDATE peers SET present = false, updated_at = now() WHERE host_id = $1 AND present
                      RETURNING personality",
                    &[&me],
                )
                .await?;
            let released: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            for personality in &released {
                crate::supervisor::notify(&tx, &db.settings.schema, &Hint::Peer { personality: personality.clone() })
                    .await?;
            }
            let nodes = tx
                .query(
                    "SELECT DISTINCT node_id FROM runtime_node_attachments
                      WHERE host_id = $1 AND state IN ('registering','online','degraded') ORDER BY node_id",
                    &[&me],
                )
                .await?;
            tx.commit().await?;
            Ok((released, nodes.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()))
        })
        .await?;
    shared.registry.invalidate();
    let mut events = Vec::new();
    for node in &nodes {
        match crate::presence::detach(db, shared, node, None, now).await {
            Ok(e) => events.extend(e),
            // Detached meanwhile by its own session end.
            Err(StoreError::Refused(r)) => tracing::debug!(node, reason = %r.message, "not detached"),
            Err(e) => return Err(e),
        }
    }
    Ok((released, events))
}

/// `memoryctl fleet migrate --contract`: applies this binary's pending
/// steps and `extra` ones, contract steps included, refused while a live
/// host runs a schema below the new floor (named). The check and the
/// steps run under the migration lock, so no host starts in between.
pub async fn migrate_contract(db: &Db, extra: &[Migration]) -> Result<Schema, StoreError> {
    let steps: Vec<Migration> = crate::migrate::steps().iter().chain(extra).copied().collect();
    let schema = db.settings.schema.as_str();
    db.call(db.settings.operator_timeout, async |c| -> Result<Schema, Failure> {
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        let result = async {
            let row = c
                .query_one("SELECT COALESCE(max(version), 0), COALESCE(max(compat_floor), 0) FROM schema_migrations", &[])
                .await?;
            let (version, floor): (i32, i32) = (row.get(0), row.get(1));
            let new_floor = steps.iter().filter(|m| m.version > version).map(|m| m.compat_floor).max().unwrap_or(floor);
            if new_floor > floor {
                let old = c
                    .query(
                        &format!(
                            "SELECT host_id, schema_version FROM hosts
                              WHERE boot_id IS NOT NULL AND now() - last_seen_at < {HOST_OFFLINE_AFTER}
                                AND schema_version < $1 ORDER BY host_id"
                        ),
                        &[&new_floor],
                    )
                    .await?;
                if !old.is_empty() {
                    let names: Vec<String> =
                        old.iter().map(|r| format!("{} (schema {})", r.get::<_, String>(0), r.get::<_, i32>(1))).collect();
                    return Err(refuse(
                        ErrorKind::StoreIncompatible,
                        format!(
                            "the contract step needs schema {new_floor} on every running host; {} still run(s) an older one: update it (memoryctl update) or stop it first",
                            names.join(", ")
                        ),
                    ));
                }
            }
            crate::migrate::migrate(c, schema, &db.host_id, &steps, true).await
        }
        .await;
        c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        result
    })
    .await
}

/// What `store import` copies from this host's file store: read before the
/// transaction.
pub struct FileState {
    pub links: Links,
    pub mailboxes: Vec<(String, Inbox)>,
    pub revoked: BTreeMap<String, Revocation>,
}

impl FileState {
    pub fn read(file: &memoryd_core::store::FileStore) -> Result<FileState, StoreError> {
        use memoryd_core::store::{PeerStore, PresenceStore};
        Ok(FileState { links: file.links()?, mailboxes: file.mailboxes()?, revoked: file.presence()?.revoked.clone() })
    }
}

/// `memoryctl store import [--apply]`: this host's links, mailboxes (in
/// order, new `seq`) and revocations, in one transaction; without `apply`
/// the same transaction is rolled back, so the counts are exact. A
/// personality another host owns is a conflict and left out.
pub async fn import(db: &Db, shared: &Shared, file: &FileState, apply: bool) -> Result<Import, StoreError> {
    let me = db.host_id.as_str();
    let mut names: BTreeSet<&str> = file.mailboxes.iter().map(|(p, _)| p.as_str()).collect();
    for (a, b) in &file.links.pairs {
        names.insert(a);
        names.insert(b);
    }
    let names: Vec<&str> = names.into_iter().collect();
    let result = db
        .call(db.settings.operator_timeout, async |c| -> Result<Import, Failure> {
            let tx = c.transaction().await?;
            let rows = tx
                .query(
                    "SELECT personality, host_id FROM peers WHERE personality = ANY($1)
                      ORDER BY personality COLLATE \"C\" FOR NO KEY UPDATE",
                    &[&names],
                )
                .await?;
            let owners: BTreeMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let mut out = Import { applied: apply, ..Import::default() };
            for name in &names {
                match owners.get(*name) {
                    Some(host) if host != me => {
                        out.conflicts.push(NameConflict { personality: (*name).to_owned(), host: host.clone() })
                    }
                    Some(_) => {}
                    None => {
                        tx.execute(
                            "INSERT INTO peers (personality, host_id, runtimes, present) VALUES ($1, $2, '{}', false)",
                            &[name, &me],
                        )
                        .await?;
                        out.peers_added.push((*name).to_owned());
                    }
                }
            }
            let ours = |p: &str| !out.conflicts.iter().any(|c| c.personality == p);
            let mut links = 0;
            for (a, b) in &file.links.pairs {
                if ours(a) && ours(b) {
                    links += tx
                        .execute(
                            "INSERT INTO links (a, b) VALUES (least($1, $2), greatest($1, $2)) ON CONFLICT DO NOTHING",
                            &[a, b],
                        )
                        .await?;
                }
            }
            out.links = usize::try_from(links).unwrap_or(usize::MAX);
            for (p, inbox) in &file.mailboxes {
                if ours(p) {
                    out.waiting += mail::import(&tx, p, inbox, mail::Clock::of(db)).await?;
                    out.mailboxes += 1;
                }
            }
            for (node, r) in &file.revoked {
                let by = serde_json::to_value(r.revoked_by)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "core".into());
                let at = db.db_time(r.at);
                let n = tx
                    .execute(
                        "INSERT INTO revocations (node_id, revoked_by, reason, revoked_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (node_id) DO NOTHING",
                        &[node, &by, &r.reason, &at],
                    )
                    .await?;
                out.revocations += usize::try_from(n).unwrap_or(0);
            }
            if apply {
                crate::supervisor::notify(&tx, &db.settings.schema, &Hint::Roster).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(out)
        })
        .await?;
    if apply {
        shared.registry.invalidate();
    }
    Ok(result)
}

pub async fn record_sweep(db: &Db, sweep: &SweepStatus) -> Result<(), StoreError> {
    let body =
        serde_json::to_value(sweep).map_err(|e| db.answer(tx::internal(format!("a sweep does not serialize: {e}"))))?;
    db.call(db.settings.operator_timeout, async |c| -> Result<(), Failure> {
        c.execute(
            "INSERT INTO host_sweeps (host_id, body) VALUES ($1, $2) ON CONFLICT (host_id) DO UPDATE SET body = excluded.body",
            &[&db.host_id, &body],
        )
        .await?;
        Ok(())
    })
    .await
}

pub async fn last_sweep(db: &Db) -> Result<Option<SweepStatus>, StoreError> {
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        let row = c.query_opt("SELECT body FROM host_sweeps WHERE host_id = $1", &[&db.host_id]).await?;
        match row {
            Some(r) => serde_json::from_value(r.get(0))
                .map(Some)
                .map_err(|e| tx::internal(format!("this host's last sweep does not load: {e}"))),
            None => Ok(None),
        }
    })
    .await
}

/// `verify`: the schema, what the database holds, and every mailbox loaded
/// with its real types.
pub async fn check(db: &Db) -> Result<String, StoreError> {
    db.call(db.settings.operator_timeout, async |c| -> Result<String, Failure> {
        let r = c
            .query_one(
                "SELECT (SELECT COALESCE(max(version), 0) FROM schema_migrations),
                        (SELECT COALESCE(max(compat_floor), 0) FROM schema_migrations),
                        (SELECT count(*) FROM hosts), (SELECT count(*) FROM peers),
                        (SELECT count(*) FROM peers WHERE present), (SELECT count(*) FROM links),
                        (SELECT count(*) FROM mail WHERE box = 'waiting')",
                &[],
            )
            .await?;
        let mailboxes = mail::check_all(&**c, mail::Clock::of(db)).await?;
        Ok(format!(
            "schema {} (floor {}); {} host(s), {} peer(s) ({} present), {} link(s), {} waiting message(s); {mailboxes} mailbox(es) load",
            r.get::<_, i32>(0),
            r.get::<_, i32>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, i64>(6),
        ))
    })
    .await
}

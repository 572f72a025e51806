//! Presence on the fleet database (spec 40 through spec 80): each change
//! locks the node's presence row, loads the node's rows into the domain's
//! `Presence`, runs the domain function and writes the difference with its
//! events; heartbeats that change nothing but the time are kept in memory
//! and flushed once per sweep; the fleet-wide demotion runs under a
//! try-advisory-lock.
//!
//! Times: the domain runs in this host's clock (the caller's `now`);
//! stored times are in the database's clock, converted by the measured
//! skew both ways ([`Db::db_time`], [`Db::host_time`]), so a host whose
//! clock is off still ages every session by the same rule.
//!
//! `runtime_node_presence` is the node's lock row; its `last_heartbeat_at`
//! and `health_state` mirror the node's active attachment (set by every
//! change, moved forward by the flush) and serve the demotion's search
//! only. The loader reads the attachment rows' own `last_heartbeat_at`,
//! which every change and the flush write too.
//!
//! Pids: a recorded pid means something only on the host that recorded
//! it. Rows of other hosts are handed to the domain without their pid (and
//! get it back before the difference is written), so this host never
//! probes them: their sessions are aged by heartbeats alone and never
//! taken over by the dead-pid or same-process rule (another session's
//! attach gets `runtimenode.attach_conflict`, spec 80).

use crate::db::{Db, Failure};
use crate::events;
use crate::roster_cache::{NodeState, Reload, Row};
use crate::supervisor::{Hint, Kept, Shared, notify};
use memoryd_core::config::ClientVersion;
use memoryd_core::fleet::names::split_node_id;
use memoryd_core::presence::{
    AttachParams, Attached, Attachment, Event, Health, Presence, Probe, Refusal, Revocation, Revoker, RosterRow, Rules,
    SoftBeats, State,
};
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;
use memoryd_proto::presence::CapabilityUpdated;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Serializes the fleet-wide demotion and prune: a host that does not get
/// it skips them this tick.
pub const DEMOTION_LOCK: i64 = 8_000_000_001;

/// Past this many moved nodes one `{"k":"roster"}` replaces the
/// per-node notifications.
const NOTIFY_EACH_UP_TO: usize = 64;

/// A domain value as its stored text (`"online"`, …).
fn text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: String) -> Result<T, Failure> {
    serde_json::from_value(Value::String(text.clone())).map_err(|e| {
        Failure::Store(StoreError::Unavailable {
            kind: ErrorKind::Internal,
            message: format!("the fleet database holds a {what} {text:?} this memoryd does not know: {e}"),
        })
    })
}

/// Loads the rows and revocations of `nodes` (all of them with None), in
/// this host's clock, each node's rows oldest first.
async fn load<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    db: &Db,
    nodes: Option<&[String]>,
) -> Result<BTreeMap<String, NodeState>, Failure> {
    let filter: Option<Vec<String>> = nodes.map(<[String]>::to_vec);
    let rows = client
        .query(
            "SELECT node_id, id, session_id, host_id, capabilities, client_version, state, health, pid, pid_start,
                    attached_at, last_heartbeat_at, updated_at
               FROM runtime_node_attachments WHERE $1::text[] IS NULL OR node_id = ANY($1)
              ORDER BY node_id, attached_at, id",
            &[&filter],
        )
        .await?;
    let mut out: BTreeMap<String, NodeState> = BTreeMap::new();
    for row in rows {
        let node: String = row.try_get(0)?;
        let capabilities = match row.try_get::<_, Value>(4)? {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let att = Attachment {
            attachment_id: row.try_get(1)?,
            node_id: node.clone(),
            session_id: row.try_get(2)?,
            state: parse("state", row.try_get(6)?)?,
            health: parse("health", row.try_get(7)?)?,
            client_version: row.try_get(5)?,
            capabilities,
            pid: row.try_get(8)?,
            pid_start: row.try_get(9)?,
            attached_at: db.host_time(row.try_get(10)?),
            last_heartbeat_at: db.host_time(row.try_get(11)?),
            updated_at: db.host_time(row.try_get(12)?),
        };
        out.entry(node).or_default().rows.push(Row { host: row.try_get(3)?, att });
    }
    for (node, revocation) in load_revocations(client, db, nodes).await? {
        out.entry(node).or_default().revoked = Some(revocation);
    }
    Ok(out)
}

async fn load_revocations<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    db: &Db,
    nodes: Option<&[String]>,
) -> Result<BTreeMap<String, Revocation>, Failure> {
    let filter: Option<Vec<String>> = nodes.map(<[String]>::to_vec);
    let rows = client
        .query(
            "SELECT node_id, revoked_by, reason, revoked_at FROM revocations
              WHERE $1::text[] IS NULL OR node_id = ANY($1)",
            &[&filter],
        )
        .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let revocation = Revocation {
            revoked_by: parse("revoker", row.try_get(1)?)?,
            reason: row.try_get(2)?,
            at: db.host_time(row.try_get(3)?),
        };
        out.insert(row.try_get(0)?, revocation);
    }
    Ok(out)
}

/// Reloads what the roster copy needs (everything, or the dirty nodes).
pub async fn reload(client: &tokio_postgres::Client, db: &Db, shared: &Shared) -> Result<(), Failure> {
    let (need, at) = {
        let roster = shared.roster();
        (roster.reload_needed(), roster.generation())
    };
    let names = match &need {
        Reload::Nothing => return Ok(()),
        Reload::All => None,
        Reload::Nodes(names) => Some(names.as_slice()),
    };
    let loaded = load(client, db, names).await?;
    shared.roster().install(at, names, loaded);
    Ok(())
}

/// Makes the roster copy current before a read; with the store not up, a
/// copy loaded once is served as it is (spec 80: answered from the cache).
async fn fresh(db: &Db, shared: &Shared) -> Result<(), StoreError> {
    if shared.roster().reload_needed() == Reload::Nothing {
        return Ok(());
    }
    let r = db.call(db.settings.call_timeout, async |client| reload(client, db, shared).await).await;
    match r {
        Err(e) if shared.roster().loaded() => {
            tracing::debug!(error = %e, "roster served from the cache");
            Ok(())
        }
        r => r,
    }
}

/// The node states as the domain's presence: rows of other hosts without
/// their pid (kept aside by attachment id).
fn to_domain(
    states: &BTreeMap<String, NodeState>,
    host: &str,
    revoked: BTreeMap<String, Revocation>,
) -> (Presence, HashMap<String, Option<i32>>) {
    let mut presence = Presence { attachments: Vec::new(), revoked };
    let mut masked = HashMap::new();
    for (node, state) in states {
        for row in &state.rows {
            let mut att = row.att.clone();
            if row.host != host {
                masked.insert(att.attachment_id.clone(), att.pid.take());
            }
            presence.attachments.push(att);
        }
        if let Some(r) = &state.revoked {
            presence.revoked.insert(node.clone(), r.clone());
        }
    }
    (presence, masked)
}

/// The domain's presence back as node states, for the nodes in `scope`:
/// hosts and masked pids restored; new rows (and the row of `claimed`, a
/// session this host attached) are this host's; a new row's id made unique
/// in the fleet (the domain's id is a time in milliseconds). Returns the
/// renames (domain id → stored id).
fn from_domain(
    presence: Presence,
    before: &BTreeMap<String, NodeState>,
    masked: &HashMap<String, Option<i32>>,
    host: &str,
    scope: &BTreeSet<String>,
    claimed: Option<(&str, &str)>,
) -> (BTreeMap<String, NodeState>, HashMap<String, String>) {
    let hosts: HashMap<&str, &str> =
        before.values().flat_map(|s| s.rows.iter()).map(|r| (r.att.attachment_id.as_str(), r.host.as_str())).collect();
    let mut after: BTreeMap<String, NodeState> = scope.iter().map(|n| (n.clone(), NodeState::default())).collect();
    let mut renames = HashMap::new();
    for mut att in presence.attachments {
        let Some(state) = after.get_mut(&att.node_id) else { continue };
        let ours = claimed.is_some_and(|(n, s)| n == att.node_id && s == att.session_id);
        let row_host = match hosts.get(att.attachment_id.as_str()) {
            Some(h) if !ours => (*h).to_owned(),
            Some(_) => host.to_owned(),
            None => {
                let mut id = format!("{}.{}", att.attachment_id, att.node_id);
                let mut n = 1;
                while hosts.contains_key(id.as_str()) {
                    n += 1;
                    id = format!("{}.{}.{n}", att.attachment_id, att.node_id);
                }
                renames.insert(std::mem::replace(&mut att.attachment_id, id.clone()), id);
                host.to_owned()
            }
        };
        if row_host != host
            && att.pid.is_none()
            && let Some(pid) = masked.get(&att.attachment_id)
        {
            att.pid = *pid;
        }
        state.rows.push(Row { host: row_host, att });
    }
    for (node, state) in after.iter_mut() {
        state.revoked = presence.revoked.get(node).cloned();
    }
    (after, renames)
}

/// What the notification and the lock row say of a node.
fn node_state(state: &NodeState) -> (&'static str, Option<&Attachment>) {
    let active = state.rows.iter().map(|r| &r.att).find(|a| a.state.is_active());
    let name = if state.revoked.is_some() {
        "revoked"
    } else {
        match active.map(|a| a.state) {
            Some(State::Degraded) => "degraded",
            Some(State::Registering) => "registering",
            Some(_) => "online",
            None => "offline",
        }
    };
    (name, active)
}

/// The lock row's mirror of a node's active attachment.
fn lock_row_health(active: Option<&Attachment>) -> &'static str {
    match active.map(|a| a.state) {
        Some(State::Degraded) => "degraded",
        Some(_) => "online",
        None => "offline",
    }
}

/// Writes the difference of a change (rows, revocations, lock rows) in a
/// few statements whatever the number of nodes, then notifies; the nodes
/// that changed. Rows leave the active states before others enter them,
/// for the unique index on active rows. `origin`: this process's boot id,
/// carried by the hints.
async fn write_all(
    tx: &deadpool_postgres::Transaction<'_>,
    db: &Db,
    origin: &str,
    before: &BTreeMap<String, NodeState>,
    after: &BTreeMap<String, NodeState>,
) -> Result<Vec<String>, Failure> {
    let empty = NodeState::default();
    let mut moved = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    let mut upserts: Vec<&Row> = Vec::new();
    let (mut lock_nodes, mut lock_health, mut lock_beat) = (Vec::new(), Vec::new(), Vec::new());
    for (node, new) in after {
        let old = before.get(node).unwrap_or(&empty);
        if old == new {
            continue;
        }
        let old_rows: HashMap<&str, &Row> = old.rows.iter().map(|r| (r.att.attachment_id.as_str(), r)).collect();
        let new_ids: BTreeSet<&str> = new.rows.iter().map(|r| r.att.attachment_id.as_str()).collect();
        gone.extend(old_rows.keys().filter(|id| !new_ids.contains(*id)).map(|id| (*id).to_owned()));
        upserts.extend(new.rows.iter().filter(|r| old_rows.get(r.att.attachment_id.as_str()) != Some(r)));
        if old.revoked != new.revoked {
            write_revocation(tx, db, node, new.revoked.as_ref()).await?;
        }
        let (_, active) = node_state(new);
        lock_nodes.push(node.clone());
        lock_health.push(lock_row_health(active));
        lock_beat.push(active.map(|a| db.db_time(a.last_heartbeat_at)));
        moved.push(node.clone());
    }
    if moved.is_empty() {
        return Ok(moved);
    }
    if !gone.is_empty() {
        tx.execute("DELETE FROM runtime_node_attachments WHERE id = ANY($1)", &[&gone]).await?;
    }
    if !upserts.is_empty() {
        upsert_rows(tx, db, upserts).await?;
    }
    tx.execute(
        "UPDATE runtime_node_presence p SET health_state = u.health,
                last_heartbeat_at = COALESCE(u.beat, p.last_heartbeat_at)
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(node_id, health, beat)
          WHERE p.node_id = u.node_id",
        &[&lock_nodes, &lock_health, &lock_beat],
    )
    .await?;
    let schema = &db.settings.schema;
    if moved.len() > NOTIFY_EACH_UP_TO {
        notify(tx, schema, &Hint::Roster).await?;
    } else {
        let payloads: Vec<String> = moved
            .iter()
            .map(|node| {
                let (state, _) = node_state(&after[node]);
                let hint =
                    Hint::Presence { node: node.clone(), state: state.to_owned(), origin: Some(origin.to_owned()) };
                serde_json::to_string(&hint).unwrap_or_default()
            })
            .collect();
        tx.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS u(p, n) ORDER BY n",
            &[&crate::supervisor::channel(schema), &payloads],
        )
        .await?;
    }
    Ok(moved)
}

/// Inserts new rows and updates changed ones, in one statement, in the
/// order given after the inactive ones first.
async fn upsert_rows(tx: &deadpool_postgres::Transaction<'_>, db: &Db, mut rows: Vec<&Row>) -> Result<(), Failure> {
    rows.sort_by_key(|r| r.att.state.is_active());
    let col = |f: &dyn Fn(&Row) -> String| rows.iter().map(|r| f(r)).collect::<Vec<String>>();
    let ids = col(&|r| r.att.attachment_id.clone());
    let nodes = col(&|r| r.att.node_id.clone());
    let sessions = col(&|r| r.att.session_id.clone());
    let hosts = col(&|r| r.host.clone());
    let versions = col(&|r| r.att.client_version.clone());
    let states = col(&|r| text(&r.att.state));
    let healths = col(&|r| text(&r.att.health));
    let capabilities: Vec<Value> = rows.iter().map(|r| Value::Object(r.att.capabilities.clone())).collect();
    let pids: Vec<Option<i32>> = rows.iter().map(|r| r.att.pid).collect();
    let starts: Vec<Option<String>> = rows.iter().map(|r| r.att.pid_start.clone()).collect();
    let time = |f: &dyn Fn(&Attachment) -> SystemTime| rows.iter().map(|r| db.db_time(f(&r.att))).collect::<Vec<_>>();
    let attached = time(&|a| a.attached_at);
    let beats = time(&|a| a.last_heartbeat_at);
    let updated = time(&|a| a.updated_at);
    tx.execute(
        "INSERT INTO runtime_node_attachments (id, node_id, session_id, host_id, capabilities, client_version, state,
                health, pid, pid_start, attached_at, last_heartbeat_at, updated_at)
         SELECT u.id, u.node_id, u.session_id, u.host_id, u.capabilities, u.client_version, u.state, u.health, u.pid,
                u.pid_start, u.attached_at, u.last_heartbeat_at, u.updated_at
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::text[], $8::text[],
                       $9::int4[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[])
                WITH ORDINALITY AS u(id, node_id, session_id, host_id, capabilities, client_version, state, health, pid,
                                     pid_start, attached_at, last_heartbeat_at, updated_at, n)
          ORDER BY u.n
         ON CONFLICT (id) DO UPDATE SET session_id = EXCLUDED.session_id, host_id = EXCLUDED.host_id,
                capabilities = EXCLUDED.capabilities, client_version = EXCLUDED.client_version,
                state = EXCLUDED.state, health = EXCLUDED.health, pid = EXCLUDED.pid, pid_start = EXCLUDED.pid_start,
                attached_at = EXCLUDED.attached_at, last_heartbeat_at = EXCLUDED.last_heartbeat_at,
                updated_at = EXCLUDED.updated_at",
        &[
            &ids,
            &nodes,
            &sessions,
            &hosts,
            &capabilities,
            &versions,
            &states,
            &healths,
            &pids,
            &starts,
            &attached,
            &beats,
            &updated,
        ],
    )
    .await?;
    Ok(())
}

async fn write_revocation(
    tx: &deadpool_postgres::Transaction<'_>,
    db: &Db,
    node: &str,
    revoked: Option<&Revocation>,
) -> Result<(), Failure> {
    match revoked {
        None => tx.execute("DELETE FROM revocations WHERE node_id = $1", &[&node]).await?,
        Some(r) => {
            tx.execute(
                "INSERT INTO revocations (node_id, revoked_by, reason, revoked_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node_id) DO UPDATE SET revoked_by = EXCLUDED.revoked_by, reason = EXCLUDED.reason,
                   revoked_at = EXCLUDED.revoked_at",
                &[&node, &text(&r.revoked_by), &r.reason, &db.db_time(r.at)],
            )
            .await?
        }
    };
    Ok(())
}

/// Commits a change whose new node states are staged in the roster copy
/// first: a change in flight is never overwritten by a reload, and one
/// that did not commit (or was abandoned at its deadline) leaves its nodes
/// to be reloaded.
async fn commit_staged(
    tx: deadpool_postgres::Transaction<'_>,
    shared: &Shared,
    staged: Vec<(String, NodeState)>,
) -> Result<(), Failure> {
    struct Staged<'a> {
        shared: &'a Shared,
        nodes: Vec<String>,
        committed: bool,
    }
    impl Drop for Staged<'_> {
        fn drop(&mut self) {
            let mut roster = self.shared.roster();
            for node in &self.nodes {
                roster.finish(node, self.committed);
            }
        }
    }
    let mut guard = Staged { shared, nodes: Vec::with_capacity(staged.len()), committed: false };
    {
        let mut roster = shared.roster();
        for (node, state) in staged {
            roster.stage(&node, state);
            guard.nodes.push(node);
        }
    }
    tx.commit().await?;
    guard.committed = true;
    Ok(())
}

/// How a change scopes its node.
struct Change<'a> {
    node: &'a str,
    now: SystemTime,
    /// Every revocation loaded (an operator's refusal lists them).
    all_revocations: bool,
    /// An attach: the session that becomes this host's, and the
    /// personality's ownership check.
    attach: Option<(&'a str, bool)>,
    deadline: Duration,
}

/// One presence change of spec 80: lock the node, load it, run `f`,
/// write the difference and the events, notify, commit, update the copy.
async fn change<T>(
    db: &Db,
    shared: &Shared,
    c: Change<'_>,
    f: impl Fn(&mut Presence, bool) -> Result<(T, Vec<Event>), Refusal>,
) -> Result<(T, Vec<Event>, HashMap<String, String>), StoreError> {
    let node = c.node.to_owned();
    let nodes = [node.clone()];
    let scope: BTreeSet<String> = nodes.iter().cloned().collect();
    let attempt = async |client: &mut deadpool_postgres::ClientWrapper| {
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO runtime_node_presence (node_id, last_heartbeat_at, health_state) VALUES ($1, $2, 'offline')
             ON CONFLICT DO NOTHING",
            &[&node, &db.db_time(c.now)],
        )
        .await?;
        tx.query_one("SELECT 1 FROM runtime_node_presence WHERE node_id = $1 FOR UPDATE", &[&node]).await?;
        let owner = match c.attach {
            Some(_) => owner(&tx, db, &node).await?,
            None => Ownership::Ours,
        };
        let before = load(&*tx, db, Some(&nodes)).await?;
        let revoked = if c.all_revocations { load_revocations(&*tx, db, None).await? } else { BTreeMap::new() };
        let (mut presence, masked) = to_domain(&before, &db.host_id, revoked);
        let known = c.attach.is_none_or(|(_, known)| known);
        let (value, events) = match (f(&mut presence, matches!(owner, Ownership::Ours)), &owner) {
            (Err(r), Ownership::Other(host)) if known && r.kind == ErrorKind::RuntimenodeUnknownNode => {
                return Err(Failure::from(name_taken(&node, host)));
            }
            (Err(mut r), Ownership::Missing) if known && r.kind == ErrorKind::RuntimenodeUnknownNode => {
                r.message = format!(
                    "{node} is not in the fleet registry: this host has not published its fleet map with it yet \
                     (the daemon publishes it at start and on every change)"
                );
                return Err(Failure::from(r));
            }
            (r, _) => r?,
        };
        let claimed = c.attach.map(|(session, _)| (node.as_str(), session));
        let (after, renames) = from_domain(presence, &before, &masked, &db.host_id, &scope, claimed);
        let moved = write_all(&tx, db, &shared.boot_id, &before, &after).await?;
        events::insert(&tx, &db.host_id, &events).await?;
        if c.attach.is_some() {
            crate::db::pause_point("attach").await;
        }
        let staged = after.into_iter().filter(|(n, _)| moved.contains(n)).collect();
        commit_staged(tx, shared, staged).await?;
        Ok((value, events, renames))
    };
    // The unique index on active rows is the backstop of the node lock: a
    // violation (a writer that skipped the lock) is retried once, then
    // answered as a conflict.
    db.call(c.deadline, async |client| match attempt(client).await {
        Err(e) if second_active_row(&e) => match attempt(client).await {
            Err(e) if second_active_row(&e) => Err(Failure::from(Refusal {
                kind: ErrorKind::RuntimenodeAttachConflict,
                message: format!("{node} got a second active session from a concurrent change; try again"),
                details: None,
            })),
            r => r,
        },
        r => r,
    })
    .await
}

fn second_active_row(e: &Failure) -> bool {
    matches!(e, Failure::Db(e) if e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && d.constraint() == Some("idx_node_attachments_active")
    }))
}

/// Who owns a node's personality in the fleet registry.
enum Ownership {
    Ours,
    Other(String),
    Missing,
}

/// Reads (and share-locks, so no claim moves it meanwhile) the owner of
/// the node's personality.
async fn owner(tx: &deadpool_postgres::Transaction<'_>, db: &Db, node: &str) -> Result<Ownership, Failure> {
    let Some((_, personality)) = split_node_id(node) else { return Ok(Ownership::Missing) };
    let row = tx.query_opt("SELECT host_id FROM peers WHERE personality = $1 FOR SHARE", &[&personality]).await?;
    Ok(match row {
        None => Ownership::Missing,
        Some(row) => {
            let host: String = row.try_get(0)?;
            if host == db.host_id { Ownership::Ours } else { Ownership::Other(host) }
        }
    })
}

fn name_taken(node: &str, host: &str) -> Refusal {
    let personality = split_node_id(node).map_or(node, |(_, p)| p);
    Refusal {
        kind: ErrorKind::PeerNameTaken,
        message: format!(
            "the personality {personality} belongs to host {host} in the fleet; a personality is unique in the fleet \
             (rename this host's peer, or `memoryctl fleet release {personality}` once {host} no longer runs it)"
        ),
        details: Some(serde_json::json!({"personality": personality, "owner": host})),
    }
}

/// `runtimenode.attach`: `known` (the local fleet map has the node) holds
/// only when this host also owns the personality in the fleet registry.
pub async fn attach(
    db: &Db,
    shared: &Shared,
    req: &AttachParams,
    known: bool,
    rules: &Rules,
    now: SystemTime,
    probe: Probe<'_>,
) -> Result<(Attached, Vec<Event>), StoreError> {
    let c = Change {
        node: &req.node_id,
        now,
        all_revocations: false,
        attach: Some((&req.session_id, known)),
        deadline: db.settings.call_timeout,
    };
    let (mut attached, events, renames) =
        change(db, shared, c, |p, owned| p.attach(req, known && owned, rules, now, probe)).await?;
    if let Some(id) = renames.get(&attached.attachment_id) {
        attached.attachment_id = id.clone();
    }
    Ok((attached, events))
}

/// A change of one node that is not an attach.
async fn simple<T>(
    db: &Db,
    shared: &Shared,
    node: &str,
    now: SystemTime,
    deadline: Duration,
    all_revocations: bool,
    f: impl Fn(&mut Presence) -> Result<(T, Vec<Event>), Refusal>,
) -> Result<(T, Vec<Event>), StoreError> {
    let c = Change { node, now, all_revocations, attach: None, deadline };
    let (value, events, _) = change(db, shared, c, |p, _| f(p)).await?;
    Ok((value, events))
}

/// A heartbeat: checked against the roster copy; one that changes nothing
/// but the time is kept in memory (written by the next sweep's flush), one
/// that moves a state is its own transaction.
pub async fn heartbeat(
    db: &Db,
    shared: &Shared,
    node: &str,
    session: Option<&str>,
    health: Health,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    fresh(db, shared).await?;
    if !shared.roster().loaded() {
        return Err(db.unavailable());
    }
    let built = shared.roster().built();
    match built.presence.soft_beat(node, session, health) {
        Ok(Some(session)) => {
            keep(shared, node, session, health, now);
            return Ok(Vec::new());
        }
        Ok(None) => {}
        Err(refusal) => return Err(StoreError::Refused(refusal)),
    }
    let deadline = db.settings.call_timeout;
    let ((), events) =
        simple(db, shared, node, now, deadline, false, |p| p.heartbeat(node, session, health, now).map(|e| ((), e)))
            .await?;
    Ok(events)
}

/// Keeps a beat: the last one per session wins (the roster shows it), the
/// flush never moves a stored time back.
fn keep(shared: &Shared, node: &str, session: &str, health: Health, now: SystemTime) {
    shared.kept().insert((node.to_owned(), session.to_owned()), (now, health));
}

/// Memory only: true when the beat was kept.
pub fn soft_heartbeat(
    shared: &Shared,
    node: &str,
    session: Option<&str>,
    health: Health,
    now: SystemTime,
    recheck: Duration,
) -> bool {
    let built = {
        let Ok(mut roster) = shared.roster.try_lock() else { return false };
        if !roster.trusted(node, shared.listening(), recheck) {
            return false;
        }
        roster.built()
    };
    let Some(session) = built.active.get(node).and_then(|&i| built.presence.soft_beat_at(i, node, session, health))
    else {
        return false;
    };
    keep(shared, node, session, health, now);
    true
}

pub async fn detach(
    db: &Db,
    shared: &Shared,
    node: &str,
    session: Option<&str>,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    let deadline = db.settings.call_timeout;
    let ((), events) =
        simple(db, shared, node, now, deadline, false, |p| p.detach(node, session, now).map(|e| ((), e))).await?;
    Ok(events)
}

pub async fn capability_update(
    db: &Db,
    shared: &Shared,
    node: &str,
    capabilities: &Map<String, Value>,
    health: Option<Health>,
    floor: Option<ClientVersion>,
    now: SystemTime,
) -> Result<(CapabilityUpdated, Vec<Event>), StoreError> {
    let deadline = db.settings.call_timeout;
    simple(db, shared, node, now, deadline, false, |p| p.capability_update(node, capabilities, health, floor, now))
        .await
}

/// An operator's change may wait longer than a hook's.
fn revoker_deadline(db: &Db, by: Revoker<'_>) -> Duration {
    match by {
        Revoker::Operator { .. } => db.settings.operator_timeout,
        Revoker::Core | Revoker::Birth => db.settings.call_timeout,
    }
}

pub async fn revoke(
    db: &Db,
    shared: &Shared,
    node: &str,
    by: Revoker<'_>,
    reason: Option<&str>,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    let deadline = revoker_deadline(db, by);
    let ((), events) =
        simple(db, shared, node, now, deadline, true, |p| p.revoke(node, by, reason, now).map(|e| ((), e))).await?;
    Ok(events)
}

pub async fn unrevoke(
    db: &Db,
    shared: &Shared,
    node: &str,
    by: Revoker<'_>,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    let deadline = revoker_deadline(db, by);
    let ((), events) =
        simple(db, shared, node, now, deadline, true, |p| p.unrevoke(node, by, now).map(|e| ((), e))).await?;
    Ok(events)
}

/// The kept beats as the domain's soft beats.
fn soft_beats(kept: &Kept) -> SoftBeats {
    kept.iter().map(|(k, (at, _))| (k.clone(), *at)).collect()
}

/// The sweep of spec 80: (1) flush the kept beats and a zero-age beat for
/// every own active session whose pid lives, in one statement without a
/// synchronous commit; (2) demote fleet-wide and (3) prune the events,
/// both under the demotion lock (another host holding it skips them).
pub async fn sweep(
    db: &Db,
    shared: &Shared,
    rules: &Rules,
    now: SystemTime,
    probe: Probe<'_>,
) -> Result<Vec<Event>, StoreError> {
    fresh(db, shared).await?;
    let kept = std::mem::take(&mut *shared.kept());
    let mut beats: Kept = kept.clone();
    let live = shared.roster().own_pids(&db.host_id);
    let mut alive = Vec::new();
    for (node, session, pid, start) in live {
        if probe(pid).as_deref() == Some(start.as_str()) {
            let entry = beats.entry((node.clone(), session)).or_insert((now, Health::Online));
            entry.0 = entry.0.max(now);
            alive.push(node);
        }
    }
    let flushed = match flush(db, shared, &beats).await {
        Ok(flushed) => flushed,
        Err(e) => {
            // Kept until written; newer beats that came meanwhile win.
            let mut now_kept = shared.kept();
            for (key, beat) in kept {
                now_kept.entry(key).or_insert(beat);
            }
            return Err(e);
        }
    };
    // A row the fleet demoted while its beats said online: live pids are
    // promoted by the domain's sweep below, kept beats by their heartbeat.
    let mut revive = Vec::new();
    let mut extra = Vec::new();
    for (node, session, state) in flushed {
        if state != "degraded" {
            continue;
        }
        if alive.contains(&node) {
            extra.push(node);
        } else if let Some((at, Health::Online)) = kept.get(&(node.clone(), session.clone())) {
            revive.push((node, session, *at));
        }
    }
    let mut events = demote(db, shared, rules, now, probe, &extra).await?;
    if let Some(since) = shared.take_outage() {
        events.extend(reattach_after_outage(db, shared, rules, now, probe, since).await);
    }
    let deadline = db.settings.call_timeout;
    for (node, session, at) in revive {
        let beat = |p: &mut Presence| p.heartbeat(&node, Some(&session), Health::Online, at).map(|e| ((), e));
        match simple(db, shared, &node, at, deadline, false, beat).await.map(|((), e)| e) {
            Ok(e) => events.extend(e),
            Err(e) => tracing::debug!(node = %node, error = %e, "a demoted session's kept beat was not replayed"),
        }
    }
    Ok(events)
}

/// After an outage (spec 80, "connection back"): every own session the
/// fleet ended while this host was cut off and whose process still lives
/// is attached again, unless another session of its node became active.
/// What cannot be re-attached comes back at its next hook.
async fn reattach_after_outage(
    db: &Db,
    shared: &Shared,
    rules: &Rules,
    now: SystemTime,
    probe: Probe<'_>,
    since: SystemTime,
) -> Vec<Event> {
    // Read from the database, not the copy: the notification of the
    // demotion may not have reached this host yet.
    let found = db
        .call(db.settings.call_timeout, async |client| {
            let rows = client
                .query(
                    "SELECT DISTINCT a.node_id FROM runtime_node_attachments a
                      WHERE a.host_id = $1 AND a.state = 'offline' AND a.updated_at >= $2
                        AND NOT EXISTS (SELECT 1 FROM runtime_node_attachments o WHERE o.node_id = a.node_id
                                          AND o.state IN ('registering','online','degraded'))",
                    &[&db.host_id, &db.db_time(since)],
                )
                .await?;
            let nodes: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
            load(&**client, db, Some(&nodes)).await
        })
        .await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "sessions ended during the outage not read; the next sweep tries again");
            shared.note_outage(since);
            return Vec::new();
        }
    };
    let mut candidates = Vec::new();
    for state in found.values() {
        let ended = state.rows.iter().rev().find(|r| r.host == db.host_id && r.att.state == State::Offline);
        let Some(row) = ended.map(|r| &r.att) else { continue };
        let alive = row.pid.is_some_and(|pid| row.pid_start.is_some() && probe(pid) == row.pid_start);
        if alive && row.updated_at >= since {
            candidates.push(AttachParams {
                session_id: row.session_id.clone(),
                node_id: row.node_id.clone(),
                client_version: row.client_version.clone(),
                capabilities: row.capabilities.clone(),
                health_state: Health::Online,
                pid: row.pid,
            });
        }
    }
    let mut events = Vec::new();
    for req in candidates {
        match attach(db, shared, &req, true, rules, now, probe).await {
            Ok((_, e)) => {
                tracing::info!(node = %req.node_id, session = %req.session_id, "re-attached after the outage");
                events.extend(e);
            }
            Err(e) => tracing::info!(node = %req.node_id, error = %e, "not re-attached after the outage"),
        }
    }
    events
}

/// Step 1: the beats, newer times only, for sessions still active; also
/// touches the host's row. The (node, session, state) of each row moved.
async fn flush(db: &Db, shared: &Shared, beats: &Kept) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut nodes = Vec::with_capacity(beats.len());
    let mut sessions = Vec::with_capacity(beats.len());
    let mut times = Vec::with_capacity(beats.len());
    for ((node, session), (at, _)) in beats {
        nodes.push(node.clone());
        sessions.push(session.clone());
        times.push(db.db_time(memoryd_proto::event::rfc3339::millis(*at)));
    }
    if nodes.is_empty() && !shared.options.daemon {
        return Ok(Vec::new());
    }
    let (moved, unsure) = db
        .call(db.settings.call_timeout, async |client| {
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL synchronous_commit = off").await?;
        if shared.options.daemon {
            tx.execute("UPDATE hosts SET last_seen_at = now() WHERE host_id = $1", &[&db.host_id]).await?;
        }
        if nodes.is_empty() {
            tx.commit().await?;
            return Ok((Vec::new(), Vec::new()));
        }
        let rows = tx
            .query(
                "WITH b AS (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS b(node_id, session_id, at)),
                 p AS (UPDATE runtime_node_presence p SET last_heartbeat_at = GREATEST(p.last_heartbeat_at, b.at)
                         FROM b JOIN runtime_node_attachments a ON a.node_id = b.node_id AND a.session_id = b.session_id
                              AND a.state IN ('registering','online','degraded')
                        WHERE p.node_id = b.node_id
                       RETURNING p.node_id, b.session_id, b.at)
                 UPDATE runtime_node_attachments a SET last_heartbeat_at = GREATEST(a.last_heartbeat_at, p.at)
                   FROM p WHERE a.node_id = p.node_id AND a.session_id = p.session_id
                    AND a.state IN ('registering','online','degraded')
                 RETURNING a.node_id, a.session_id, a.last_heartbeat_at, a.state",
                &[&nodes, &sessions, &times],
            )
            .await?;
        let mut moved = Vec::with_capacity(rows.len());
        let mut staged: BTreeMap<String, NodeState> = BTreeMap::new();
        // Rows whose state the copy does not know as stored: reloaded.
        let mut unsure = Vec::new();
        {
            let roster = shared.roster();
            for row in &rows {
                let node: String = row.try_get(0)?;
                let session: String = row.try_get(1)?;
                let at = db.host_time(row.try_get(2)?);
                let stored: String = row.try_get(3)?;
                let state = staged.entry(node.clone()).or_insert_with(|| roster.node(&node));
                let mut known = false;
                for r in state.rows.iter_mut().filter(|r| r.att.session_id == session && r.att.state.is_active()) {
                    r.att.last_heartbeat_at = at;
                    known = text(&r.att.state) == stored;
                }
                if !known {
                    unsure.push(node.clone());
                }
                moved.push((node, session, stored));
            }
        }
        staged.retain(|node, _| !unsure.contains(node));
        crate::db::pause_point("flush").await;
        commit_staged(tx, shared, staged.into_iter().collect()).await?;
        Ok((moved, unsure))
    })
    .await?;
    let mut roster = shared.roster();
    for node in &unsure {
        roster.mark_dirty(node);
    }
    Ok(moved)
}

/// Steps 2 and 3: under the demotion lock, the stale active nodes of the
/// whole fleet (and `extra`, own nodes to re-judge) through the domain's
/// sweep; then the prune.
async fn demote(
    db: &Db,
    shared: &Shared,
    rules: &Rules,
    now: SystemTime,
    probe: Probe<'_>,
    extra: &[String],
) -> Result<Vec<Event>, StoreError> {
    let database_now = db.db_time(now);
    let offline_before = database_now.checked_sub(rules.offline_after).unwrap_or(SystemTime::UNIX_EPOCH);
    let degraded_before = database_now.checked_sub(rules.degraded_after).unwrap_or(SystemTime::UNIX_EPOCH);
    let extra = extra.to_vec();
    db.call(db.settings.call_timeout, async |client| {
        let tx = client.transaction().await?;
        let granted: bool =
            tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&DEMOTION_LOCK]).await?.try_get(0)?;
        if !granted && extra.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // A node whose lock row a change holds is skipped this tick.
        let rows = tx
            .query(
                "SELECT node_id FROM runtime_node_presence
                  WHERE ($1 AND health_state <> 'offline'
                         AND (last_heartbeat_at < $2 OR (health_state = 'online' AND last_heartbeat_at < $3)))
                     OR node_id = ANY($4)
                  ORDER BY node_id FOR UPDATE SKIP LOCKED",
                &[&granted, &offline_before, &degraded_before, &extra],
            )
            .await?;
        let nodes: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        let mut events = Vec::new();
        if !nodes.is_empty() {
            let before = load(&*tx, db, Some(&nodes)).await?;
            let (mut presence, masked) = to_domain(&before, &db.host_id, BTreeMap::new());
            events = presence.sweep(rules, now, probe);
            let scope: BTreeSet<String> = nodes.iter().cloned().collect();
            let (after, _) = from_domain(presence, &before, &masked, &db.host_id, &scope, None);
            let moved = write_all(&tx, db, &shared.boot_id, &before, &after).await?;
            events::insert(&tx, &db.host_id, &events).await?;
            let staged: Vec<(String, NodeState)> = after.into_iter().filter(|(n, _)| moved.contains(n)).collect();
            if granted {
                events::prune(&tx, database_now).await?;
            }
            commit_staged(tx, shared, staged).await?;
        } else {
            if granted {
                events::prune(&tx, database_now).await?;
            }
            tx.commit().await?;
        }
        Ok(events)
    })
    .await
}

/// One row per node, from the roster copy, with the kept beats.
pub async fn roster(db: &Db, shared: &Shared, floor: Option<ClientVersion>) -> Result<Vec<RosterRow>, StoreError> {
    let presence = presence(db, shared).await?;
    let mut presence = Presence::clone(&presence);
    presence.apply_beats(&soft_beats(&shared.kept()));
    Ok(presence.roster(floor))
}

/// The fleet's presence as stored (kept beats not applied), from the
/// roster copy made current first.
pub async fn presence(db: &Db, shared: &Shared) -> Result<Arc<Presence>, StoreError> {
    fresh(db, shared).await?;
    let mut roster = shared.roster();
    if !roster.loaded() {
        return Err(db.unavailable());
    }
    Ok(roster.built().presence)
}

//! The fleet registry (`hosts`, `peers`): a host publishes its map, claims
//! its personalities, and checks links and sends against every present peer
//! of every host.
//!
//! A personality is unique in the fleet (spec 80): a host claims a name
//! another host owns only when that row is `present = false` (the peer
//! moved, event `peer.claim_moved`); a present name of another host is a
//! name conflict, kept for `verify` and for refusing the attaches of the
//! local peer. Rows are never deleted: links and mailboxes keep their peer.

use crate::db::{Db, Failure};
use crate::supervisor::{Hint, Shared};
use crate::tx::Tx;
use memoryd_core::fleet::names::is_personality;
use memoryd_core::fleet::{FleetMap, FleetPeer};
use memoryd_core::presence::{Event, EventKind};
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;
use memoryd_proto::event::rfc3339;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};
use tokio_postgres::GenericClient;

/// One present peer of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub personality: String,
    pub host_id: String,
    pub runtimes: Vec<String>,
    pub description: String,
}

/// The registry as last read, and this host's name conflicts as its last
/// publish found them. A hint about a peer (another host's publish,
/// claim or release) or a resync bumps the generation (the supervisor
/// calls [`Cache::invalidate`]); a read made before the bump is never
/// served after it.
#[derive(Debug, Default)]
pub struct Cache {
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    generation: u64,
    loaded: Option<Loaded>,
    conflicts: Vec<(String, String)>,
    /// The last rows read, kept through invalidations: what a reader
    /// gets, marked stale, while the database cannot be reached.
    last: Option<Arc<Vec<Row>>>,
}

#[derive(Debug)]
struct Loaded {
    generation: u64,
    at: Instant,
    rows: Arc<Vec<Row>>,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Something about the peers changed (a hint, a resync, our own
    /// change): the next read goes to the database.
    pub fn invalidate(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.loaded = None;
    }

    /// The registry as last read, however old.
    pub fn last_known(&self) -> Option<Arc<Vec<Row>>> {
        self.lock().last.clone()
    }

    /// This host's name conflicts: (personality, the host that owns it).
    pub fn conflicts(&self) -> Vec<(String, String)> {
        self.lock().conflicts.clone()
    }

    /// Records what a publish found, returning the conflicts it did not
    /// know yet (each is logged once, not at every resync).
    fn published(&self, conflicts: Vec<(String, String)>) -> Vec<(String, String)> {
        let new = {
            let mut s = self.lock();
            let new = conflicts.iter().filter(|c| !s.conflicts.contains(c)).cloned().collect();
            s.conflicts = conflicts;
            new
        };
        self.invalidate();
        new
    }

    /// The rows, unless a change or `max_age` made them stale.
    pub(crate) fn fresh(&self, max_age: std::time::Duration) -> Option<Arc<Vec<Row>>> {
        let s = self.lock();
        s.loaded.as_ref().filter(|l| l.generation == s.generation && l.at.elapsed() < max_age).map(|l| l.rows.clone())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub(crate) fn store(&self, generation: u64, rows: Arc<Vec<Row>>) {
        let mut s = self.lock();
        s.last = Some(rows.clone());
        if s.generation == generation {
            s.loaded = Some(Loaded { generation, at: Instant::now(), rows });
        }
    }
}

/// Every present peer (of `only`, when given), by name.
pub async fn present(client: &impl GenericClient, only: Option<&[&str]>) -> Result<Vec<Row>, Failure> {
    let rows = client
        .query(
            "SELECT personality, host_id, runtimes, description FROM peers
              WHERE present AND ($1::text[] IS NULL OR personality = ANY($1))
              ORDER BY personality COLLATE \"C\"",
            &[&only],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Row { personality: r.get(0), host_id: r.get(1), runtimes: r.get(2), description: r.get(3) })
        .collect())
}

/// The registry as a fleet map: this host's own peers as its `local` map
/// has them; another host's with an empty `cwd` (a folder means something
/// only on its host) and no default runtime.
pub fn fleet_of(rows: &[Row], host_id: &str, local: Option<&FleetMap>) -> FleetMap {
    let peers = rows
        .iter()
        .map(|r| match local.and_then(|l| l.peer(&r.personality)).filter(|_| r.host_id == host_id) {
            Some(own) => own.clone(),
            None => FleetPeer {
                personality: r.personality.clone(),
                cwd: PathBuf::new(),
                default_runtime: None,
                runtimes: r.runtimes.clone(),
                description: r.description.clone(),
            },
        })
        .collect();
    FleetMap { updated_at: local.map(|l| l.updated_at.clone()).unwrap_or_default(), peers }
}

/// The registry read inside a change's transaction: what its checks run
/// against. With `only`, just those peers: enough to pass a check, though
/// not for the sentence of a refusal that lists the fleet.
pub async fn in_tx(tx: &Tx<'_>, host_id: &str, only: Option<&[&str]>) -> Result<FleetMap, Failure> {
    Ok(fleet_of(&present(&**tx, only).await?, host_id, None))
}

/// Reads the registry again, whatever the cache holds.
async fn reload(db: &Db, shared: &Shared) -> Result<Arc<Vec<Row>>, StoreError> {
    let generation = shared.registry.generation();
    let rows = Arc::new(db.call(db.settings.call_timeout, async |c| present(&**c, None).await).await?);
    shared.registry.store(generation, rows.clone());
    Ok(rows)
}

pub async fn registry(db: &Db, shared: &Shared, local: &FleetMap) -> Result<FleetMap, StoreError> {
    let rows = match shared.registry.fresh(db.settings.resync_every) {
        Some(rows) => rows,
        None => reload(db, shared).await?,
    };
    Ok(fleet_of(&rows, &db.host_id, Some(local)))
}

/// A stored peers row, as publish finds it under its lock.
struct Stored {
    host_id: String,
    present: bool,
    runtimes: Vec<String>,
    description: String,
}

/// Makes `local` this host's part of the registry, in one transaction
/// (spec 80 "Hosts and names").
pub async fn publish(db: &Db, shared: &Shared, local: &FleetMap) -> Result<(), StoreError> {
    let me = db.host_id.as_str();
    let mut wanted: BTreeMap<&str, &FleetPeer> = BTreeMap::new();
    for p in &local.peers {
        if is_personality(&p.personality) {
            wanted.insert(&p.personality, p);
        } else {
            tracing::warn!(personality = %p.personality, "not published: the name breaks the name rule");
        }
    }
    let names: Vec<&str> = wanted.keys().copied().collect();
    let now = rfc3339::millis(SystemTime::now());
    let (conflicts, changed) = db
        .call(db.settings.operator_timeout, async |c| -> Result<_, Failure> {
            let tx = c.transaction().await?;
            let touched = tx.execute("UPDATE hosts SET last_seen_at = now() WHERE host_id = $1", &[&me]).await?;
            if touched == 0 {
                return Err(Failure::Store(StoreError::Unavailable {
                    kind: ErrorKind::StoreUnavailable,
                    message: format!("host {me} has no row in the fleet database yet; the store claims it when it connects"),
                }));
            }
            let rows = tx
                .query(
                    "SELECT personality, host_id, present, runtimes, description FROM peers
                      WHERE personality = ANY($1) OR host_id = $2
                      ORDER BY personality COLLATE \"C\" FOR NO KEY UPDATE",
                    &[&names, &me],
                )
                .await?;
            let stored: BTreeMap<String, Stored> = rows
                .iter()
                .map(|r| {
                    let s = Stored { host_id: r.get(1), present: r.get(2), runtimes: r.get(3), description: r.get(4) };
                    (r.get(0), s)
                })
                .collect();
            let mut conflicts = Vec::new();
            let mut changed = Vec::new();
            let mut events = Vec::new();
            for (name, peer) in &wanted {
                let update = match stored.get(*name) {
                    None => {
                        let inserted = tx
                            .execute(
                                "INSERT INTO peers (personality, host_id, runtimes, description) VALUES ($1, $2, $3, $4)
                                 ON CONFLICT (personality) DO NOTHING",
                                &[name, &me, &peer.runtimes, &peer.description],
                            )
                            .await?;
                        if inserted == 1 {
                            changed.push(name.to_string());
                        } else {
                            // Another host published it in the meantime: its
                            // name now.
                            let owner = tx.query_one("SELECT host_id FROM peers WHERE personality = $1", &[name]).await?;
                            conflicts.push((name.to_string(), owner.get(0)));
                        }
                        false
                    }
                    Some(s) if s.host_id == me => {
                        !s.present || s.runtimes != peer.runtimes || s.description != peer.description
                    }
                    Some(s) if !s.present => {
                        tracing::info!(personality = name, from = %s.host_id, "claimed a personality another host had left");
                        events.push(Event {
                            ts: now,
                            kind: EventKind::ClaimMoved {
                                personality: name.to_string(),
                                from: s.host_id.clone(),
                                to: me.to_owned(),
                            },
                        });
                        true
                    }
                    Some(s) => {
                        conflicts.push((name.to_string(), s.host_id.clone()));
                        false
                    }
                };
                if update {
                    tx.execute(
                        "UPDATE peers SET host_id = $2, runtimes = $3, description = $4, present = true,
                           updated_at = now() WHERE personality = $1",
                        &[name, &me, &peer.runtimes, &peer.description],
                    )
                    .await?;
                    changed.push(name.to_string());
                }
            }
            for (name, s) in &stored {
                if s.host_id == me && s.present && !wanted.contains_key(name.as_str()) {
                    tx.execute("UPDATE peers SET present = false, updated_at = now() WHERE personality = $1", &[name])
                        .await?;
                    changed.push(name.clone());
                }
            }
            crate::events::insert(&tx, me, &events).await?;
            for personality in &changed {
                crate::supervisor::notify(&tx, &db.settings.schema, &Hint::Peer { personality: personality.clone() }).await?;
            }
            tx.commit().await?;
            Ok((conflicts, changed))
        })
        .await?;
    if !changed.is_empty() {
        tracing::debug!(changed = changed.len(), "published the fleet map");
    }
    for (personality, owner) in shared.registry.published(conflicts) {
        tracing::warn!(personality, owner, "name conflict: another host owns this personality and has it present");
    }
    Ok(())
}

/// `memoryctl fleet release P`: marks the personality `present = false`,
/// whichever host owns it, so another host may claim it; whether it was
/// present.
pub async fn release(db: &Db, shared: &Shared, personality: &str) -> Result<bool, StoreError> {
    memoryd_core::peers::check_name(personality)?;
    let released = db
        .call(db.settings.operator_timeout, async |c| -> Result<_, Failure> {
            let tx = c.transaction().await?;
            let row = tx
                .query_opt("SELECT present FROM peers WHERE personality = $1 FOR NO KEY UPDATE", &[&personality])
                .await?;
            let Some(row) = row else {
                return Err(Failure::Store(StoreError::Refused(memoryd_core::presence::Refusal {
                    kind: ErrorKind::PeerMissing,
                    message: format!("`{personality}` was never published by any host of the fleet"),
                    details: None,
                })));
            };
            let was: bool = row.get(0);
            if was {
                tx.execute(
                    "UPDATE peers SET present = false, updated_at = now() WHERE personality = $1",
                    &[&personality],
                )
                .await?;
                crate::supervisor::notify(
                    &tx,
                    &db.settings.schema,
                    &Hint::Peer { personality: personality.to_owned() },
                )
                .await?;
            }
            tx.commit().await?;
            Ok(was)
        })
        .await?;
    shared.registry.invalidate();
    Ok(released)
}

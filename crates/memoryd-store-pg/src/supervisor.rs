//! The store's background work: connect (migrate, claim the host's row,
//! seed the fleet's settings, measure the clock skew) with backoff
//! 250 ms → 5 s, keep the listener connection (`LISTEN`), resync the
//! caches after every (re)connect and every `resync_every`, and turn the
//! store `down` and back `up`.

use crate::Options;
use crate::db::{Db, Failure, StoreState};
use crate::migrate::{migrate, newest, steps};
use crate::roster_cache::RosterCache;
use memoryd_core::config::ClientVersion;
use memoryd_core::presence::Health;
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

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
        /// The boot id of the process that made the change: its own copy
        /// has the change already, so its listener leaves the node clean.
        #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
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
    let payload =
        serde_json::to_string(hint).map_err(|e| crate::tx::internal(format!("a notification does not encode: {e}")))?;
    tx.execute("SELECT pg_notify($1, $2)", &[&channel(schema), &payload]).await?;
    Ok(())
}

/// What seeds `fleet_settings` when the schema is first created
/// (`presence.*` of the host's config); never used after that.
#[derive(Debug, Clone, PartialEq)]
pub struct Seed {
    pub min_client_version: Option<ClientVersion>,
    pub degraded_after: Duration,
    pub offline_after: Duration,
    pub inbox_capacity: usize,
}

impl Default for Seed {
    fn default() -> Seed {
        Seed {
            min_client_version: None,
            degraded_after: Duration::from_secs(30),
            offline_after: Duration::from_secs(60),
            inbox_capacity: 128,
        }
    }
}

/// The fleet's settings (`fleet_settings`), as last read.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub min_client_version: Option<ClientVersion>,
    pub degraded_after: Duration,
    pub offline_after: Duration,
    pub host_offline_after: Duration,
    pub inbox_capacity: usize,
}

/// Heartbeats kept in memory: by (node, session), the beat's time (host
/// clock) and reported health.
pub type Kept = std::collections::HashMap<(String, String), (SystemTime, Health)>;

/// What the store keeps in memory, shared with its tasks.
pub struct Shared {
    pub options: Options,
    pub hints: tokio::sync::broadcast::Sender<Hint>,
    /// The fleet's presence as this host last saw it.
    pub roster: Mutex<RosterCache>,
    /// Heartbeats that changed nothing but the time, by (node, session),
    /// in this host's clock, until a sweep flushes them.
    pub kept: Mutex<Kept>,
    settings: Mutex<Option<FleetSettings>>,
    /// The listener is connected: the roster copy is kept current.
    listening: AtomicBool,
    stop: tokio::sync::watch::Sender<bool>,
    /// This run's claim on the host's row.
    pub boot_id: String,
    /// When the store last went down while up (host clock), until the
    /// first sweep after it came back re-attached what the fleet ended
    /// meanwhile.
    outage: Mutex<Option<SystemTime>>,
    /// The fleet registry as last read, and this host's name conflicts.
    pub registry: crate::registry::Cache,
    /// The database's schema as the last connect found it.
    pub schema: Mutex<Option<crate::migrate::Schema>>,
    /// The links as last read (see [`crate::PgStore::last_known`]).
    pub last_links: Mutex<Option<memoryd_core::peers::Links>>,
}

impl Shared {
    pub fn new(options: Options) -> Shared {
        let boot_id = format!("{}/{}", options.instance.clone().unwrap_or_else(random_id), random_id());
        Shared {
            options,
            hints: tokio::sync::broadcast::Sender::new(256),
            roster: Mutex::default(),
            kept: Mutex::default(),
            settings: Mutex::default(),
            listening: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(false),
            boot_id,
            outage: Mutex::default(),
            registry: Default::default(),
            schema: Mutex::default(),
            last_links: Mutex::default(),
        }
    }

    /// Everything this host copied from the database may be behind (a
    /// reconnect, a resync, many nodes moved): the roster and the registry
    /// are read again.
    pub fn stale(&self) {
        self.roster().mark_stale();
        self.registry.invalidate();
    }

    /// The store is being dropped: tasks end.
    pub fn stopping(&self) {
        self.stop.send_replace(true);
    }

    pub fn roster(&self) -> MutexGuard<'_, RosterCache> {
        self.roster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub fn fleet_settings(&self) -> Option<FleetSettings> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// This host's clock (moved by the test clock's offset).
    pub fn host_now(&self) -> SystemTime {
        let offset = Duration::from_millis(self.options.clock_offset_ms.unsigned_abs());
        if self.options.clock_offset_ms >= 0 { SystemTime::now() + offset } else { SystemTime::now() - offset }
    }

    /// Records an outage that began at `since` (the earliest one wins).
    pub fn note_outage(&self, since: SystemTime) {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        *outage = Some(outage.map_or(since, |o| o.min(since)));
    }

    /// The start of the outage the store came back from, once.
    pub fn take_outage(&self) -> Option<SystemTime> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn forward(&self, hint: Hint) {
        // Nobody subscribed is fine: the hint is only a wake-up.
        let _ = self.hints.send(hint);
    }
}

/// A random id: the kernel's uuid, else time and pid.
pub fn random_id() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        Ok(uuid) if !uuid.trim().is_empty() => uuid.trim().to_owned(),
        _ => format!(
            "{:x}-{:x}",
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            std::process::id()
        ),
    }
}

/// Starts the supervisor on the current runtime.
pub fn spawn(db: Arc<Db>, shared: Arc<Shared>) {
    tokio::spawn(supervise(db, shared));
}

/// Why a connection attempt did not bring the store up.
enum NotUp {
    /// Retry with backoff.
    Down(String),
    /// The schema cannot be used: retry slowly, never apply anything.
    Incompatible(String),
    /// Another live boot holds the host's row.
    HostTaken(String),
}

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The wait before trying again a schema or a host row that refused us.
const SLOW_RETRY: Duration = Duration::from_secs(30);

async fn supervise(db: Arc<Db>, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = BACKOFF_FIRST;
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match connect(&db, &shared).await {
            Ok(listener) => {
                backoff = BACKOFF_FIRST;
                let since = SystemTime::now();
                db.set_state(StoreState::Up { since });
                shared.forward(Hint::Roster);
                let why = serve(&db, &shared, listener, &mut stop).await;
                shared.listening.store(false, Ordering::Release);
                shared.stale();
                shared.note_outage(shared.host_now());
                match why {
                    Some(error) => db.mark_down(error),
                    None => return,
                }
                BACKOFF_FIRST
            }
            Err(NotUp::Down(error)) => {
                tracing::debug!(error = %error, "fleet database not reached");
                db.set_state(StoreState::Down { since: down_since(&db), error });
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
            Err(NotUp::Incompatible(reason)) => {
                tracing::warn!(reason = %reason, "fleet database incompatible");
                db.set_state(StoreState::Incompatible { reason });
                SLOW_RETRY
            }
            Err(NotUp::HostTaken(error)) => {
                tracing::warn!(error = %error, "host row taken");
                db.set_host_taken(true);
                db.set_state(StoreState::Down { since: down_since(&db), error });
                SLOW_RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// When the store went down: kept across failed attempts.
fn down_since(db: &Db) -> SystemTime {
    match db.state() {
        StoreState::Down { since, .. } => since,
        _ => SystemTime::now(),
    }
}

/// A connected listener: its client (kept, or the connection ends), the
/// task driving it and the payloads it receives.
struct Listener {
    _client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<String>,
    payloads: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One (re)connect: schema, host row, settings, skew, listener, caches.
async fn connect(db: &Db, shared: &Shared) -> Result<Listener, NotUp> {
    let budget = db.settings.operator_timeout.max(db.settings.connect_timeout * 2);
    let fail = |e: Failure| match e {
        Failure::Store(StoreError::Unavailable { kind: ErrorKind::StoreIncompatible, message }) => {
            NotUp::Incompatible(message)
        }
        Failure::Store(StoreError::Unavailable { kind: ErrorKind::StoreHostTaken, message }) => {
            NotUp::HostTaken(message)
        }
        e => NotUp::Down(e.to_string()),
    };
    let setup = async {
        let mut client = db.pool.get().await.map_err(|e| Failure::Pool(e.to_string()))?;
        // A host records the newest schema its binary knows: what a
        // contract step's floor is checked against.
        let steps = steps();
        let found = migrate(&mut client, &db.settings.schema, &db.host_id, &steps, false).await?;
        *shared.schema.lock().unwrap_or_else(PoisonError::into_inner) = Some(found);
        claim(&mut client, db, shared, newest(&steps)).await?;
        db.set_host_taken(false);
        refresh(&client, db, shared).await?;
        Ok::<_, Failure>(client)
    };
    let client = match tokio::time::timeout(budget, setup).await {
        Ok(r) => r.map_err(fail)?,
        Err(_) => return Err(NotUp::Down(format!("the fleet database did not answer within {budget:?}"))),
    };
    // Listening before the resync: nothing committed after the resync's
    // read is missed.
    let listener = listen(db).await.map_err(NotUp::Down)?;
    shared.stale();
    let deadline = db.settings.operator_timeout;
    match tokio::time::timeout(deadline, crate::presence::reload(&client, db, shared)).await {
        Ok(r) => r.map_err(fail)?,
        Err(_) => return Err(NotUp::Down(format!("the roster did not load within {deadline:?}"))),
    }
    shared.listening.store(true, Ordering::Release);
    Ok(listener)
}

/// Claims the host's row (the daemon) or makes sure it exists (an offline
/// `memoryctl`), seeding `fleet_settings` first.
async fn claim(
    client: &mut deadpool_postgres::ClientWrapper,
    db: &Db,
    shared: &Shared,
    schema_version: i32,
) -> Result<(), Failure> {
    let seed = &shared.options.seed;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO fleet_settings (id, min_client_version, degraded_after, offline_after, inbox_capacity)
         VALUES (true, $1, $2::int8 * interval '1 ms', $3::int8 * interval '1 ms', $4::int4) ON CONFLICT DO NOTHING",
        &[
            &seed.min_client_version.map(|v| v.to_string()),
            &millis(seed.degraded_after),
            &millis(seed.offline_after),
            &i32::try_from(seed.inbox_capacity).unwrap_or(i32::MAX).max(1),
        ],
    )
    .await?;
    let version = &shared.options.daemon_version;
    if !shared.options.daemon {
        tx.execute(
            "INSERT INTO hosts (host_id, daemon_version, schema_version) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&db.host_id, version, &schema_version],
        )
        .await?;
        tx.commit().await?;
        return Ok(());
    }
    let held = tx
        .query_opt(
            "SELECT h.boot_id, (now() - h.last_seen_at)::text FROM hosts h, fleet_settings s
              WHERE h.host_id = $1 AND h.boot_id IS NOT NULL AND split_part(h.boot_id, '/', 1) <> split_part($2, '/', 1)
                AND h.last_seen_at > now() - s.host_offline_after
                FOR UPDATE OF h",
            &[&db.host_id, &shared.boot_id],
        )
        .await?;
    if let Some(row) = held {
        let age: String = row.try_get(1)?;
        return Err(Failure::Store(StoreError::Unavailable {
            kind: ErrorKind::StoreHostTaken,
            message: format!(
                "the host id {:?} is held by another running memoryd (last seen {age} ago): two machines are \
                 configured with one postgres.host_id; give each its own",
                db.host_id
            ),
        }));
    }
    tx.execute(
        "INSERT INTO hosts (host_id, boot_id, daemon_version, schema_version) VALUES ($1, $2, $3, $4)
         ON CONFLICT (host_id) DO UPDATE SET boot_id = EXCLUDED.boot_id, daemon_version = EXCLUDED.daemon_version,
           schema_version = EXCLUDED.schema_version, last_seen_at = now(),
           started_at = CASE WHEN hosts.boot_id IS DISTINCT FROM EXCLUDED.boot_id THEN now() ELSE hosts.started_at END",
        &[&db.host_id, &shared.boot_id, version, &schema_version],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn duration_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Re-reads the fleet's settings and measures the clock skew.
async fn refresh(client: &tokio_postgres::Client, db: &Db, shared: &Shared) -> Result<(), Failure> {
    read_settings(client, shared).await?;
    let before = shared.host_now();
    let row = client.query_one("SELECT now()", &[]).await?;
    let after = shared.host_now();
    let database: SystemTime = row.try_get(0)?;
    let rtt = after.duration_since(before).unwrap_or_default();
    let mid = before + rtt / 2;
    let skew = match mid.duration_since(database) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
    };
    // Within the measurement's own uncertainty it is no skew at all.
    let noise = i64::try_from((rtt / 2).as_millis()).unwrap_or(i64::MAX) + 1;
    let skew = if skew.abs() <= noise { 0 } else { skew };
    if skew != db.skew_ms() {
        tracing::info!(skew_ms = skew, "clock skew to the fleet database");
        db.set_skew_ms(skew);
        // Cached times were converted with the old skew.
        shared.stale();
    }
    Ok(())
}

async fn read_settings(client: &tokio_postgres::Client, shared: &Shared) -> Result<(), Failure> {
    let row = client
        .query_one(
            "SELECT min_client_version, (extract(epoch FROM degraded_after) * 1000)::int8,
                    (extract(epoch FROM offline_after) * 1000)::int8,
                    (extract(epoch FROM host_offline_after) * 1000)::int8, inbox_capacity
               FROM fleet_settings",
            &[],
        )
        .await?;
    let floor: Option<String> = row.try_get(0)?;
    let settings = FleetSettings {
        min_client_version: floor.and_then(|f| f.parse().ok()),
        degraded_after: duration_ms(row.try_get(1)?),
        offline_after: duration_ms(row.try_get(2)?),
        host_offline_after: duration_ms(row.try_get(3)?),
        inbox_capacity: usize::try_from(row.try_get::<_, i32>(4)?).unwrap_or(1),
    };
    *shared.settings.lock().unwrap_or_else(PoisonError::into_inner) = Some(settings);
    Ok(())
}

/// The fleet's settings read now, not the copy the listener keeps (an
/// operator's change shows its own result at once).
pub async fn settings_now(db: &Db, shared: &Shared) -> Result<FleetSettings, StoreError> {
    db.call(db.settings.operator_timeout, async |c| -> Result<FleetSettings, Failure> {
        read_settings(c, shared).await?;
        shared.fleet_settings().ok_or_else(|| crate::tx::internal("fleet_settings has no row".to_owned()))
    })
    .await
}

/// Opens the listener connection (outside the pool) and `LISTEN`s.
async fn listen(db: &Db) -> Result<Listener, String> {
    let deadline = db.settings.connect_timeout;
    let (client, mut connection) = tokio::time::timeout(deadline, db.config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| format!("the listener did not connect within {deadline:?}"))?
        .map_err(|e| format!("the listener cannot connect: {e}"))?;
    let (sender, payloads) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if sender.send(n.payload().to_owned()).is_err() {
                        return "the listener was dropped".to_owned();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("the listener connection failed: {e}"),
                None => return "the listener connection ended".to_owned(),
            }
        }
    });
    let listener = Listener { _client: client, driver, payloads };
    let sql = format!("LISTEN \"{}\"", channel(&db.settings.schema));
    match tokio::time::timeout(db.settings.operator_timeout, listener._client.batch_execute(&sql)).await {
        Ok(Ok(())) => Ok(listener),
        Ok(Err(e)) => Err(format!("LISTEN failed: {e}")),
        Err(_) => Err("LISTEN did not answer".into()),
    }
}

/// Serves while up: notifications, resync ticks, loss. The error that
/// took the store down, or None when the store stops.
async fn serve(
    db: &Db,
    shared: &Shared,
    mut listener: Listener,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<String> {
    let mut tick = tokio::time::interval(db.settings.resync_every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is now: connect just resynced
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            _ = db.lost.notified() => {
                if let StoreState::Down { error, .. } = db.state() {
                    return Some(error);
                }
            }
            ended = &mut listener.driver => {
                return Some(ended.unwrap_or_else(|e| format!("the listener task ended: {e}")));
            }
            payload = listener.payloads.recv() => {
                let Some(payload) = payload else { return Some("the listener stopped".into()) };
                hint(db, shared, &payload).await;
            }
            _ = tick.tick() => {
                if let Err(e) = resync(db, shared).await {
                    return Some(e);
                }
            }
        }
    }
}

/// One notification: updates the caches it concerns, then tells the daemon.
async fn hint(db: &Db, shared: &Shared, payload: &str) {
    let hint: Hint = match serde_json::from_str(payload) {
        Ok(hint) => hint,
        Err(e) => {
            // A newer binary's hint: a full reload covers it.
            tracing::debug!(payload, error = %e, "unknown fleet notification");
            Hint::Roster
        }
    };
    match &hint {
        Hint::Presence { origin: Some(origin), .. } if *origin == shared.boot_id => {}
        Hint::Presence { node, .. } => shared.roster().mark_dirty(node),
        Hint::Roster => shared.stale(),
        Hint::Settings => {
            let read = async {
                let client = db.pool.get().await.map_err(|e| Failure::Pool(e.to_string()))?;
                read_settings(&client, shared).await
            };
            if let Ok(Err(e)) | Err(e) = tokio::time::timeout(db.settings.call_timeout, read)
                .await
                .map_err(|_| Failure::Timeout(db.settings.call_timeout))
            {
                tracing::debug!(error = %e, "fleet settings not re-read; the next resync does");
            }
        }
        // Another host published, claimed or released a peer: the next
        // registry read goes to the database.
        Hint::Peer { .. } => shared.registry.invalidate(),
        Hint::Inbox { .. } | Hint::Link { .. } => {}
    }
    shared.forward(hint);
}

/// The `resync_every` backstop: settings, skew and the whole roster again.
async fn resync(db: &Db, shared: &Shared) -> Result<(), String> {
    let run = async {
        let client = db.pool.get().await.map_err(|e| Failure::Pool(e.to_string()))?;
        refresh(&client, db, shared).await?;
        shared.stale();
        crate::presence::reload(&client, db, shared).await
    };
    let deadline = db.settings.operator_timeout;
    match tokio::time::timeout(deadline, run).await {
        Ok(Ok(())) => {
            shared.forward(Hint::Roster);
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the resync did not finish within {deadline:?}")),
    }
}

/// A clean stop clears the host's claim (best effort, within a second),
/// so the next start on this host is not refused.
pub async fn release(db: &Db, shared: &Shared) {
    if !shared.options.daemon || !matches!(db.state(), StoreState::Up { .. }) {
        return;
    }
    let run = async {
        let client = db.pool.get().await.map_err(|e| Failure::Pool(e.to_string()))?;
        client
            .execute(
                "UPDATE hosts SET boot_id = NULL WHERE host_id = $1 AND boot_id = $2",
                &[&db.host_id, &shared.boot_id],
            )
            .await?;
        Ok::<_, Failure>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), run).await {
        tracing::debug!(error = %e, "the host's claim was not cleared");
    }
}

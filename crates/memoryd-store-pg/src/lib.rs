//! The PostgreSQL store (spec 80): one database shared by every host of a
//! fleet holds the roster, revocations, links, mailboxes, events and the
//! fleet's settings; each host keeps its surfaces, fragments, vault and
//! sockets.
//!
//! [`PgStore`] implements the same store traits as the file store and
//! passes the same domain suite. Each state change is one transaction that
//! locks what it changes (the lock order of spec 80), loads the rows into
//! the domain's shapes, runs the pure state machine of `memoryd-core` and
//! writes the difference with its events. The traits are synchronous: the
//! store runs its own small tokio runtime (the pool's connections, the
//! listener, the supervisor) and a call blocks on it from the caller's
//! blocking thread, bounded by `postgres.call_timeout`.
//!
//! Times: the domain gets the caller's `now`, mapped onto the database's
//! clock by the skew measured at every (re)connect and resync, so no host
//! clock reaches a stored time and the domain stays a pure function of
//! (state, request, now).

pub mod db;
pub mod migrate;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

mod admin;
mod events;
mod links;
mod mail;
mod options;
mod presence;
mod registry;
mod roster_cache;
mod supervisor;
mod tx;

pub use admin::{FileState, HostRow, Import, NameConflict, SettingsChange};
pub use db::{StoreState, redacted};
pub use supervisor::{FleetSettings, Hint, Seed, random_id};

use db::Db;
use memoryd_core::config::{ClientVersion, PostgresConfig};
use memoryd_core::fleet::FleetMap;
use memoryd_core::peers::{Draft, Inbox, Limits, Links, Message, OutboxRow};
use memoryd_core::presence::{AttachParams, Attached, Event, Health, Presence, Probe, Revoker, RosterRow, Rules};
use memoryd_core::store::{Cursor, EventLog, PeerStore, PresenceStore, StateStore, StoreError};
use memoryd_proto::peers::{Acknowledged, ReplyParams, Sent};
use memoryd_proto::presence::CapabilityUpdated;
use memoryd_proto::status::SweepStatus;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The store of one host on the fleet database.
pub struct PgStore {
    rt: Option<tokio::runtime::Runtime>,
    db: Arc<Db>,
    /// In-memory state shared with the supervisor and the listener: the
    /// roster cache, the kept heartbeats, the registry cache, the hints.
    shared: Arc<supervisor::Shared>,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: PostgresConfig,
    pub host_id: String,
    /// This binary's version, recorded in `hosts`.
    pub daemon_version: String,
    /// The daemon holds the host's row (claims it, flushes, demotes); an
    /// offline `memoryctl` only reads and makes single changes.
    pub daemon: bool,
    /// Seeds `fleet_settings` when the schema is first created.
    pub seed: Seed,
    /// A test clock's offset from the system clock, in milliseconds (spec
    /// 80's skew test): the host clock the skew is measured with. 0 in use.
    pub clock_offset_ms: i64,
    /// This host's lasting identity (the daemon keeps one per root), the
    /// first part of every boot id it claims the host's row with: a
    /// restart after a crash finds its own, younger claim and takes it
    /// over, where another machine configured with the same host id is
    /// refused. None: a fresh one per process.
    pub instance: Option<String>,
}

impl PgStore {
    /// Opens the store: returns at once, connecting in the background
    /// (`connecting`, then `up`, `down` or `incompatible`). Refused only
    /// for settings that cannot work (no URL, a password in it).
    pub fn open(options: Options) -> Result<PgStore, StoreError> {
        let invalid =
            |message: String| StoreError::Unavailable { kind: memoryd_proto::ErrorKind::ConfigInvalid, message };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("memoryd-pg")
            .enable_all()
            .build()
            .map_err(|e| invalid(format!("cannot start the fleet database's runtime: {e}")))?;
        let db = Arc::new(Db::new(options.settings.clone(), options.host_id.clone()).map_err(invalid)?);
        let shared = Arc::new(supervisor::Shared::new(options));
        let _guard = rt.enter();
        supervisor::spawn(db.clone(), shared.clone());
        Ok(PgStore { rt: Some(rt), db, shared })
    }

    /// Waits up to `deadline` for the store to leave `connecting`.
    pub fn wait_connected(&self, deadline: Duration) -> StoreState {
        let start = std::time::Instant::now();
        loop {
            let state = self.db.state();
            if !matches!(state, StoreState::Connecting) || start.elapsed() >= deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn state(&self) -> StoreState {
        self.db.state()
    }

    /// The fleet's settings as last read (None before the first connect);
    /// the daemon builds its presence rules and limits from them.
    pub fn fleet_settings(&self) -> Option<FleetSettings> {
        self.shared.fleet_settings()
    }

    /// The registry, links and presence as this host last read them,
    /// however old: what `peers_list` answers from, marked stale, while the
    /// database cannot be reached (spec 80). None until each was read once.
    pub fn last_known(&self, local: &FleetMap) -> Option<(FleetMap, Links, Arc<Presence>)> {
        let rows = self.shared.registry.last_known()?;
        let links = self.shared.last_links.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()?;
        let mut roster = self.shared.roster();
        if !roster.loaded() {
            return None;
        }
        let presence = roster.built().presence;
        Some((registry::fleet_of(&rows, &self.db.host_id, Some(local)), links, presence))
    }

    /// The database's schema version and compatibility floor, as the last
    /// connect found them.
    pub fn schema(&self) -> Option<(i32, i32)> {
        let schema = self.shared.schema.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        schema.as_ref().map(|s| (s.version, s.compat_floor))
    }

    /// The fleet's settings read from the database now.
    pub fn fleet_settings_now(&self) -> Result<FleetSettings, StoreError> {
        self.block(supervisor::settings_now(&self.db, &self.shared))
    }

    /// Host clock minus database clock, as last measured.
    pub fn clock_skew_ms(&self) -> i64 {
        self.db.skew_ms()
    }

    pub fn host_id(&self) -> &str {
        &self.db.host_id
    }

    /// The notifications of other hosts' changes, as hints (spec 80).
    pub fn hints(&self) -> tokio::sync::broadcast::Receiver<Hint> {
        self.shared.hints.subscribe()
    }

    /// This host's name conflicts as its last publish found them:
    /// (personality, the host that owns it). Their attaches are refused
    /// and `verify` warns about each.
    pub fn name_conflicts(&self) -> Vec<(String, String)> {
        self.shared.registry.conflicts()
    }

    /// `memoryctl fleet hosts`.
    pub fn fleet_hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        self.block(admin::fleet_hosts(&self.db))
    }

    /// `memoryctl fleet settings`.
    pub fn update_settings(&self, change: &SettingsChange) -> Result<(), StoreError> {
        self.block(admin::update_settings(&self.db, change))
    }

    /// `memoryctl fleet release P`: whether it was present.
    pub fn release(&self, personality: &str) -> Result<bool, StoreError> {
        self.block(registry::release(&self.db, &self.shared, personality))
    }

    /// `memoryctl fleet leave`: the personalities released and the events
    /// of the sessions taken offline.
    pub fn leave(&self, now: SystemTime) -> Result<(Vec<String>, Vec<Event>), StoreError> {
        self.block(admin::leave(&self.db, &self.shared, now))
    }

    /// `memoryctl fleet migrate --contract`, with test steps in `extra`.
    pub fn migrate_contract(&self, extra: &[migrate::Migration]) -> Result<migrate::Schema, StoreError> {
        self.block(admin::migrate_contract(&self.db, extra))
    }

    /// `memoryctl store import [--apply]` from this host's file store.
    pub fn import(&self, file: &FileState, apply: bool) -> Result<Import, StoreError> {
        self.block(admin::import(&self.db, &self.shared, file, apply))
    }

    /// Blocks the caller's (blocking) thread on the store's runtime.
    fn block<T>(&self, fut: impl Future<Output = T>) -> T {
        match &self.rt {
            Some(rt) => rt.handle().block_on(fut),
            None => unreachable_runtime(),
        }
    }
}

fn unreachable_runtime() -> ! {
    // The runtime is taken only by Drop.
    std::process::abort()
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shared.stopping();
        if let Some(rt) = &self.rt {
            // On a thread of its own: the store may be dropped inside
            // another runtime, where blocking on this one would panic.
            let (handle, db, shared) = (rt.handle(), &self.db, &self.shared);
            std::thread::scope(|s| {
                let _ = s.spawn(|| handle.block_on(supervisor::release(db, shared))).join();
            });
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PresenceStore for PgStore {
    fn attach(
        &self,
        req: &AttachParams,
        known: bool,
        rules: &Rules,
        now: SystemTime,
        probe: Probe<'_>,
    ) -> Result<(Attached, Vec<Event>), StoreError> {
        self.block(presence::attach(&self.db, &self.shared, req, known, rules, now, probe))
    }

    fn heartbeat(
        &self,
        node: &str,
        session: Option<&str>,
        health: Health,
        now: SystemTime,
    ) -> Result<Vec<Event>, StoreError> {
        self.block(presence::heartbeat(&self.db, &self.shared, node, session, health, now))
    }

    fn soft_heartbeat(
        &self,
        node: &str,
        session: Option<&str>,
        health: Health,
        now: SystemTime,
        recheck: Duration,
    ) -> bool {
        presence::soft_heartbeat(&self.shared, node, session, health, now, recheck)
    }

    fn detach(&self, node: &str, session: Option<&str>, now: SystemTime) -> Result<Vec<Event>, StoreError> {
        self.block(presence::detach(&self.db, &self.shared, node, session, now))
    }

    fn capability_update(
        &self,
        node: &str,
        capabilities: &Map<String, Value>,
        health: Option<Health>,
        floor: Option<ClientVersion>,
        now: SystemTime,
    ) -> Result<(CapabilityUpdated, Vec<Event>), StoreError> {
        self.block(presence::capability_update(&self.db, &self.shared, node, capabilities, health, floor, now))
    }

    fn revoke(
        &self,
        node: &str,
        by: Revoker<'_>,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Event>, StoreError> {
        self.block(presence::revoke(&self.db, &self.shared, node, by, reason, now))
    }

    fn unrevoke(&self, node: &str, by: Revoker<'_>, now: SystemTime) -> Result<Vec<Event>, StoreError> {
        self.block(presence::unrevoke(&self.db, &self.shared, node, by, now))
    }

    fn sweep(&self, rules: &Rules, now: SystemTime, probe: Probe<'_>) -> Result<Vec<Event>, StoreError> {
        self.block(presence::sweep(&self.db, &self.shared, rules, now, probe))
    }

    fn roster(&self, floor: Option<ClientVersion>) -> Result<Vec<RosterRow>, StoreError> {
        self.block(presence::roster(&self.db, &self.shared, floor))
    }

    fn presence(&self) -> Result<Arc<Presence>, StoreError> {
        self.block(presence::presence(&self.db, &self.shared))
    }
}

impl PeerStore for PgStore {
    fn link(&self, _fleet: &FleetMap, a: &str, b: &str) -> Result<bool, StoreError> {
        self.block(links::link(&self.db, a, b))
    }

    fn unlink(&self, _fleet: Option<&FleetMap>, a: &str, b: &str) -> Result<bool, StoreError> {
        self.block(links::unlink(&self.db, a, b))
    }

    fn links(&self) -> Result<Links, StoreError> {
        let links = self.block(links::links(&self.db))?;
        *self.shared.last_links.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(links.clone());
        Ok(links)
    }

    fn send(&self, _fleet: &FleetMap, draft: &Draft, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
        self.block(mail::send(&self.db, draft, limits, now))
    }

    fn reply(&self, _fleet: &FleetMap, p: &ReplyParams, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
        self.block(mail::reply(&self.db, p, limits, now))
    }

    fn inbox(&self, p: &str, now: SystemTime) -> Result<Vec<Message>, StoreError> {
        self.block(mail::inbox(&self.db, p, now))
    }

    fn lease(&self, p: &str, urgent_only: bool, now: SystemTime) -> Result<Vec<Message>, StoreError> {
        self.block(mail::lease(&self.db, p, urgent_only, now))
    }

    fn ack(&self, p: &str, ids: &[String], limits: &Limits, now: SystemTime) -> Result<usize, StoreError> {
        self.block(mail::ack(&self.db, p, ids, limits, now))
    }

    fn acknowledge(&self, p: &str, id: &str, limits: &Limits, now: SystemTime) -> Result<Acknowledged, StoreError> {
        self.block(mail::acknowledge(&self.db, p, id, limits, now))
    }

    fn outbox(&self, p: &str, limit: Option<usize>) -> Result<Vec<OutboxRow>, StoreError> {
        self.block(mail::outbox(&self.db, p, limit))
    }

    fn mailbox(&self, p: &str) -> Result<Inbox, StoreError> {
        self.block(mail::mailbox(&self.db, p))
    }

    fn waiting(&self) -> Result<BTreeMap<String, usize>, StoreError> {
        self.block(mail::waiting(&self.db))
    }
}

impl EventLog for PgStore {
    fn recent(&self, node: Option<&str>, limit: usize) -> Result<(Vec<Event>, Cursor), StoreError> {
        self.block(events::recent(&self.db, node, limit))
    }

    fn follow(&self, cursor: &mut Cursor, node: Option<&str>) -> Result<Vec<Event>, StoreError> {
        self.block(events::follow(&self.db, cursor, node))
    }
}

impl StateStore for PgStore {
    fn publish(&self, local: &FleetMap) -> Result<(), StoreError> {
        self.block(registry::publish(&self.db, &self.shared, local))
    }

    fn registry(&self, local: &FleetMap) -> Result<FleetMap, StoreError> {
        self.block(registry::registry(&self.db, &self.shared, local))
    }

    fn record_sweep(&self, sweep: &SweepStatus) -> Result<(), StoreError> {
        self.block(admin::record_sweep(&self.db, sweep))
    }

    fn last_sweep(&self) -> Result<Option<SweepStatus>, StoreError> {
        self.block(admin::last_sweep(&self.db))
    }

    fn check(&self) -> Result<String, StoreError> {
        self.block(admin::check(&self.db))
    }
}

//! The daemon's side of the fleet database (spec 80): opening the
//! configured store, publishing this host's fleet map, following the
//! other hosts' changes (hints) to re-render fragments, the settings the
//! fleet decides, and what `status` and `verify` say of the store.
//!
//! The store itself is behind [`memoryd_core::store::StateStore`] like the
//! file store; [`Daemon::pg`] is the same object seen as a [`PgStore`], for
//! what only it has (its state, hints, clock skew).

use crate::daemon::Daemon;
use anyhow::Context;
use memoryd_core::config::{Backend, Config, PresenceConfig};
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::paths::Paths;
use memoryd_core::ops::verify::FleetCheck;
use memoryd_core::store::{FileStore, StateStore};
use memoryd_proto::status::StoreStatus;
use memoryd_store_pg::{Hint, Options, PgStore, StoreState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Past this, `verify` warns about the clock skew between host and database.
const SKEW_WARN: Duration = Duration::from_secs(5);

/// A store, and the same store as the fleet database when it is that one.
pub type Opened = (Arc<dyn StateStore>, Option<Arc<PgStore>>);

/// The store the config names, and the fleet database as itself when it is
/// that one. Opening the database does not wait for it: the daemon starts
/// with the store `connecting` and serves what is per host meanwhile.
pub fn open(paths: &Paths, files: &FileGuard, config: &Config) -> anyhow::Result<Opened> {
    match config.store.backend {
        Backend::File => {
            let store = FileStore::open(paths, files).context("cannot open the store S/store")?;
            Ok((Arc::new(store), None))
        }
        Backend::Postgres => {
            let options = Options { instance: Some(instance(paths, files)?), ..Options::from_config(config, true) };
            let pg = Arc::new(PgStore::open(options).context("cannot open the fleet database")?);
            Ok((pg.clone(), Some(pg)))
        }
    }
}

/// This root's lasting identity in the fleet (`S/fleet-instance`, made
/// once): the first part of each boot id the daemon claims its host's row
/// with, so a daemon restarted after a crash takes its own claim over at
/// once, while another machine given the same host id is refused.
fn instance(paths: &Paths, files: &FileGuard) -> anyhow::Result<String> {
    let path = paths.state.join("fleet-instance");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let id = memoryd_store_pg::random_id();
    files.create_dir_all(&paths.state, 0o700).context("cannot create the state dir")?;
    files
        .write_durable(&path, format!("{id}\n").as_bytes(), Some(0o600))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// The fleet's presence settings (`fleet_settings`: floor, thresholds,
/// inbox capacity) over the config's, which in postgres mode only seed
/// them; None before the store first read them. `presence.sweep_every`
/// and the history keys stay per host.
fn fleet_presence(pg: &PgStore, config: &PresenceConfig) -> Option<PresenceConfig> {
    let fleet = pg.fleet_settings()?;
    Some(PresenceConfig {
        min_client_version: fleet.min_client_version,
        degraded_after: fleet.degraded_after,
        offline_after: fleet.offline_after,
        inbox_capacity: fleet.inbox_capacity,
        ..config.clone()
    })
}

impl Daemon {
    /// The presence settings in force.
    pub fn presence_config(&self) -> PresenceConfig {
        let config = self.config();
        self.pg
            .as_deref()
            .and_then(|pg| fleet_presence(pg, &config.presence))
            .unwrap_or_else(|| config.presence.clone())
    }

    /// The fleet that links, visibility and sends are checked against:
    /// every present peer of every host with the fleet database, else this
    /// host's map. A store call: run it on a blocking thread.
    /// This host's map is published first if it is not yet since the last
    /// (re)connect: a call that comes as the store turns up does not miss
    /// this host's own peers.
    pub fn registry(&self) -> Result<memoryd_core::fleet::FleetMap, memoryd_proto::RpcError> {
        let local = self.fleet_map()?;
        if self.pg.is_some() && !self.published.load(Ordering::Acquire) {
            self.publish_now(&local);
        }
        self.store.registry(&local).map_err(crate::presence::rpc_error)
    }

    /// Makes this host's map its part of the fleet registry (at start, on
    /// every map change, after every reconnect). Nothing to do with the
    /// file store, whose registry is the map itself.
    pub async fn publish(self: &Arc<Self>) {
        if self.pg.is_none() {
            return;
        }
        // Until this succeeds, the registry may miss what changed.
        self.published.store(false, Ordering::Release);
        let Ok(map) = self.fleet_map() else { return };
        self.blocking(move |d| d.publish_now(&map)).await;
    }

    /// [`publish`](Self::publish) on this (blocking) thread.
    fn publish_now(&self, map: &memoryd_core::fleet::FleetMap) {
        match self.store.publish(map) {
            Ok(()) => {
                self.published.store(true, Ordering::Release);
                tracing::info!(peers = map.peers.len(), "fleet map published to the fleet database");
            }
            // Said once per outage by the store; published again on reconnect.
            Err(e) => tracing::info!(error = %e, "fleet map not published yet; it is once the fleet database is up"),
        }
    }

    /// What `status` says of the store.
    pub fn store_status(&self) -> StoreStatus {
        let Some(pg) = &self.pg else {
            return StoreStatus { backend: "file".into(), state: "up".into(), ..StoreStatus::default() };
        };
        let state = pg.state();
        let (since, last_error) = match &state {
            StoreState::Connecting => (None, None),
            StoreState::Up { since } => (Some((*since).into()), None),
            StoreState::Down { since, error } => (Some((*since).into()), Some(error.clone())),
            StoreState::Incompatible { reason } => (None, Some(reason.clone())),
        };
        StoreStatus {
            backend: "postgres".into(),
            state: state.name().into(),
            since,
            last_error,
            host_id: Some(pg.host_id().to_owned()),
            schema_name: Some(self.config().store.postgres.schema.clone()),
            schema: pg.schema().map(|(version, _)| version),
            compat_floor: pg.schema().map(|(_, floor)| floor),
            clock_skew_ms: Some(pg.clock_skew_ms()),
        }
    }

    /// What `verify`'s `store` rows say of the fleet database (None with
    /// the file store).
    pub fn fleet_check(&self) -> Option<FleetCheck> {
        let pg = self.pg.as_deref()?;
        let config = self.config();
        let url = memoryd_store_pg::redacted(config.store.postgres.url.as_deref().unwrap_or(""));
        let state = match pg.state() {
            StoreState::Up { .. } => Ok(()),
            StoreState::Connecting => Err("not connected yet (connecting)".to_owned()),
            StoreState::Down { error, .. } => Err(format!("down: {error}")),
            StoreState::Incompatible { reason } => Err(format!("incompatible: {reason}")),
        };
        let mut warnings: Vec<String> = pg
            .name_conflicts()
            .into_iter()
            .map(|(personality, owner)| {
                format!(
                    "name conflict: {personality} is owned by host {owner}; this host's {personality} keeps its \
                     surfaces but its sessions are refused (peer.name_taken). Rename one, or once {owner} \
                     is gone for good: memoryctl fleet release {personality}"
                )
            })
            .collect();
        if let Some(fleet) = fleet_presence(pg, &config.presence) {
            warnings.extend(settings_differences(&config.presence, &fleet));
        }
        let skew = pg.clock_skew_ms();
        if skew.unsigned_abs() > SKEW_WARN.as_millis() as u64 {
            warnings.push(format!(
                "this host's clock is {skew} ms off the database's (over {}s); stored times use the database's clock, \
                 but fix the host's time sync",
                SKEW_WARN.as_secs()
            ));
        }
        Some(FleetCheck { url, state, warnings })
    }

    /// Acts on one hint of another host's change: re-renders the fragments
    /// that show it (never emptied: a failed read keeps the last bytes).
    async fn on_hint(self: &Arc<Self>, hint: Hint) {
        tracing::debug!(?hint, "fleet hint");
        match hint {
            Hint::Presence { node, .. } => {
                let Some((_, personality)) = memoryd_core::fleet::names::split_node_id(&node) else { return };
                let moved = vec![personality.to_owned()];
                self.blocking(move |d| d.refresh_linked(&moved)).await;
            }
            Hint::Peer { personality } => {
                self.blocking(move |d| d.refresh_linked(&[personality])).await;
            }
            Hint::Inbox { personality } => self.refresh_fragments(Some(vec![personality])),
            Hint::Link { a, b } => self.refresh_fragments(Some(vec![a, b])),
            // Reconnected (or many nodes moved): this host's part of the
            // registry may be gone or stale, and any fragment may show it.
            Hint::Roster => {
                self.publish().await;
                self.refresh_fragments(None);
            }
            // The settings are read at each use.
            Hint::Settings => {}
        }
    }
}

/// One sentence per presence setting of the config that differs from the
/// fleet's value (spec 80: the config only seeds the fleet's settings).
fn settings_differences(config: &PresenceConfig, fleet: &PresenceConfig) -> Vec<String> {
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    let floor = |v: &PresenceConfig| v.min_client_version.map_or("none".to_owned(), |v| v.to_string());
    [
        ("presence.min_client_version", floor(config), floor(fleet)),
        ("presence.degraded_after", dur(config.degraded_after), dur(fleet.degraded_after)),
        ("presence.offline_after", dur(config.offline_after), dur(fleet.offline_after)),
        ("presence.inbox_capacity", config.inbox_capacity.to_string(), fleet.inbox_capacity.to_string()),
    ]
    .into_iter()
    .filter(|(_, mine, theirs)| mine != theirs)
    .map(|(key, mine, theirs)| {
        format!(
            "{key} is {mine} here but {theirs} in the fleet, which applies (change it with: memoryctl fleet settings)"
        )
    })
    .collect()
}

/// Follows the fleet database's hints for as long as the daemon runs;
/// publishes this host's map first (it is published again on reconnect).
pub async fn follow_hints(daemon: Arc<Daemon>) {
    let Some(pg) = daemon.pg.clone() else { return };
    let mut hints = pg.hints();
    daemon.publish().await;
    loop {
        let hint = tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return,
            hint = hints.recv() => hint,
        };
        match hint {
            Ok(hint) => daemon.on_hint(hint).await,
            // Hints were missed: act as after a reconnect.
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "fleet hints missed; reloading everything");
                daemon.on_hint(Hint::Roster).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_settings_are_named() {
        let config = Config::default().presence;
        assert!(settings_differences(&config, &config).is_empty());
        let mut fleet = config.clone();
        fleet.degraded_after = Duration::from_secs(2);
        fleet.min_client_version = Some("1.2".parse().unwrap_or_else(|e| panic!("{e}")));
        let rows = settings_differences(&config, &fleet);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows[0].contains("presence.min_client_version is none here but 1.2"), "{rows:?}");
        assert!(rows[1].contains("presence.degraded_after is 30s here but 2s"), "{rows:?}");
    }
}

//! The daemon's provisioning work: fleet refreshes, fleet changes, sweeps
//! and provision requests. Each runs on a blocking thread with the domain's
//! [`Provisioner`], under the provision lock it shares with any `memoryctl`.

use crate::daemon::Daemon;
use crate::server::ProgressSink;
use crate::tasks::{WATCH_QUEUE, every, is_change};
use memoryd_core::fleet::{self, FleetDiff, FleetPeer, FleetRead};
use memoryd_core::host::lock::{LockError, ProvisionLock};
use memoryd_core::ops::install::check_executable;
use memoryd_core::ops::provision::{self, PeerReport, PeerRequest, ProvisionError, Provisioner, SweepReport, Tools};
use memoryd_core::ops::report::Tally;
use memoryd_core::ops::{update, verify};
use memoryd_core::surfaces::SurfaceMemory;
use memoryd_proto::ProgressStatus;
use memoryd_proto::host::{Check, Updated, Verified};
use memoryd_proto::status::SweepStatus;
use memoryd_proto::{ErrorKind, RpcError};
use notify::Watcher;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, interval};

/// The refusal a caller sees for a provisioning failure.
pub fn rpc_error(e: ProvisionError) -> RpcError {
    match &e {
        ProvisionError::Lock(LockError::Busy { holder, .. }) => {
            RpcError::new(ErrorKind::LockBusy, e.to_string()).with_details(json!({"holder": holder}))
        }
        ProvisionError::Lock(LockError::Cancelled) => {
            RpcError::new(ErrorKind::DaemonShuttingDown, "memoryd is shutting down; try again when it is back")
        }
        ProvisionError::Slot(_) => RpcError::new(ErrorKind::SlotForeign, e.to_string()),
        _ => RpcError::new(ErrorKind::Internal, e.to_string()),
    }
}

/// The fleet map in force and the provisioning that follows it.
pub struct FleetState {
    pub map: Mutex<FleetRead>,
    /// Whether the fleet map watcher runs (false while it only polls).
    pub watching: AtomicBool,
    /// Taken by every process that writes surfaces, the slot or the map.
    pub provision_lock: ProvisionLock,
    /// The last whole-fleet sweep, for `status`.
    pub last_sweep: Mutex<Option<SweepStatus>>,
    /// The last fleet refresh error, logged once until it changes.
    pub refresh_error: Mutex<Option<String>>,
    /// What the sweeps found, so that a no-op sweep reads only what changed.
    pub surfaces: SurfaceMemory,
}

impl FleetState {
    pub fn new(map: FleetRead, provision_lock: ProvisionLock) -> FleetState {
        FleetState {
            map: Mutex::new(map),
            watching: AtomicBool::new(false),
            provision_lock,
            last_sweep: Mutex::new(None),
            refresh_error: Mutex::new(None),
            surfaces: SurfaceMemory::default(),
        }
    }
}

impl Daemon {
    /// [`provisioning`](Self::provisioning) for other modules' jobs.
    pub async fn provisioning_job<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&Provisioner<'_>) -> T + Send + 'static,
    ) -> T {
        self.provisioning(job).await
    }

    /// Runs `job` with a provisioner on a blocking thread.
    async fn provisioning<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&Provisioner<'_>) -> T + Send + 'static,
    ) -> T {
        self.provisioning_for(ProgressSink::discard(), job).await
    }

    /// [`Self::provisioning`] for a client's request: every batch done is a
    /// `host.working` notification on its connection.
    async fn provisioning_for<T: Send + 'static>(
        self: &Arc<Self>,
        sink: ProgressSink,
        job: impl FnOnce(&Provisioner<'_>) -> T + Send + 'static,
    ) -> T {
        let config = self.config();
        let index = self.vault.index();
        self.blocking(move |daemon| {
            let tools = Tools::new(&daemon.host.paths, &config, &daemon.host.running_exe, daemon.host.sandboxed);
            let cancelled = || daemon.host.shutdown.begun.is_cancelled();
            let on_batch = |what: &str, done, total| sink.working(what, done, Some(total));
            job(&Provisioner {
                paths: &daemon.host.paths,
                files: &daemon.host.files,
                tools: &tools,
                config: &config,
                store: &*daemon.store,
                index: Some(&index),
                lock: &daemon.fleet.provision_lock,
                cancelled: &cancelled,
                on_batch: &on_batch,
                memory: Some(&daemon.fleet.surfaces),
            })
        })
        .await
    }

    /// Sweeps `peers`, or the whole map when None; a whole-map sweep is
    /// what `status` reports as the last sweep.
    pub async fn sweep(
        self: &Arc<Self>,
        peers: Option<Vec<FleetPeer>>,
        why: &'static str,
        progress: ProgressSink,
    ) -> Result<SweepReport, RpcError> {
        let whole = peers.is_none();
        let peers = match peers {
            Some(peers) => peers,
            None => match self.fleet.map.lock().ok().and_then(|f| f.map().map(|m| m.peers.clone())) {
                Some(peers) => peers,
                None => {
                    let fleet = self.fleet_describe();
                    tracing::warn!(why, fleet, "no fleet map to sweep");
                    crate::sdnotify::status(&format!(
                        "serving; the last sweep failed: there is no fleet map ({fleet})"
                    ));
                    return Err(RpcError::new(
                        ErrorKind::FleetUnavailable,
                        format!(
                            "there is no fleet map to sweep: {fleet}; memoryd refreshes it from `iapeer list --json` \
                             (check iapeer_bin with: memoryctl config check)"
                        ),
                    ));
                }
            },
        };
        let started = Instant::now();
        let report = self
            .provisioning_for(progress, move |p| {
                let report = p.sweep(&peers)?;
                // Kept on disk too, for a status read while no daemon runs.
                let record = SweepStatus {
                    at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    ok: report.ok_count(),
                    failed: report.pairs.len() - report.ok_count(),
                };
                if whole && let Err(e) = p.store.record_sweep(&record) {
                    tracing::warn!(error = %e, "cannot record the sweep for status");
                }
                Ok((report, record))
            })
            .await
            .map_err(rpc_error);
        let (report, record) = match report {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(why, error = %e.message, "sweep failed");
                if whole {
                    crate::sdnotify::status(&format!("serving; the last sweep failed: {}", e.message));
                }
                return Err(e);
            }
        };
        let failures = report.failures();
        for f in &failures {
            tracing::warn!(
                personality = f.personality,
                runtime = f.runtime,
                surface = f.surface,
                detail = f.detail,
                "surface failed"
            );
        }
        for s in &report.skipped {
            tracing::debug!(personality = s.personality, reason = s.reason, "peer skipped");
        }
        tracing::info!(
            why,
            pairs = report.pairs.len(),
            failed = report.pairs.len() - report.ok_count(),
            skipped = report.skipped.len(),
            writes = report.writes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sweep done"
        );
        if whole {
            crate::sdnotify::status(&format!(
                "serving; last sweep {}: {} peer-runtime(s) ok, {} failed",
                record.at, record.ok, record.failed
            ));
            if let Ok(mut last) = self.fleet.last_sweep.lock() {
                *last = Some(record);
            }
        }
        Ok(report)
    }

    /// Swaps in what the map file now says and returns what to act on.
    /// A missing or broken map is never taken for an empty fleet: the
    /// last good one stays.
    pub fn apply_fleet(&self, new: FleetRead) -> Option<FleetDiff> {
        let mut current = self.fleet.map.lock().ok()?;
        if *current == new {
            return None;
        }
        match (&*current, &new) {
            (FleetRead::Map(_), FleetRead::Missing | FleetRead::Unreadable(_)) => {
                tracing::warn!(
                    fleet = new.describe(),
                    "the fleet map is gone or unreadable; keeping the last good map"
                );
                None
            }
            (_, FleetRead::Map(map)) => {
                let diff = fleet::diff(current.map(), map);
                tracing::info!(
                    fleet = new.describe(),
                    provision = diff.provision.len(),
                    gone = diff.gone.len(),
                    "fleet map changed"
                );
                *current = new;
                Some(diff)
            }
            _ => {
                *current = new;
                None
            }
        }
    }

    /// Acts on a fleet change: new peers, new session runtimes and moved
    /// folders are provisioned now; peers that left are only hidden.
    pub async fn on_fleet_change(self: &Arc<Self>, diff: FleetDiff) {
        self.publish().await;
        for personality in &diff.gone {
            tracing::info!(personality, "peer left the fleet map: hidden, not revoked and not unprovisioned");
        }
        if diff.provision.is_empty() {
            return;
        }
        let peers = diff.provision.into_iter().map(|(peer, _)| peer).collect();
        // The outcome is logged by `sweep`.
        let _ = self.sweep(Some(peers), "fleet-change", ProgressSink::discard()).await;
    }

    /// Re-reads the map file and acts on the change.
    pub async fn reload_fleet(self: &Arc<Self>) {
        if let Some(diff) = self.blocking(|d| d.apply_fleet(FleetRead::load(&d.host.paths.fleet_map))).await {
            self.on_fleet_change(diff).await;
        }
    }

    /// Refreshes the map from `iapeer list --json`; a failure keeps the
    /// last map and is logged once per distinct error.
    pub async fn refresh_fleet(self: &Arc<Self>) {
        let result = self.provisioning(|p| p.refresh_fleet()).await;
        let error = result.as_ref().err().map(ToString::to_string);
        if let Ok(mut last) = self.fleet.refresh_error.lock()
            && *last != error
        {
            match &error {
                Some(e) => tracing::warn!(error = e, "fleet refresh failed; keeping the last map"),
                None if last.is_some() => tracing::info!("fleet refresh works again"),
                None => {}
            }
            *last = error;
        }
        if let Ok(refreshed) = result
            && refreshed.changed
        {
            self.reload_fleet().await;
        }
    }

    /// `host.update`: steps 1 to 7 stream as progress; step 8 (the restart
    /// onto `memoryd_bin`) happens after the reply, unless skipped.
    pub async fn update(self: &Arc<Self>, skip: Vec<String>, progress: ProgressSink) -> Updated {
        let sink = progress.clone();
        let problems = self
            .provisioning_for(progress, move |p| {
                let mut send = |name: &str, status: ProgressStatus, detail: &str| sink.send(name, status, detail);
                let mut tally = Tally::new(&mut send);
                update::run(p, &skip, update::INIT_STEPS, &mut tally);
                let bin = &p.tools.binaries.memoryd;
                let restart = if skip.iter().any(|s| s == "memoryd") {
                    tally.line("memoryd", ProgressStatus::Skip, "skipped on request");
                    false
                } else if let Err(e) = check_executable(bin) {
                    tally.line("memoryd", ProgressStatus::Fail, &format!("cannot restart: {e}"));
                    false
                } else {
                    let detail = format!("restarting onto {} after this reply; sockets stay open", bin.display());
                    tally.line("memoryd", ProgressStatus::Ok, &detail);
                    true
                };
                (tally.problems, restart)
            })
            .await;
        let (problems, restart) = problems;
        self.host.restart_pending.store(restart, Ordering::Relaxed);
        Updated { ok: problems == 0, problems, version: memoryd_core::VERSION.to_owned(), restart }
    }

    /// `host.verify`: every check in order, streamed; repairs when asked.
    pub async fn verify(self: &Arc<Self>, repair: bool, progress: ProgressSink) -> Verified {
        let pid = std::process::id();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let refused_rescan = self.vault.refused.load(Ordering::Relaxed);
        let embeddings = match &self.vault.embedder {
            Some(embedder) => Some(embedder.probe().await),
            None => None,
        };
        let fleet = self.blocking(Daemon::fleet_check).await;
        let checks = self
            .provisioning_for(progress.clone(), move |p| {
                let mut checks = Vec::new();
                let ok = {
                    let mut send = |name: &str, status: ProgressStatus, detail: &str| {
                        progress.send(name, status, detail);
                        checks.push(Check { name: name.to_owned(), status, detail: detail.to_owned() });
                    };
                    let mut tally = Tally::new(&mut send);
                    verify::config(p.config, None, &mut tally);
                    // The daemon runs these checks itself, so it is answering.
                    let heartbeat = verify::heartbeat_from_disk(&p.paths.heartbeat, p.config, SystemTime::now());
                    tally.line("memoryd-heartbeat", heartbeat.0, &heartbeat.1);
                    tally.line("memoryd-socket", ProgressStatus::Ok, &format!("answering (pid {pid})"));
                    verify::Verify { p, repair, home, refused_rescan, embeddings, fleet }.rest(&mut tally);
                    tally.problems == 0
                };
                (ok, checks)
            })
            .await;
        Verified { ok: checks.0, checks: checks.1 }
    }

    /// `peer.provision` / `peer.unprovision`.
    pub async fn provision(
        self: &Arc<Self>,
        request: PeerRequest,
        provisioning: bool,
        progress: ProgressSink,
    ) -> Result<PeerReport, RpcError> {
        // Validating looks at the peer's folder: on a blocking thread.
        let request = self
            .blocking(move |_| provision::validate(&request, provisioning).map(|()| request))
            .await
            .map_err(|e| RpcError::new(ErrorKind::RequestInvalid, e))?;
        tracing::info!(
            personality = request.personality,
            runtime = request.runtime,
            occasion = request.occasion,
            cwd = %request.cwd.display(),
            "{}",
            if provisioning { "provision-peer" } else { "unprovision-peer" }
        );
        let report = self
            .provisioning_for(progress, move |p| {
                if provisioning { p.provision_peer(&request) } else { p.unprovision_peer(&request) }
            })
            .await
            .map_err(rpc_error)?;
        if report.fleet_updated {
            self.reload_fleet().await;
        }
        Ok(report)
    }
}

/// How often the fleet map's mtime is polled when no watcher runs.
const POLL_EVERY: Duration = Duration::from_secs(5);

/// Refreshes the fleet map every `fleet_refresh_interval` (the first
/// refresh is the start-up sweep's).
pub async fn fleet_refresh(daemon: Arc<Daemon>) {
    every(&daemon, |c| c.fleet_refresh_interval, || daemon.refresh_fleet()).await;
}

/// At start-up, indexes the vault and refreshes the fleet map, then sweeps
/// every peer (rendering fragments with the notes); then sweeps every
/// `sweep_interval`.
pub async fn surface_sweep(daemon: Arc<Daemon>) {
    daemon.rescan_vault("start-up").await;
    daemon.refresh_fleet().await;
    // Failures are logged and kept for `status` by the sweep itself.
    let _ = daemon.sweep(None, "start-up", ProgressSink::discard()).await;
    every(
        &daemon,
        |c| c.sweep_interval,
        || async {
            let _ = daemon.sweep(None, "timer", ProgressSink::discard()).await;
        },
    )
    .await;
}

/// The fleet map watcher, started before the first heartbeat so that the
/// heartbeat's `watch=` tells the truth from the start.
pub struct FleetWatch {
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::Receiver<Result<(), String>>,
}

impl FleetWatch {
    /// Watches `S/` (the parent dir, so atomic renames are seen) for
    /// events on the fleet map; on failure the daemon polls (`watch=off`).
    pub fn start(daemon: &Daemon) -> FleetWatch {
        // Bounded: a burst of events past it coalesces (a full channel
        // already holds a wake-up for the watcher task).
        let (tx, events) = mpsc::channel::<Result<(), String>>(WATCH_QUEUE);
        let map_name = daemon.host.paths.fleet_map.file_name().map(|n| n.to_os_string());
        let handler = move |event: notify::Result<notify::Event>| {
            let sent = match event {
                Ok(event)
                    if is_change(&event)
                        && event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == map_name) =>
                {
                    tx.try_send(Ok(()))
                }
                Ok(_) => Ok(()),
                Err(e) => tx.try_send(Err(e.to_string())),
            };
            drop(sent);
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&daemon.host.paths.state, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(task = "fleet-watcher", error = %e, "cannot watch the fleet map; polling it every 5 s (watch=off)");
                None
            }
        };
        daemon.fleet.watching.store(watcher.is_some(), Ordering::Relaxed);
        FleetWatch { _watcher: watcher, events }
    }
}

/// Acts on fleet map changes as they come; polls the map's mtime while the
/// watcher is off.
pub async fn fleet_watcher(daemon: Arc<Daemon>, watch: FleetWatch) {
    let FleetWatch { _watcher, events: mut rx } = watch;
    let mut poll = interval(POLL_EVERY);
    poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_mtime = daemon.blocking(|d| mtime(&d.host.paths.fleet_map)).await;
    loop {
        tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return,
            event = rx.recv(), if daemon.fleet.watching.load(Ordering::Relaxed) => match event {
                Some(Ok(())) => {
                    // At once: every writer of the map replaces it by a
                    // rename, so its first event is a whole file and a
                    // newborn need not wait. Events that came during a
                    // reload may be a newer map: one more reload.
                    loop {
                        daemon.reload_fleet().await;
                        let mut more = false;
                        while rx.try_recv().is_ok() {
                            more = true;
                        }
                        if !more {
                            break;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(task = "fleet-watcher", error = %e, "the fleet map watcher failed; polling every 5 s (watch=off)");
                    daemon.fleet.watching.store(false, Ordering::Relaxed);
                }
                None => daemon.fleet.watching.store(false, Ordering::Relaxed),
            },
            _ = poll.tick(), if !daemon.fleet.watching.load(Ordering::Relaxed) => {
                let now = daemon.blocking(|d| mtime(&d.host.paths.fleet_map)).await;
                if now != last_mtime {
                    last_mtime = now;
                    daemon.reload_fleet().await;
                }
            }
        }
    }
}

fn mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

//! The daemon's long-running tasks: heartbeat, fleet map watcher, signals.

use crate::daemon::Daemon;
use crate::sdnotify;
use crate::server::ProgressSink;
use memoryd_core::config::Config;
use notify::Watcher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at};

/// How often the fleet map's mtime is polled when no watcher runs.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Fragment re-renders asked for closer together than this are one batch.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How many watcher events wait at most for the task that acts on them.
pub const WATCH_QUEUE: usize = 64;

/// Runs `tick` every `period_of(config)` (not at once), following config
/// reloads, until the shutdown begins.
async fn every<Fut: Future<Output = ()>>(
    daemon: &Daemon,
    period_of: impl Fn(&Config) -> Duration,
    mut tick: impl FnMut() -> Fut,
) {
    let mut config = daemon.subscribe_config();
    loop {
        let period = period_of(&config.borrow_and_update());
        let mut ticker = interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = daemon.host.shutdown.begun.cancelled() => return,
                changed = config.changed() => {
                    if changed.is_err() { return; }
                    if period_of(&config.borrow()) != period { break; }
                }
                _ = ticker.tick() => tick().await,
            }
        }
    }
}

/// Writes the heartbeat every `heartbeat_interval` and pings the systemd
/// watchdog from the same loop, so a stuck loop stops the pings.
pub async fn heartbeat(daemon: Arc<Daemon>) {
    let watchdog = sdnotify::watchdog_period();
    let period = daemon.config().heartbeat_interval;
    if let Some(w) = watchdog
        && period > w / 2
    {
        tracing::warn!(heartbeat_interval = ?period, watchdog = ?w, "heartbeat_interval is longer than half the systemd watchdog; the supervisor may kill a healthy daemon");
    }
    every(
        &daemon,
        |c| c.heartbeat_interval,
        || async {
            // The write (and the ping, a datagram that may block) on a
            // blocking thread; a stuck write still stops the pings.
            daemon
                .blocking(move |d| {
                    if let Err(e) = d.beat() {
                        tracing::error!(task = "heartbeat", error = %e, "cannot write the heartbeat");
                    } else if watchdog.is_some() {
                        sdnotify::notify("WATCHDOG=1");
                    }
                    if let Err(e) = crate::logging::rotate_if_large(&d.host.files, &d.config()) {
                        tracing::warn!(task = "heartbeat", error = %e, "cannot rotate the log");
                    }
                })
                .await
        },
    )
    .await;
}

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

/// Re-renders the fragments asked for, a burst of requests at a time.
pub async fn fragment_renderer(daemon: Arc<Daemon>) {
    loop {
        tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return,
            () = daemon.vault.fragments.wait() => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        let Some(wanted) = daemon.vault.fragments.take() else { continue };
        let Some(map) = daemon.fleet.map.lock().ok().and_then(|f| f.map().cloned()) else { continue };
        let peers: Vec<_> =
            map.peers.into_iter().filter(|p| wanted.as_ref().is_none_or(|w| w.contains(&p.personality))).collect();
        match daemon.provisioning_job(move |p| p.render_fragments(&peers)).await {
            Ok((written, _, failed)) if written + failed > 0 => {
                tracing::info!(written, failed, "fragments re-rendered");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(task = "fragments", error = %e, "cannot re-render fragments"),
        }
    }
}

/// Demotes silent sessions every `presence.sweep_every`.
pub async fn presence_sweep(daemon: Arc<Daemon>) {
    every(&daemon, |c| c.presence.sweep_every, || daemon.presence_sweep()).await;
    // Stopping (or restarting): the heartbeats kept in memory go to disk.
    daemon.presence_sweep().await;
}

/// Whether a watcher event may have changed a file. Opening and reading
/// are events too: counting them, memoryd's own reads of the map or the
/// vault would wake it again, for ever.
pub fn is_change(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
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

/// SIGTERM/SIGINT begin the shutdown (a second one exits 1 at once);
/// SIGHUP reloads the config.
pub async fn signals(daemon: Arc<Daemon>, on_second: impl Fn() + Send + 'static) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!(task = "signals", "cannot install signal handlers");
        daemon.host.failed.store(true, Ordering::Relaxed);
        daemon.host.shutdown.begun.cancel();
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                if let Err(e) = daemon.blocking(|d| d.reload(&crate::server::ProgressSink::discard())).await {
                    tracing::error!(error = %e, "SIGHUP: the new config is refused; the running configuration is kept");
                }
                continue;
            }
        };
        if daemon.host.shutdown.begun.is_cancelled() {
            tracing::warn!(signal = name, "second signal during shutdown: exiting at once");
            on_second();
        }
        tracing::info!(signal = name, "shutting down");
        daemon.host.shutdown.begun.cancel();
    }
}

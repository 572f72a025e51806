//! The task runner (`every`) and the host's own tasks: the heartbeat and
//! the signals. The other parts' tasks live with them: the fleet's in
//! provisioning.rs, the presence sweep in presence.rs, the fragment
//! renderer and the vault watcher in vault.rs, the MCP endpoint in mcp.rs.

use crate::daemon::Daemon;
use crate::sdnotify;
use memoryd_core::config::Config;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

/// How many watcher events wait at most for the task that acts on them.
pub const WATCH_QUEUE: usize = 64;

/// Runs `tick` every `period_of(config)` (not at once), following config
/// reloads, until the shutdown begins.
pub async fn every<Fut: Future<Output = ()>>(
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

/// Whether a watcher event may have changed a file. Opening and reading
/// are events too: counting them, memoryd's own reads of the map or the
/// vault would wake it again, for ever.
pub fn is_change(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
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

//! `daemon start`, `daemon stop` and `shutdown`.

use crate::{Ctx, Failure, Silent};
use anyhow::{Context as _, bail};
use memoryd_core::host::egress::Egress;
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::instance::{self, DaemonCheck, KillOutcome};
use memoryd_proto::host::{Restarting, Stopping};
use memoryd_proto::status::HostStatus;
use memoryd_proto::{Command, ErrorKind};
use serde_json::json;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long `daemon start` waits for the new daemon to answer.
const START_LIMIT: Duration = Duration::from_secs(15);

/// The installed memoryd: `memoryd_bin`, else the sibling of this binary.
fn memoryd_bin(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &ctx.config.memoryd_bin {
        return Ok(bin.clone());
    }
    let me = std::env::current_exe().and_then(|p| p.canonicalize()).context("cannot find this memoryctl binary")?;
    Ok(me.with_file_name("memoryd"))
}

fn guards(ctx: &Ctx, allowed: Vec<PathBuf>) -> (FileGuard, Egress) {
    (FileGuard::for_install(&ctx.paths.root, ctx.config.vault.as_deref()), Egress::from_env(allowed))
}

pub async fn start(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if let Some(client) = ctx.connect().await? {
        let pid = client.hello.pid;
        if ctx.json {
            crate::print_json(&json!({"started": false, "alreadyRunning": true, "pid": pid}))?;
        } else {
            println!("memoryd is already running (pid {pid})");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // A hung daemon must be ended first, and a root with no install gets
    // none: a mistyped --root would otherwise start a daemon that guards
    // nothing and reports healthy.
    if !ctx.installed || instance::lock_is_held(&ctx.paths.instance_lock).unwrap_or(false) {
        return Err(ctx.absent().into());
    }
    let bin = memoryd_bin(ctx)?;
    if !bin.is_file() {
        return Err(Failure::new(
            ErrorKind::DaemonStartFailed,
            format!(
                "{} is missing; build or install memoryd, or set memoryd_bin in {}",
                bin.display(),
                ctx.config_file.display()
            ),
        )
        .into());
    }
    let (files, egress) = guards(ctx, vec![bin.clone()]);
    files.create_dir_all(&ctx.paths.logs, 0o700)?;
    let log_path = ctx.paths.logs.join("memoryd.log");
    let log = files.open_append(&log_path)?;
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let root = ctx.paths.root.as_os_str().to_owned();
    let mut child = egress.spawn_detached(&bin, &[std::ffi::OsStr::new("--root"), &root], log)?;
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Some(status) = child.try_wait().context("cannot watch the new memoryd")? {
            let why =
                first_error(&log_path, offset).unwrap_or_else(|| format!("it exited with {status} and logged nothing"));
            let message = format!("memoryd did not start: {why} (log: {})", log_path.display());
            return Err(Failure::new(ErrorKind::DaemonStartFailed, message).into());
        }
        if let Some(client) = ctx.connect().await? {
            if ctx.json {
                println!("{}", json!({"started": true, "pid": client.hello.pid, "log": log_path}));
            } else {
                println!("memoryd started (pid {}), logging to {}", client.hello.pid, log_path.display());
            }
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            let message = format!(
                "memoryd (pid {}) did not answer within {}s; see {}",
                child.id(),
                START_LIMIT.as_secs(),
                log_path.display()
            );
            return Err(Failure::new(ErrorKind::DaemonStartFailed, message).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long `daemon restart` and `update` wait for a daemon restarted
/// onto the installed binary.
pub const RESTART_LIMIT: Duration = Duration::from_secs(20);

/// `daemon restart`: a daemon that answers restarts in place onto the
/// installed binary (same pid, its sockets kept open, so no client is
/// refused and a supervisor sees nothing); a hung one is ended by the
/// verified kill and started again; none is started.
pub async fn restart(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let Some(mut client) = ctx.connect().await? else {
        if let Ended::Killed { pid, how } = end(ctx).await? {
            eprintln!("memoryd (pid {pid}) did not answer; ended it with {how}");
        }
        return start(ctx).await;
    };
    let pid = client.hello.pid;
    let before: HostStatus = ctx.call(&mut client, &Command::HostStatus).await??;
    ctx.call::<Restarting>(&mut client, &Command::HostRestart).await??;
    drop(client);
    let asked = Instant::now();
    // The new image has a start time of its own; the old one, still
    // finishing its requests, answers with the one it had. (Whole-second
    // uptimes could not tell them apart within the first second.)
    let restarted = |s: &HostStatus| match (s.started_at, before.started_at) {
        (Some(now), Some(then)) => now != then,
        // Only one image knows `startedAt`: they differ.
        (Some(_), None) | (None, Some(_)) => true,
        // Both older than `startedAt`: the new image counts its uptime
        // from zero again.
        (None, None) => s.uptime_secs < Some(before.uptime_secs.unwrap_or(0) + asked.elapsed().as_secs()),
    };
    while asked.elapsed() < RESTART_LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(mut client) = ctx.connect().await? else { continue };
        let status: HostStatus = ctx.call(&mut client, &Command::HostStatus).await??;
        if restarted(&status) {
            if ctx.json {
                crate::print_json(&json!({"pid": status.pid, "restarted": true, "how": "in place"}))?;
            } else {
                println!("memoryd (pid {pid}) restarted in place onto v{}", status.version.unwrap_or_default());
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    let message = format!(
        "memoryd (pid {pid}) did not come back within {}s of restarting; see {} logs",
        RESTART_LIMIT.as_secs(),
        ctx.ctl()
    );
    Err(Failure::new(ErrorKind::DaemonNotAnswering, message).into())
}

/// The daemon's own first error line (`memoryd: …`) written after `offset`.
fn first_error(log: &Path, offset: u64) -> Option<String> {
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("memoryd: "))
        .map(str::to_owned)
        .or_else(|| text.lines().last().map(str::to_owned))
}

/// `shutdown` asks a running daemon to stop; `daemon stop` also waits for
/// it and ends a hung one by the verified-kill rule.
pub async fn shutdown(ctx: &Ctx, stop: bool) -> anyhow::Result<ExitCode> {
    if stop {
        let ended = end(ctx).await?;
        print_ended(ctx, &ended)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = ctx.require().await?;
    let pid = client.hello.pid;
    let supervisor = ask_to_stop(ctx, &mut client).await?;
    let grace = ctx.config.shutdown_grace + Duration::from_secs(5);
    let stopped = wait_for_release(ctx, grace).await?;
    if ctx.json {
        crate::print_json(&json!({"pid": pid, "stopped": stopped, "how": "shutdown", "supervisor": supervisor}))?;
    } else if stopped {
        println!("memoryd (pid {pid}) stopped");
    } else {
        println!("memoryd (pid {pid}) is still stopping after {}s", grace.as_secs());
    }
    warn_supervisor(supervisor.as_deref());
    Ok(if stopped { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How the daemon came to be down.
pub enum Ended {
    NotRunning,
    /// It stopped when asked.
    Stopped {
        pid: u32,
        supervisor: Option<String>,
    },
    /// It did not answer, or did not stop within its grace, and was proven
    /// to be this root's daemon and ended by this signal.
    Killed {
        pid: i32,
        how: &'static str,
    },
}

/// Ends the daemon: asked to stop over the socket and given its
/// `shutdown_grace`, or, when it does not answer (before or after hello) or
/// does not stop in time, ended by the verified kill. An error when a
/// process holds the lock and could not be proven ours or survived.
pub async fn end(ctx: &Ctx) -> anyhow::Result<Ended> {
    if let Some(mut client) = ctx.connect().await? {
        let pid = client.hello.pid;
        match ask_to_stop(ctx, &mut client).await {
            Ok(supervisor) => {
                let grace = ctx.config.shutdown_grace + Duration::from_secs(5);
                if wait_for_release(ctx, grace).await? {
                    warn_supervisor(supervisor.as_deref());
                    return Ok(Ended::Stopped { pid, supervisor });
                }
                eprintln!("memoryd (pid {pid}) still runs {}s after it agreed to stop; ending it", grace.as_secs());
            }
            // It answered hello and then went silent (stopped, deadlocked,
            // stuck on a disk): only the verified kill can end it now.
            Err(e) if e.is::<Silent>() => eprintln!("memoryd (pid {pid}) did not answer shutdown; ending it"),
            Err(e) => return Err(e),
        }
    }
    match end_hung(ctx).await {
        Hung::NotRunning => Ok(Ended::NotRunning),
        Hung::Ended { pid, how } => Ok(Ended::Killed { pid, how }),
        Hung::Unverified(why) => {
            let message = format!("memoryd does not answer and nothing was signalled: {why}");
            Err(Failure::new(ErrorKind::DaemonNotAnswering, message).into())
        }
        Hung::Failed(e) => bail!("{e}"),
    }
}

/// `host.shutdown`; the supervisor the daemon runs under, if any.
async fn ask_to_stop(ctx: &Ctx, client: &mut crate::client::Client) -> anyhow::Result<Option<String>> {
    let stopping: Stopping = ctx.call(client, &Command::HostShutdown).await??;
    Ok(stopping.supervisor)
}

async fn wait_for_release(ctx: &Ctx, grace: Duration) -> anyhow::Result<bool> {
    let lock = ctx.paths.instance_lock.clone();
    Ok(tokio::task::spawn_blocking(move || instance::wait_for_release(&lock, grace)).await?)
}

fn warn_supervisor(supervisor: Option<&str>) {
    if let Some(sup) = supervisor {
        eprintln!(
            "memoryd runs under {sup}, which will restart it; to keep it down: {}",
            memoryd_core::host::supervisor::stop_command(sup)
        );
    }
}

fn print_ended(ctx: &Ctx, ended: &Ended) -> anyhow::Result<()> {
    let (pid, how, supervisor) = match ended {
        Ended::NotRunning => (None, "none", None),
        Ended::Stopped { pid, supervisor } => (Some(*pid as i32), "shutdown", supervisor.as_deref()),
        Ended::Killed { pid, how } => (Some(*pid), *how, None),
    };
    if ctx.json {
        crate::print_json(&json!({"pid": pid, "stopped": true, "how": how, "supervisor": supervisor}))?;
    } else {
        match ended {
            Ended::NotRunning => println!("memoryd is not running"),
            Ended::Stopped { pid, .. } => println!("memoryd (pid {pid}) stopped"),
            Ended::Killed { pid, how } => println!("memoryd (pid {pid}) did not answer; ended it with {how}"),
        }
    }
    Ok(())
}

/// What became of a daemon that holds the lock but does not answer.
pub enum Hung {
    NotRunning,
    /// Proven to be this root's daemon and ended, by this signal.
    Ended {
        pid: i32,
        how: &'static str,
    },
    /// Not proven, so nothing was signalled: why.
    Unverified(String),
    Failed(String),
}

/// The verified kill (spec 30) of a daemon that does not answer.
pub async fn end_hung(ctx: &Ctx) -> Hung {
    let (_, egress) = guards(ctx, Vec::new());
    let paths = ctx.paths.clone();
    let joined = tokio::task::spawn_blocking(move || match instance::verify_daemon(&paths, &egress) {
        DaemonCheck::NotRunning => Hung::NotRunning,
        DaemonCheck::Unverified(why) => Hung::Unverified(why),
        DaemonCheck::Verified(daemon) => {
            let pid = daemon.pid();
            match instance::kill_verified(&paths, &egress, &daemon, Duration::from_secs(5), Duration::from_secs(2)) {
                Ok(KillOutcome::Terminated) => Hung::Ended { pid, how: "SIGTERM" },
                Ok(KillOutcome::Killed) => Hung::Ended { pid, how: "SIGKILL" },
                Err(e) => Hung::Failed(e.to_string()),
            }
        }
    })
    .await;
    joined.unwrap_or_else(|e| Hung::Failed(e.to_string()))
}

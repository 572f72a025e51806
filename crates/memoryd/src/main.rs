//! memoryd: the host daemon that keeps a fleet of agent peers wired to
//! shared memory. See the README for operating it.

mod daemon;
mod embedder;
mod fleetdb;
mod inherit;
mod logging;
mod mcp;
mod peers;
mod presence;
mod provisioning;
mod sdnotify;
mod server;
#[cfg(target_os = "linux")]
mod sockdiag;
mod tasks;
mod vault;

use anyhow::Context;
use clap::Parser;
use daemon::{ConfigSource, Daemon, Parts};
use memoryd_core::config::FlagOverrides;
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::instance::{self, InstanceError, InstanceLock};
use memoryd_core::host::lock::ProvisionLock;
use memoryd_core::host::paths::{self, Paths};
use memoryd_core::ops::install::Binaries;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;

/// memoryd keeps every Claude Code and Codex peer of an iapeer fleet wired
/// to shared memory: it owns the heartbeat and the control socket, watches
/// the fleet map, and answers `memoryctl`.
///
/// It runs in the foreground and logs to stderr; run it under systemd
/// (systemd/memoryd.service), launchd, or `memoryctl daemon start`.
/// Settings come from flags, then MEMORYD_* variables, then the config file
/// (R/plugins/memoryd/memoryd.toml, or MEMORYD_CONFIG), then defaults.
/// SIGTERM or SIGINT stops it cleanly; SIGHUP reloads the config.
///
/// Exit codes: 0 clean stop, 1 failure (another memoryd runs, unsafe state
/// dir, a task died, a second signal), 2 bad flags or bad config.
#[derive(Debug, Parser)]
#[command(name = "memoryd", version, about, long_about)]
struct Args {
    /// The iapeer root R [default: $MEMORYD_ROOT, $IAPEER_ROOT, ~/.iapeer]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The config file [default: $MEMORYD_CONFIG, R/plugins/memoryd/memoryd.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Absolute path of the iapeer binary (config key iapeer_bin)
    #[arg(long, value_name = "PATH")]
    iapeer_bin: Option<String>,
    /// Port of the MCP endpoint, 0 = off (config key mcp_port)
    #[arg(long, value_name = "PORT")]
    mcp_port: Option<String>,
    /// Where the control socket lives (config key socket_path)
    #[arg(long, value_name = "PATH")]
    socket_path: Option<String>,
    /// The vault of Markdown notes (config key vault)
    #[arg(long, value_name = "DIR")]
    vault: Option<String>,
    /// Log at debug level (RUST_LOG still wins)
    #[arg(short, long)]
    verbose: bool,
}

impl Args {
    fn flag_overrides(&self) -> FlagOverrides {
        [
            ("iapeer_bin", &self.iapeer_bin, "--iapeer-bin"),
            ("mcp_port", &self.mcp_port, "--mcp-port"),
            ("socket_path", &self.socket_path, "--socket-path"),
            ("vault", &self.vault, "--vault"),
        ]
        .into_iter()
        .filter_map(|(key, value, flag)| value.as_ref().map(|v| (key, v.clone(), flag.to_owned())))
        .collect()
    }
}

/// A start-up failure and its exit code.
struct Fatal {
    code: u8,
    error: anyhow::Error,
}

fn fatal(code: u8) -> impl FnOnce(anyhow::Error) -> Fatal {
    move |error| Fatal { code, error }
}

fn main() -> ExitCode {
    let inherited = inherit::take_var();
    let args = Args::parse();
    logging::init(args.verbose);
    install_panic_log();
    match run(args, inherited) {
        Ok(code) => code,
        Err(Fatal { code, error }) => {
            eprintln!("memoryd: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn install_panic_log() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        tracing::error!(thread, panic = %info, "panic");
        default(info);
    }));
}

/// Files that must not outlive the process: removed on a clean stop, on an
/// error return and on a panic that unwinds through `run`.
struct RunFiles {
    files: FileGuard,
    pid: PathBuf,
    socket: Mutex<Option<PathBuf>>,
    /// A close-on-exec duplicate of the control listener, kept for a
    /// restart hand-off: it holds the socket open while the server's own
    /// listener is dropped and the new image starts.
    control: Mutex<Option<OwnedFd>>,
    /// The same for the MCP listener.
    mcp: Mutex<Option<OwnedFd>>,
}

impl RunFiles {
    fn remove(&self) {
        let socket = self.socket.lock().ok().and_then(|mut s| s.take());
        for path in socket.iter().chain([&self.pid]) {
            if let Err(e) = self.files.remove_file(path) {
                tracing::warn!(error = %e, "cleanup");
            }
        }
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        self.remove();
    }
}

/// How `serve` ended.
enum Ending {
    Exit(ExitCode),
    /// Exec `memoryd_bin`, handing over the lock and the listener.
    Restart,
}

fn run(args: Args, inherited: Option<String>) -> Result<ExitCode, Fatal> {
    // Step 1: the config.
    let env = |k: &str| std::env::var_os(k);
    let root = paths::resolve_root(args.root.as_deref(), env).map_err(|e| fatal(2)(e.into()))?;
    let paths = Paths::new(root);
    let (file, required) = match &args.config {
        Some(flag) => (paths::absolute(flag), true),
        None => paths.config_file(env),
    };
    let source = ConfigSource { file, required, flags: args.flag_overrides() };
    let config = source.load().map_err(|e| fatal(2)(e.into()))?;
    let socket = config.checked_socket(&paths).map_err(|e| fatal(2)(e.into()))?;

    let files = FileGuard::for_install(&paths.root, config.vault.as_deref());

    // Step 2: the private state dir (and a moved socket's dir).
    instance::ensure_private_dir(&files, &paths.state).map_err(|e| fatal(1)(e.into()))?;
    if let Some(dir) = socket.parent().filter(|d| *d != paths.state) {
        instance::ensure_private_dir(&files, dir).map_err(|e| match e {
            // Never advise loosening or tightening a shared dir such as /tmp.
            InstanceError::Mode { path, mode } => fatal(1)(anyhow::anyhow!(
                "the directory of socket_path, {}, grants group or other permissions (mode {mode:o}); \
                 set socket_path inside a private directory of its own (mode 0700)",
                path.display()
            )),
            other => fatal(1)(other.into()),
        })?;
    }
    raise_nofile_limit();

    // Step 3: one daemon per root (after an exec hand-off: the lock and
    // the control socket of the previous image, validated).
    let mut inherited_control = None;
    let mut inherited_mcp = None;
    let lock = match inherited {
        Some(spec) => {
            let taken = inherit::adopt(&spec, &paths.instance_lock, &socket, config.mcp_port)
                .context("the restart hand-off failed; the supervisor restarts memoryd")
                .map_err(fatal(1))?;
            inherited_control = Some(taken.control);
            inherited_mcp = taken.mcp;
            InstanceLock::from_inherited(taken.lock)
        }
        None => match InstanceLock::acquire(&files, &paths) {
            Ok(lock) => lock,
            Err(e @ InstanceError::Held { .. }) => return Err(fatal(1)(e.into())),
            Err(e) => {
                return Err(fatal(1)(anyhow::Error::new(e).context("cannot take the single-instance lock")));
            }
        },
    };
    // Step 4: the pid, right after the lock.
    instance::write_pid(&files, &paths, &lock).map_err(|e| fatal(1)(e.into()))?;
    let run_files = Arc::new(RunFiles {
        files: files.clone(),
        pid: paths.pid_file.clone(),
        socket: Mutex::new(None),
        control: Mutex::new(None),
        mcp: Mutex::new(None),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("memoryd")
        .build()
        .context("cannot start the tokio runtime")
        .map_err(fatal(1))?;
    let supervisor = memoryd_core::host::supervisor::detect(|k| std::env::var(k).ok());
    let running_exe = Binaries::running().context("cannot find this memoryd binary").map_err(fatal(1))?;
    let provision_lock = ProvisionLock::open(&files, &paths.provision_lock)
        .context("cannot open the provision lock")
        .map_err(fatal(1))?;
    let (store, pg) = fleetdb::open(&paths, &files, &config).map_err(fatal(1))?;
    let daemon = Arc::new(Daemon::new(Parts {
        paths,
        source,
        config,
        files,
        socket,
        supervisor,
        running_exe,
        lock: provision_lock,
        store,
        pg,
    }));
    let ending = runtime.block_on(serve(daemon.clone(), run_files.clone(), inherited_control, inherited_mcp))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    let code = match ending {
        Ending::Exit(code) => code,
        Ending::Restart => {
            let tools = memoryd_core::ops::provision::Tools::new(
                &daemon.host.paths,
                &daemon.config(),
                &daemon.host.running_exe,
                daemon.host.sandboxed,
            );
            let Some(control) = run_files.control.lock().ok().and_then(|mut c| c.take()) else {
                return Err(fatal(1)(anyhow::anyhow!("the control socket was not kept for the hand-off")));
            };
            let mcp = run_files.mcp.lock().ok().and_then(|mut m| m.take());
            let error = inherit::hand_off(
                &tools.egress,
                &tools.binaries.memoryd,
                lock.file().as_fd(),
                control.as_fd(),
                mcp.as_ref().map(|m| m.as_fd()),
            );
            tracing::error!(error = %format!("{error:#}"), "restart failed; stopping cleanly so the supervisor restarts memoryd");
            ExitCode::SUCCESS
        }
    };
    if code == ExitCode::SUCCESS
        && let Err(e) = daemon.host.files.remove_file(&daemon.host.paths.heartbeat)
    {
        tracing::warn!(error = %e, "cleanup");
    }
    run_files.remove();
    drop(lock);
    Ok(code)
}

fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// Step 5: binds the control socket, after proving any file already there
/// is a dead daemon's.
fn bind_control_socket(daemon: &Daemon) -> anyhow::Result<UnixListener> {
    let path = &daemon.host.socket;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                anyhow::bail!("{} exists and is not a socket; move it away", path.display());
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => anyhow::bail!(
                    "another memoryd answers on {}; stop it first (memoryctl daemon stop)",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing the stale socket of a dead daemon");
                    daemon.host.files.remove_file(path)?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot probe the existing socket {}", path.display()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    // The dir is 0700 and ours: nobody can reach the socket before the chmod.
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    daemon.host.files.set_mode(path, 0o600)?;
    Ok(listener)
}

async fn serve(
    daemon: Arc<Daemon>,
    run_files: Arc<RunFiles>,
    inherited: Option<std::os::unix::net::UnixListener>,
    inherited_mcp: Option<std::net::TcpListener>,
) -> Result<Ending, Fatal> {
    let listener = match inherited {
        Some(listener) => {
            tracing::info!("restarted in place: the lock and the control socket were handed over");
            UnixListener::from_std(listener).context("cannot adopt the inherited control socket").map_err(fatal(1))?
        }
        None => bind_control_socket(&daemon).map_err(fatal(1))?,
    };
    if let Ok(mut socket) = run_files.socket.lock() {
        *socket = Some(daemon.host.socket.clone());
    }
    let kept = listener.as_fd().try_clone_to_owned().context("cannot keep the control socket").map_err(fatal(1))?;
    if let Ok(mut control) = run_files.control.lock() {
        *control = Some(kept);
    }

    // Step 6: the MCP endpoint, early: agents starting now must find it.
    let port = daemon.config().mcp_port;
    let mcp_listener = match inherited_mcp {
        Some(listener) => Some(listener),
        None if port == 0 => None,
        None => match mcp::bind(port) {
            Ok(listener) => Some(listener),
            Err(e) => {
                let why = mcp::bind_error(port, &e);
                tracing::error!(
                    port,
                    error = why,
                    "cannot bind the MCP endpoint; memoryd runs without it (status and verify report it)"
                );
                if let Ok(mut error) = daemon.mcp.error.lock() {
                    *error = Some(why);
                }
                None
            }
        },
    };
    if let Some(listener) = &mcp_listener {
        let kept = listener.as_fd().try_clone_to_owned().context("cannot keep the MCP listener").map_err(fatal(1))?;
        if let Ok(mut mcp) = run_files.mcp.lock() {
            *mcp = Some(kept);
        }
    }

    // Step 7: first heartbeat, tasks, READY=1, one line.
    let fleet_watch = provisioning::FleetWatch::start(&daemon);
    daemon.beat().context("cannot write the first heartbeat").map_err(fatal(1))?;
    let tasks = tokio_util::task::TaskTracker::new();
    spawn_task(Some(&tasks), &daemon, "fleet-watcher", provisioning::fleet_watcher(daemon.clone(), fleet_watch));
    spawn_task(Some(&tasks), &daemon, "heartbeat", tasks::heartbeat(daemon.clone()));
    spawn_task(Some(&tasks), &daemon, "fleet-refresh", provisioning::fleet_refresh(daemon.clone()));
    spawn_task(Some(&tasks), &daemon, "surface-sweep", provisioning::surface_sweep(daemon.clone()));
    spawn_task(Some(&tasks), &daemon, "presence-sweep", presence::presence_sweep(daemon.clone()));
    spawn_task(Some(&tasks), &daemon, "vault-watcher", vault::watch(daemon.clone()));
    spawn_task(Some(&tasks), &daemon, "fragments", vault::fragment_renderer(daemon.clone()));
    spawn_task(Some(&tasks), &daemon, "embedder", embedder::run(daemon.clone()));
    spawn_task(Some(&tasks), &daemon, "fleet-hints", fleetdb::follow_hints(daemon.clone()));
    if let Some(listener) = mcp_listener {
        spawn_task(Some(&tasks), &daemon, "mcp", mcp::serve(listener, daemon.clone()));
    }
    // Outside the tracker: it must outlive the drain to catch a second signal.
    let files_for_exit = run_files.clone();
    spawn_task(
        None,
        &daemon,
        "signals",
        tasks::signals(daemon.clone(), move || {
            files_for_exit.remove();
            std::process::exit(1);
        }),
    );
    spawn_task(
        Some(&tasks),
        &daemon,
        "control-socket",
        server::serve(listener, daemon.clone(), daemon.host.shutdown.clone()),
    );
    tasks.close();

    sdnotify::notify(&format!("READY=1\nSTATUS=serving; the start-up sweep of {} runs", daemon.fleet_describe()));
    let config = daemon.config();
    tracing::info!(
        "memoryd up: root={} socket={} fleet={} watch={} mcp={}",
        daemon.host.paths.root.display(),
        daemon.host.socket.display(),
        daemon.fleet_describe(),
        if daemon.fleet.watching.load(Ordering::Relaxed) { "on" } else { "off" },
        if config.mcp_port == 0 { "off".to_owned() } else { config.mcp_port.to_string() },
    );
    if daemon.host.files.is_sandboxed() && std::env::var("MEMORYD_TEST_PANIC").is_ok_and(|v| v == "after-ready") {
        panic!("MEMORYD_TEST_PANIC=after-ready: injected panic (test sandbox only)");
    }

    daemon.host.shutdown.begun.cancelled().await;
    let restarting = daemon.host.restarting.load(Ordering::Relaxed);
    if restarting {
        sdnotify::status("restarting onto the installed memoryd; the sockets stay open");
    } else {
        sdnotify::notify("STOPPING=1\nSTATUS=stopping: finishing the requests under way");
    }
    let grace = daemon.config().shutdown_grace;
    let shutdown = &daemon.host.shutdown;
    shutdown.connections.close();
    shutdown.requests.close();
    let drained = async {
        shutdown.connections.wait().await;
        shutdown.requests.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(grace = ?grace, "requests still running after shutdown_grace; answering them with daemon.shutting_down");
        shutdown.grace_over.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), shutdown.connections.wait()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    let failed = daemon.host.failed.load(Ordering::Relaxed);
    if restarting && !failed {
        tracing::info!("drained; handing over to the new memoryd");
        return Ok(Ending::Restart);
    }
    tracing::info!(failed, "memoryd stopped");
    Ok(Ending::Exit(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }))
}

/// Runs a task; if it panics, the daemon stops with exit 1 (the supervisor
/// restarts it) rather than limp on without it. An untracked task is not
/// waited for when the daemon drains.
fn spawn_task(
    tasks: Option<&tokio_util::task::TaskTracker>,
    daemon: &Arc<Daemon>,
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) {
    let handle = tokio::spawn(task);
    let daemon = daemon.clone();
    let monitor = async move {
        if let Err(e) = handle.await
            && e.is_panic()
        {
            tracing::error!(task = name, "task panicked; stopping memoryd so the supervisor restarts it");
            daemon.host.failed.store(true, Ordering::Relaxed);
            daemon.host.shutdown.begun.cancel();
        }
    };
    match tasks {
        Some(tasks) => drop(tasks.spawn(monitor)),
        None => drop(tokio::spawn(monitor)),
    }
}

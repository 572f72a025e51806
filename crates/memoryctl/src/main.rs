//! memoryctl: the command-line client of memoryd.

mod client;
mod daemon_cmd;
mod failure;
mod fleet_cmd;
mod hook_cmd;
mod install_cmd;
mod lean;
mod logs_cmd;
mod ops_cmd;
mod output;
mod peer_cmd;
mod presence_cmd;
mod provision_cmd;
mod service_cmd;
mod store_open;
mod top_cmd;

use anyhow::{Context as _, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand};
use client::{BlockingClient, CallError, Client, ConnectError};
pub use failure::Failure;
use memoryd_core::config::{self, Config, ConfigError};
use memoryd_core::host::paths::{self, Paths};
use memoryd_core::ops::install;
use memoryd_proto::host::Reloaded;
use memoryd_proto::presence::TailParams;
use memoryd_proto::{Command as Call, ErrorKind, RpcError, Timestamp, methods};
use output::Style;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Operate memoryd, the host daemon that keeps a fleet of agent peers wired
/// to shared memory.
///
/// memoryctl talks to the running daemon over its control socket
/// (R/state/memoryd/memoryd.sock). Exit codes: 0 success, 1 failure or
/// refusal, 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "memoryctl", version, about, long_about)]
struct Cli {
    /// The iapeer root R [default: $MEMORYD_ROOT, $IAPEER_ROOT, ~/.iapeer]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print one JSON document instead of text (on failure:
    /// {"error": {"kind", "message"}}); `events --follow` prints one JSON
    /// object per line
    #[arg(long, global = true)]
    json: bool,
    /// Log at debug level to stderr (RUST_LOG still wins)
    #[arg(short, long, global = true)]
    verbose: bool,
    /// How long connecting and session.hello may take before the daemon
    /// counts as not answering
    #[arg(long, global = true, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// How long memoryd may stay silent during a request before memoryctl
    /// gives up: the whole wait for a short request; for update, verify,
    /// sweep, provision-peer, unprovision-peer, events --follow and top the
    /// longest gap between two of the daemon's progress messages
    /// [default: 10s for short requests, lock_timeout + 45s for long ones]
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show whether memoryd runs and is healthy (exit 1 when down or unhealthy)
    Status,
    /// Ask the running daemon to stop gracefully
    Shutdown,
    /// Ask the running daemon to re-read its config (a bad config is refused)
    Reload,
    /// Check every part of the host, one line per check; repair with --repair
    ///
    /// Without --repair nothing is written and no lock is taken. Exit 1 if
    /// any check is FAIL (after repair). Run by the daemon when it answers,
    /// here when it does not (a hung daemon is ended by --repair).
    Verify {
        /// Repair what can be repaired (re-sweep drifted peers, rewrite the
        /// slot and the launcher, refresh the fleet map, end a hung daemon)
        #[arg(long)]
        repair: bool,
        /// Run in this process even when the daemon answers
        #[arg(long)]
        local: bool,
    },
    /// Bring the host to this version: binary, fleet, surfaces, slot,
    /// launcher, triggers, fragments, then restart the daemon
    ///
    /// Every step runs even after one failed. The daemon restarts onto the
    /// installed memoryd at the end without closing its sockets.
    Update {
        /// Report this step as skipped instead of running it (repeatable)
        #[arg(long, value_name = "STEP")]
        skip: Vec<String>,
        /// Run in this process even when the daemon answers
        #[arg(long)]
        local: bool,
    },
    /// Install memoryd on this root: write the config, then run update's
    /// steps 1 to 7 here
    ///
    /// Stores the absolute iapeer, memoryd and memoryctl paths (the core
    /// runs memoryd with a minimal PATH). Refuses to change an existing
    /// vault without --force. Asks a running daemon to reload, or prints
    /// how to start one.
    Init(install_cmd::InitArgs),
    /// Remove memoryd from this root: the watcher, the daemon, every peer's
    /// surfaces, the slot, the shims and the launcher
    ///
    /// Keeps the vault, the config and the state dir. Needs --yes when
    /// stdin is not a terminal.
    Uninstall {
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Ask the daemon to sweep every peer's surfaces now and repair drift
    Sweep,
    /// Wire one peer-runtime's session surfaces (the iapeer core calls this)
    ///
    /// One line per surface, then a summary. Forwarded to the daemon when it
    /// answers; otherwise run here under the same provision lock. Occasion
    /// `birth` also adds the peer to the fleet map at once.
    ProvisionPeer(provision_cmd::PeerArgs),
    /// Remove one peer-runtime's session surfaces (the mirror of provision-peer)
    ///
    /// Only memoryd's part of each file goes; files and dirs memoryd created
    /// go when nothing else is in them. A vanished folder reports `absent`.
    UnprovisionPeer(provision_cmd::PeerArgs),
    /// Record an agent session's attach (for scripts; the hooks do it too)
    Attach(presence_cmd::AttachArgs),
    /// Record a heartbeat of a node's active session
    Heartbeat(presence_cmd::HeartbeatArgs),
    /// Detach a node's active session
    Detach(presence_cmd::DetachArgs),
    /// The roster: every node's session, state, health, version and pid
    Peers,
    /// Revoke a node (terminal until `unrevoke` or a new birth)
    ///
    /// The node must be one of the fleet map's; --force revokes a node that
    /// will exist later.
    Revoke {
        /// <runtime>-<personality>
        node: String,
        /// Why, for the event log
        #[arg(long)]
        reason: Option<String>,
        /// Revoke a node the fleet map does not list (yet)
        #[arg(long)]
        force: bool,
    },
    /// Lift a node's revocation (a node of the fleet, or a revoked one)
    Unrevoke {
        /// <runtime>-<personality>
        node: String,
    },
    /// Peer links and messages: link, unlink, visible, send, inbox
    Peer {
        #[command(subcommand)]
        action: peer_cmd::PeerAction,
    },
    /// Print the presence event log (S/events.jsonl)
    ///
    /// With --json the recent events are one JSON array; with --follow
    /// --json, a stream: one JSON object per line, each as it happens.
    Events {
        /// Keep printing new events as they happen (with --json: one JSON
        /// object per line)
        #[arg(long)]
        follow: bool,
        /// Only this node's events
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// At most the last N events before following (200 at most)
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Only events at or after WHEN: an RFC 3339 time
        /// (2026-12-02T10:00:00Z) or how long ago (10m, 2h)
        #[arg(long, value_name = "WHEN", value_parser = presence_cmd::parse_since)]
        since: Option<std::time::SystemTime>,
    },
    /// Run by the hook shims inside an agent session; always exits 0
    ///
    /// Reads the agent's hook JSON on stdin. It prints nothing unless it
    /// has something to deliver, and logs problems to
    /// R/logs/memoryd/hook-errors.log instead of failing: an agent treats a
    /// failing hook as "block this prompt".
    Hook(hook_cmd::HookArgs),
    /// Start or stop a daemon on hosts without systemd or launchd
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// Show the daemon's log: the journal under systemd, else
    /// R/logs/memoryd/memoryd.log
    Logs {
        /// Keep printing new lines as they are written (across rotations)
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to print first
        #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
        lines: usize,
    },
    /// Print a shell completion script for memoryctl
    ///
    /// bash: memoryctl completions bash > ~/.local/share/bash-completion/completions/memoryctl
    /// zsh: memoryctl completions zsh > "${fpath[1]}/_memoryctl"
    /// fish: memoryctl completions fish > ~/.config/fish/completions/memoryctl.fish
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print memoryctl's man page (roff), made from the same definitions as
    /// --help: memoryctl manpage > memoryctl.1 && man -l memoryctl.1
    Manpage,
    /// Install or remove memoryd's systemd user unit (launchd agent on macOS)
    Service {
        #[command(subcommand)]
        action: service_cmd::ServiceAction,
    },
    /// A live view of the fleet: nodes, sweep, messages, newest events
    ///
    /// Follows the daemon's events; keys: s sort, f filter by state, ↑↓
    /// scroll, q quit. With the daemon down it says so and exits 1
    /// (`peers` reads the stored roster).
    Top(top_cmd::TopArgs),
    /// The fleet database shared by several hosts (store.backend =
    /// "postgres"): hosts, settings, releasing names, leaving, schema
    /// contract steps. Needs no daemon.
    Fleet {
        #[command(subcommand)]
        action: fleet_cmd::FleetAction,
    },
    /// Move this host's embedded store (S/store/) into the fleet database
    Store {
        #[command(subcommand)]
        action: fleet_cmd::StoreAction,
    },
    /// Inspect the configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum DaemonAction {
    /// Start a detached memoryd and wait until it answers
    Start,
    /// Stop the daemon: gracefully, or by the verified kill when it hangs
    Stop,
    /// Restart the daemon onto the installed memoryd: in place (same pid,
    /// sockets kept open) when it answers, else ended and started again
    Restart,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Load the config as memoryd would and print every key's value
    Check,
}

impl Command {
    fn verb(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Shutdown => "shutdown",
            Command::Reload => "reload",
            Command::Sweep => "sweep",
            Command::Init(_) => "init",
            Command::Uninstall { .. } => "uninstall",
            Command::Verify { .. } => "verify",
            Command::Update { .. } => "update",
            Command::ProvisionPeer(_) => "provision-peer",
            Command::UnprovisionPeer(_) => "unprovision-peer",
            Command::Hook(_) => "hook",
            Command::Attach(_) => "attach",
            Command::Heartbeat(_) => "heartbeat",
            Command::Detach(_) => "detach",
            Command::Peers => "peers",
            Command::Revoke { .. } => "revoke",
            Command::Unrevoke { .. } => "unrevoke",
            Command::Events { .. } => "events",
            Command::Peer { .. } => "peer",
            Command::Daemon { action: DaemonAction::Start } => "daemon start",
            Command::Daemon { action: DaemonAction::Stop } => "daemon stop",
            Command::Daemon { action: DaemonAction::Restart } => "daemon restart",
            Command::Logs { .. } => "logs",
            Command::Completions { .. } => "completions",
            Command::Manpage => "manpage",
            Command::Config { .. } => "config check",
            Command::Fleet { .. } => "fleet",
            Command::Store { .. } => "store",
            Command::Service { action: service_cmd::ServiceAction::Install { .. } } => "service install",
            Command::Service { action: service_cmd::ServiceAction::Uninstall } => "service uninstall",
            Command::Top(_) => "top",
        }
    }
}

/// The whole wait for a request that reports no progress.
const SHORT_LIMIT: Duration = Duration::from_secs(10);
/// Past `lock_timeout`, the longest silent step of a long request: an
/// `iapeer` call (30 s at most) and a sweep batch, with room to spare.
const LONG_MARGIN: Duration = Duration::from_secs(45);

/// A daemon that answered hello and then went silent past the limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Silent(pub String);

/// A usage error: bad input that exits 2 with its reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// What every command needs.
pub struct Ctx {
    pub paths: Paths,
    pub config: Config,
    pub config_file: PathBuf,
    pub config_found: bool,
    pub config_error: Option<ConfigError>,
    /// Whether this root holds a memoryd install (see [`install::is_installed`]).
    pub installed: bool,
    pub socket: PathBuf,
    pub json: bool,
    pub style: Style,
    pub connect_timeout: Duration,
    pub timeout: Option<Duration>,
}

impl Ctx {
    fn new(cli: &Cli) -> anyhow::Result<Ctx> {
        let env = |k: &str| std::env::var_os(k);
        let paths = Paths::new(paths::resolve_root(cli.root.as_deref(), env)?);
        let (config_file, required) = paths.config_file(env);
        let (config, config_found, config_error) = match config::load(&config_file, required, env, &Vec::new()) {
            Ok(loaded) => (loaded.config, loaded.file_found, None),
            Err(e) => (Config::default(), config_file.exists(), Some(e)),
        };
        let socket = config.checked_socket(&paths)?;
        Ok(Ctx {
            installed: install::is_installed(&config_file),
            paths,
            config,
            config_file,
            config_found,
            config_error,
            socket,
            json: cli.json,
            style: Style::detect(),
            connect_timeout: cli.connect_timeout,
            timeout: cli.timeout,
        })
    }

    /// `memoryctl --root R` as a user would type it again.
    pub fn ctl(&self) -> String {
        // Quoted for the shell when it must be: an operator pastes it.
        let root = memoryd_core::surfaces::shims::sh_quote(&self.paths.root.to_string_lossy());
        format!("memoryctl --root {root}")
    }

    /// Connects to the daemon; None when it does not answer.
    pub async fn connect(&self) -> anyhow::Result<Option<Client>> {
        self.connected(Client::connect(&self.socket, self.connect_timeout).await)
    }

    /// A connection, None when the daemon did not answer, or its refusal.
    fn connected<C>(&self, connected: Result<C, ConnectError>) -> anyhow::Result<Option<C>> {
        match connected {
            Ok(client) => Ok(Some(client)),
            Err(ConnectError::NotAnswering(why)) => {
                tracing::debug!(why, "memoryd is not answering");
                Ok(None)
            }
            Err(ConnectError::Refused(e)) => Err(e.into()),
        }
    }

    /// Connects or fails with the sentence that says what to do.
    pub async fn require(&self) -> anyhow::Result<Client> {
        Ok(self.connect().await?.ok_or_else(|| self.absent())?)
    }

    /// Why no daemon answered, and what to do about it: a daemon that holds
    /// the lock but does not answer is hung, not stopped, and a root with
    /// no install needs one before any daemon.
    pub fn absent(&self) -> Failure {
        if memoryd_core::host::instance::lock_is_held(&self.paths.instance_lock).unwrap_or(false) {
            let pid = memoryd_core::host::instance::read_pid(&self.paths.pid_file)
                .map_or("unknown".to_owned(), |p| p.to_string());
            Failure::new(
                ErrorKind::DaemonNotAnswering,
                format!(
                    "memoryd (pid {pid}) holds the lock but does not answer (end it with: {} daemon stop)",
                    self.ctl()
                ),
            )
        } else if !self.installed {
            Failure::new(ErrorKind::InstallMissing, install::missing(&self.paths.root))
        } else {
            Failure::new(
                ErrorKind::DaemonNotRunning,
                format!("memoryd is not running (start it with: {} daemon start)", self.ctl()),
            )
        }
    }

    /// [`absent`](Self::absent)'s sentence.
    pub fn not_answering(&self) -> String {
        self.absent().message
    }

    /// One request, printing progress lines as they stream in (text mode),
    /// within `--timeout` when one is set; the answer as its type.
    pub async fn call<T: DeserializeOwned>(
        &self,
        client: &mut Client,
        command: &Call,
    ) -> anyhow::Result<Result<T, RpcError>> {
        let (style, json) = (self.style, self.json);
        self.call_with(client, command, |p| {
            if !json {
                println!("{}", style.progress(&p));
            }
        })
        .await
    }

    /// `command` alone on a blocking connection of its own, sent behind the
    /// hello in the same write: one round trip and no runtime, for the
    /// short commands most operators run (`status`, `peers`). The whole
    /// wait is bounded as a short request's; None when the daemon does not
    /// answer.
    pub fn ask<T: DeserializeOwned>(&self, command: &Call) -> anyhow::Result<Option<Result<T, RpcError>>> {
        let connected = BlockingClient::connect_ahead(&self.socket, self.connect_timeout, [command]);
        let Some((mut client, [queued])) = self.connected(connected)? else {
            return Ok(None);
        };
        let answer = client.answer(queued, self.silence_limit(command.is_long()));
        self.answer_of(answer, command.method(), client.hello.pid).map(Some)
    }

    /// One request, each progress line handed to `on_progress` as it
    /// arrives, within `--timeout` when one is set.
    pub async fn call_with<T: DeserializeOwned>(
        &self,
        client: &mut Client,
        command: &Call,
        mut on_progress: impl FnMut(memoryd_proto::Progress),
    ) -> anyhow::Result<Result<T, RpcError>> {
        self.call_raw(client, command, |n| {
            if n.method == methods::HOST_PROGRESS
                && let Ok(progress) = serde_json::from_value(n.params)
            {
                on_progress(progress);
            }
        })
        .await
    }

    /// One request, every notification handed to `on_notification`; the
    /// daemon may stay silent for at most [`Ctx::silence_limit`] (a
    /// followed event log counts as a long request).
    pub async fn call_raw<T: DeserializeOwned>(
        &self,
        client: &mut Client,
        command: &Call,
        on_notification: impl FnMut(memoryd_proto::Notification),
    ) -> anyhow::Result<Result<T, RpcError>> {
        let answer = client.call(command, self.silence_limit(command.is_long()), on_notification).await;
        self.answer_of(answer, command.method(), client.hello.pid)
    }

    /// A daemon's answer to `method` as the commands take it: the result as
    /// its type, or the daemon's refusal; a silent or lost daemon is an
    /// error that says what to do.
    fn answer_of<T: DeserializeOwned>(
        &self,
        answer: Result<client::Outcome, CallError>,
        method: &str,
        pid: u32,
    ) -> anyhow::Result<Result<T, RpcError>> {
        match answer {
            Ok(Ok(result)) => Ok(Ok(serde_json::from_str(result.get())
                .with_context(|| format!("memoryd sent a malformed answer to {method}"))?)),
            Ok(Err(refusal)) => Ok(Err(refusal)),
            Err(e @ CallError::Silent { .. }) => Err(anyhow!(Silent(self.silent_sentence(pid, &e)))),
            Err(e) => Err(Failure::new(ErrorKind::DaemonNotAnswering, e.to_string()).into()),
        }
    }

    /// A request that also runs in this process (`verify`, `provision-peer`,
    /// `unprovision-peer`): the daemon's answer, or None when it went
    /// silent, said on stderr, so the caller runs it here under the same
    /// locks (spec 10's offline path, for a daemon that hangs mid-request).
    pub async fn answer_or_run_here<T: DeserializeOwned>(
        &self,
        client: &mut Client,
        command: &Call,
        on_progress: impl FnMut(memoryd_proto::Progress),
    ) -> anyhow::Result<Option<Result<T, RpcError>>> {
        match self.call_with(client, command, on_progress).await {
            Ok(answer) => Ok(Some(answer)),
            Err(e) if e.is::<Silent>() => {
                let limit = humantime::format_duration(self.silence_limit(true));
                eprintln!("memoryd (pid {}) sent nothing for {limit}: running locally", client.hello.pid);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// How long the daemon may send nothing while `method` runs: `--timeout`
    /// when given, else the default of the method's kind. Long requests
    /// report progress at least after every lock wait and every bounded
    /// step (an `iapeer` call, a batch of a sweep), so their limit is the
    /// longest such step with a margin; a followed event log is kept alive
    /// by the daemon's `host.working` beat.
    pub fn silence_limit(&self, long: bool) -> Duration {
        self.timeout.unwrap_or(if long { self.config.lock_timeout + LONG_MARGIN } else { SHORT_LIMIT })
    }

    fn silent_sentence(&self, pid: u32, e: &CallError) -> String {
        format!(
            "{e}: memoryd (pid {pid}) answered the connection but may be hung; see what it is doing in its log, end it \
             with: {} daemon stop, or give it longer with --timeout",
            self.ctl()
        )
    }
}

fn main() -> ExitCode {
    let cli = match lean::parse(std::env::args_os().skip(1)).map_or_else(Cli::try_parse, Ok) {
        Ok(cli) => cli,
        Err(e)
            if !matches!(e.kind(), clap::error::ErrorKind::DisplayHelp)
                && let Some(root_flag) = hook_invocation() =>
        {
            // Even a bad flag must not fail an agent's hook.
            if let Ok(root) = paths::resolve_root(root_flag.as_deref(), |k| std::env::var_os(k)) {
                hook_cmd::log_error(&Paths::new(root), &format!("bad hook arguments: {}", e.kind()));
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            if !matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion)
                && json_requested()
            {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                let message = first.strip_prefix("error: ").unwrap_or(first);
                println!("{}", failure::document(ErrorKind::RequestInvalid, message, None));
            }
            e.exit()
        }
    };
    if let Command::Hook(args) = &cli.command {
        // Nothing here may fail the hook: a missing root, config or daemon
        // is logged and the agent goes on.
        if let Ok(root) = paths::resolve_root(cli.root.as_deref(), |k| std::env::var_os(k)) {
            hook_cmd::run(&Paths::new(root), args);
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::process::exit(0);
    }
    init_logging(cli.verbose);
    let verb = cli.command.verb();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("memoryctl {verb}: {message}");
            let (kind, details, code) = failure::classify(&e);
            if json {
                println!("{}", failure::document(kind, &message, details));
            }
            code
        }
    }
}

/// Whether `--json` is on a command line clap refused (before any `--`).
fn json_requested() -> bool {
    std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json")
}

/// When the command line names the `hook` subcommand (the first word that
/// is neither a global option nor its value): the `--root` it carries.
fn hook_invocation() -> Option<Option<PathBuf>> {
    let mut args = std::env::args_os().skip(1);
    let mut root = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--root") => root = args.next().map(PathBuf::from),
            Some("--connect-timeout" | "--timeout") => {
                args.next();
            }
            Some(a) if a.starts_with('-') => {}
            a => return (a == Some("hook")).then_some(root),
        }
    }
    None
}

fn init_logging(verbose: bool) {
    let default = if verbose { tracing::Level::DEBUG } else { tracing::Level::WARN };
    let filter = tracing_subscriber::EnvFilter::builder().with_default_directive(default.into()).from_env_lossy();
    // The log goes to stderr: coloured by stderr's own terminal, not stdout's.
    let ansi = Style::for_stream(std::io::IsTerminal::is_terminal(&std::io::stderr())).is_coloured();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_env_filter(filter)
        .init();
}

/// Completions and the man page come from the command-line definition
/// alone: they need no root, config or daemon. True when one was printed.
fn generated(command: &Command) -> anyhow::Result<bool> {
    // Built in memory: clap_complete panics on a failed write (a closed
    // pipe), and a failed write here is an error like any other.
    let mut text = Vec::new();
    match command {
        Command::Completions { shell } => clap_complete::generate(*shell, &mut Cli::command(), "memoryctl", &mut text),
        Command::Manpage => clap_mangen::Man::new(Cli::command()).render(&mut text)?,
        _ => return Ok(false),
    }
    std::io::Write::write_all(&mut std::io::stdout(), &text).context("cannot write to stdout")?;
    Ok(true)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if generated(&cli.command)? {
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = Ctx::new(&cli)?;
    if let (Some(e), false) = (&ctx.config_error, matches!(cli.command, Command::Config { .. })) {
        eprintln!("memoryctl: warning: {e}; using the defaults to reach memoryd (see: memoryctl config check)");
    }
    match cli.command {
        // The short commands most operators run start no runtime: one
        // blocking connection, one round trip (Ctx::ask).
        Command::Status => status(&ctx),
        Command::Peers => presence_cmd::peers(&ctx),
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(run_on_runtime(&ctx, command)),
    }
}

async fn run_on_runtime(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Shutdown => daemon_cmd::shutdown(ctx, false).await,
        Command::Reload => reload(ctx).await,
        Command::Sweep => provision_cmd::sweep(ctx).await,
        Command::Init(args) => install_cmd::init(ctx, args).await,
        Command::Uninstall { yes } => install_cmd::uninstall(ctx, yes).await,
        Command::Verify { repair, local } => ops_cmd::verify(ctx, repair, local).await,
        Command::Update { skip, local } => ops_cmd::update(ctx, skip, local).await,
        Command::ProvisionPeer(args) => provision_cmd::peer(ctx, args, true).await,
        Command::UnprovisionPeer(args) => provision_cmd::peer(ctx, args, false).await,
        // Run before any runtime starts: the hooks in `main`, before
        // anything that could fail; status and peers in `run`.
        Command::Hook(_) | Command::Status | Command::Peers => Ok(ExitCode::SUCCESS),
        Command::Attach(args) => presence_cmd::attach(ctx, args).await,
        Command::Heartbeat(args) => presence_cmd::heartbeat(ctx, args).await,
        Command::Detach(args) => presence_cmd::detach(ctx, args).await,
        Command::Revoke { node, reason, force } => {
            presence_cmd::revocation(ctx, &node, presence_cmd::Revocation::Revoke { reason, force }).await
        }
        Command::Unrevoke { node } => presence_cmd::revocation(ctx, &node, presence_cmd::Revocation::Unrevoke).await,
        Command::Events { follow, node, lines, since } => {
            presence_cmd::events(ctx, TailParams { follow, node, limit: lines, since: since.map(Timestamp) }).await
        }
        Command::Peer { action } => peer_cmd::run(ctx, action).await,
        Command::Daemon { action: DaemonAction::Start } => daemon_cmd::start(ctx).await,
        Command::Daemon { action: DaemonAction::Stop } => daemon_cmd::shutdown(ctx, true).await,
        Command::Daemon { action: DaemonAction::Restart } => daemon_cmd::restart(ctx).await,
        Command::Logs { follow, lines } => logs_cmd::logs(ctx, follow, lines).await,
        // Printed in `generated`, before anything that could fail.
        Command::Completions { .. } | Command::Manpage => Ok(ExitCode::SUCCESS),
        Command::Config { action: ConfigAction::Check } => config_check(ctx),
        Command::Fleet { action } => fleet_cmd::fleet(ctx, action),
        Command::Store { action } => fleet_cmd::store(ctx, action),
        Command::Service { action } => service_cmd::run(ctx, action).await,
        Command::Top(args) => top_cmd::top(ctx, args).await,
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn status(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = match ctx.ask(&Call::HostStatus)? {
        Some(answer) => answer?,
        None => {
            eprintln!("{}", ctx.not_answering());
            let mut status =
                memoryd_core::ops::status::from_disk(&ctx.paths, &ctx.config, &ctx.config_file, SystemTime::now());
            memoryd_core::ops::status::assess(&mut status, &ctx.config);
            status
        }
    };
    if ctx.json {
        print_json(&status)?;
    } else {
        // One write: stdout is line-buffered, and this runs on every status.
        let mut text = output::status_lines(&status, ctx.style).join("\n");
        text.push('\n');
        std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()).context("cannot write to stdout")?;
    }
    Ok(if status.running && status.healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn reload(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut client = ctx.require().await?;
    match ctx.call::<Reloaded>(&mut client, &Call::HostReload).await? {
        Ok(result) => {
            if ctx.json {
                print_json(&result)?;
            } else {
                println!("config reloaded from {}", result.file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == Some(ErrorKind::ConfigInvalid) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context("memoryd refused the reload")),
    }
}

fn config_check(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if let Some(e) = &ctx.config_error {
        if ctx.json {
            print_json(&json!({"ok": false, "file": ctx.config_file, "error": e.to_string(), "key": e.key()}))?;
            return Ok(ExitCode::FAILURE);
        }
        bail!("{e}");
    }
    let values = config::describe(&ctx.config);
    if ctx.json {
        let map: serde_json::Map<String, Value> =
            values.into_iter().map(|(k, v)| (k.to_owned(), Value::String(v))).collect();
        print_json(
            &json!({"ok": true, "file": ctx.config_file, "fileFound": ctx.config_found, "socket": ctx.socket, "config": map}),
        )?;
    } else {
        let origin = if ctx.config_found { "" } else { " (not found: defaults, environment and flags only)" };
        println!("config ok: {}{origin}", ctx.config_file.display());
        for (key, value) in values {
            println!("  {key:<28} {value}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// What `--help` leaves unexplained: subcommands without an about and
    /// arguments without help, by their command path.
    fn unexplained(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if !matches!(id, "help" | "version") && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} <{id}>"));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                out.push(path.clone());
            }
            unexplained(sub, &path, out);
        }
    }

    #[test]
    fn every_subcommand_and_flag_says_what_it_is_for() {
        let mut missing = Vec::new();
        unexplained(&Cli::command(), "memoryctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_belong_to_the_commands_that_use_them() {
        let cli = Cli::command();
        let flags = |name: &str| -> Vec<String> {
            let sub = cli.find_subcommand(name).unwrap_or_else(|| panic!("no {name}"));
            sub.get_arguments().filter(|a| !a.is_global_set()).map(|a| a.get_id().to_string()).collect()
        };
        assert!(flags("attach").contains(&"client_version".to_owned()));
        for name in ["heartbeat", "detach"] {
            assert!(!flags(name).contains(&"client_version".to_owned()), "{name}: {:?}", flags(name));
            assert!(!flags(name).contains(&"pid".to_owned()), "{name}: {:?}", flags(name));
        }
        assert!(!flags("heartbeat").contains(&"reason".to_owned()));
        assert!(!flags("attach").contains(&"reason".to_owned()));
    }
}

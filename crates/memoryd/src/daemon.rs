//! The daemon's shared state and the methods it answers.

use crate::server::{ProgressSink, Service, Shutdown};
use memoryd_core::config::{self, Config, ConfigError, FlagOverrides};
use memoryd_core::fleet::FleetRead;
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::lock::ProvisionLock;
use memoryd_core::host::paths::Paths;
use memoryd_proto::host::{Reloaded, Restarting, Stopping, Swept};
use memoryd_proto::{
    Command, ErrorKind, Hello, HelloResult, PROTOCOL_VERSION, ProgressStatus, Request, RpcError, methods,
};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// A result as it travels.
pub fn reply(result: impl serde::Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(result).map_err(|e| RpcError::new(ErrorKind::Internal, e.to_string()))
}

/// Where the configuration is read from, kept for reloads.
pub struct ConfigSource {
    pub file: PathBuf,
    pub required: bool,
    pub flags: FlagOverrides,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        config::load(&self.file, self.required, |k| std::env::var_os(k), &self.flags).map(|l| l.config)
    }
}

/// The running daemon: its host lifecycle and one part per concern, each
/// with the module that owns it and its tasks. Presence and peers own no
/// state of their own: theirs lasts in the store.
pub struct Daemon {
    pub host: Host,
    /// Presence, links and messages (presence.rs, peers.rs).
    pub store: Arc<dyn memoryd_core::store::StateStore>,
    /// The same store when it is the fleet database (fleetdb.rs): its
    /// state, hints and clock skew.
    pub pg: Option<Arc<memoryd_store_pg::PgStore>>,
    /// Whether this host's map is in the fleet registry since the fleet
    /// database's last (re)connect (fleetdb.rs).
    pub published: AtomicBool,
    /// The fleet map and the provisioning that follows it (provisioning.rs).
    pub fleet: crate::provisioning::FleetState,
    /// The vault index and the fragments made from it (vault.rs).
    pub vault: crate::vault::VaultState,
    /// The MCP endpoint (mcp.rs).
    pub mcp: crate::mcp::McpState,
}

/// What the daemon is as a process on this host: where it lives, its
/// config, its doors, its socket, and how it stops or restarts.
pub struct Host {
    pub paths: Paths,
    pub source: ConfigSource,
    config: watch::Sender<Arc<Config>>,
    pub files: FileGuard,
    pub socket: PathBuf,
    pub hostname: String,
    pub supervisor: Option<&'static str>,
    pub started: Instant,
    /// The wall-clock twin of `started`: tells this image from the one
    /// before a restart in place (same pid).
    pub started_at: SystemTime,
    pub shutdown: Shutdown,
    /// Set when a task died and the daemon must exit 1.
    pub failed: AtomicBool,
    /// The canonical path of this binary, taken at start-up.
    pub running_exe: PathBuf,
    /// Whether the test sandbox was armed at start-up.
    pub sandboxed: bool,
    /// Set by an update or `host.restart` whose reply, once written,
    /// starts the restart.
    pub restart_pending: AtomicBool,
    /// The shutdown under way is a restart onto `memoryd_bin` (exec, the
    /// sockets handed over), not a stop.
    pub restarting: AtomicBool,
}

/// What the daemon is built from at start-up.
pub struct Parts {
    pub paths: Paths,
    pub source: ConfigSource,
    pub config: Config,
    pub files: FileGuard,
    pub socket: PathBuf,
    pub supervisor: Option<&'static str>,
    pub running_exe: PathBuf,
    pub lock: ProvisionLock,
    pub store: Arc<dyn memoryd_core::store::StateStore>,
    pub pg: Option<Arc<memoryd_store_pg::PgStore>>,
}

impl Daemon {
    pub fn new(parts: Parts) -> Daemon {
        let Parts { paths, source, config, files, socket, supervisor, running_exe, lock, store, pg } = parts;
        let fleet = FleetRead::load(&paths.fleet_map);
        let embedder = config
            .vault
            .as_ref()
            .and_then(|_| crate::embedder::Embedder::new(&config.search, paths.state.clone(), files.clone()));
        let vault = crate::vault::VaultState::new(config.vault.clone(), embedder);
        Daemon {
            host: Host {
                paths,
                source,
                config: watch::Sender::new(Arc::new(config)),
                sandboxed: files.is_sandboxed(),
                files,
                socket,
                hostname: memoryd_core::host::heartbeat::hostname(),
                supervisor,
                started: Instant::now(),
                started_at: SystemTime::now(),
                shutdown: Shutdown::default(),
                failed: AtomicBool::new(false),
                running_exe,
                restart_pending: AtomicBool::new(false),
                restarting: AtomicBool::new(false),
            },
            store,
            pg,
            published: AtomicBool::new(false),
            fleet: crate::provisioning::FleetState::new(fleet, lock),
            vault,
            mcp: crate::mcp::McpState::new(),
        }
    }

    /// Runs `job` on a blocking thread: file I/O, fsync, lock waits and
    /// large reads never run on the two async workers, so a slow disk
    /// cannot stall the control socket or the MCP endpoint. A panic in the
    /// job goes on unwinding in the caller's task, as if it had happened there.
    pub async fn blocking<T: Send + 'static>(self: &Arc<Self>, job: impl FnOnce(&Daemon) -> T + Send + 'static) -> T {
        let daemon = self.clone();
        match tokio::task::spawn_blocking(move || job(&daemon)).await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Asks the renderer task to re-render these peers' fragments (every
    /// peer's with None).
    pub fn refresh_fragments(&self, peers: Option<Vec<String>>) {
        self.vault.fragments.push(peers);
    }

    /// The peers linked with `personality` that are present in the fleet
    /// (on any host, with the fleet database).
    pub fn linked_with(&self, personality: &str) -> Vec<String> {
        let links = self.store.links().unwrap_or_default();
        let fleet = self.registry().ok();
        links
            .of(personality)
            .filter(|l| fleet.as_ref().is_some_and(|m| m.peer(l).is_some()))
            .map(str::to_owned)
            .collect()
    }

    /// Re-renders the fragments of the peers linked with any of these (their
    /// "Linked peers" section shows these peers' presence).
    pub fn refresh_linked(&self, personalities: &[String]) {
        let links = self.store.links().unwrap_or_default();
        let mut linked: Vec<String> =
            personalities.iter().flat_map(|p| links.of(p).map(str::to_owned).collect::<Vec<_>>()).collect();
        linked.sort();
        linked.dedup();
        if !linked.is_empty() {
            self.refresh_fragments(Some(linked));
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.host.config.borrow().clone()
    }

    pub fn subscribe_config(&self) -> watch::Receiver<Arc<Config>> {
        self.host.config.subscribe()
    }

    /// Re-reads the configuration; a bad one is refused and the old one kept.
    /// Keys that only a restart applies are reported as `warn` progress.
    pub fn reload(&self, progress: &ProgressSink) -> Result<Reloaded, ConfigError> {
        let _reloading = crate::sdnotify::Reloading::begin();
        let mut new = self.host.source.load()?;
        let old = self.config();
        // The sockets are bound once; their keys keep their running values
        // until the next start, so status keeps telling the truth.
        let mut restart_needed = Vec::new();
        if new.socket_path != old.socket_path {
            restart_needed.push("socket_path");
            new.socket_path = old.socket_path.clone();
        }
        if new.mcp_port != old.mcp_port {
            restart_needed.push("mcp_port");
            new.mcp_port = old.mcp_port;
        }
        if new.vault != old.vault {
            restart_needed.push("vault");
            new.vault = old.vault.clone();
        }
        // The embedder, its key and its cache are set up once, with the vault.
        if new.search != old.search {
            restart_needed.push("search");
            new.search = old.search.clone();
        }
        // The store is opened once.
        if new.store != old.store {
            restart_needed.push("store");
            new.store = old.store.clone();
        }
        for key in &restart_needed {
            tracing::warn!(key, "config change takes effect at the next start of memoryd");
            progress.send(key, ProgressStatus::Warn, "changed; takes effect at the next start of memoryd");
        }
        let changed = *old != new;
        self.host.config.send_replace(Arc::new(new));
        tracing::info!(file = %self.host.source.file.display(), changed, "config reloaded");
        Ok(Reloaded {
            reloaded: true,
            changed,
            file: self.host.source.file.clone(),
            restart_needed: restart_needed.into_iter().map(str::to_owned).collect(),
        })
    }

    /// Writes one heartbeat line.
    pub fn beat(&self) -> Result<(), memoryd_core::host::files::FileError> {
        let line = memoryd_core::host::heartbeat::Heartbeat::render(
            SystemTime::now(),
            &self.host.hostname,
            self.fleet.watching.load(Ordering::Relaxed),
        );
        self.host.files.write_atomic(&self.host.paths.heartbeat, line.as_bytes(), Some(0o644))
    }

    pub fn fleet_describe(&self) -> String {
        self.fleet.map.lock().map(|f| f.describe()).unwrap_or_else(|_| "no map (state poisoned)".to_owned())
    }

    pub fn status(&self) -> memoryd_proto::status::HostStatus {
        let config = self.config();
        let peers = self.fleet.map.lock().ok().and_then(|f| f.map().map(|m| m.peers.len()));
        let mut status = memoryd_core::ops::status::shared_facts(
            &self.host.paths,
            &config,
            &self.host.source.file,
            SystemTime::now(),
            peers,
            &*self.store,
        );
        status.running = true;
        status.pid = Some(std::process::id());
        status.version = Some(memoryd_core::VERSION.to_owned());
        status.uptime_secs = Some(self.host.started.elapsed().as_secs());
        status.started_at = Some(self.host.started_at.into());
        status.watch = Some(if self.fleet.watching.load(Ordering::Relaxed) { "on" } else { "off" }.to_owned());
        status.supervisor = self.host.supervisor.map(str::to_owned);
        status.store = Some(self.store_status());
        status.last_sweep = self.fleet.last_sweep.lock().ok().and_then(|s| s.clone());
        status.presence = self.presence_counts();
        status.mcp.listening = Some(self.mcp.listening.load(Ordering::Relaxed));
        status.mcp.error = self.mcp.error.lock().ok().and_then(|e| e.clone());
        status.mcp.uid_check = Some(self.mcp.uid_guard.check == crate::mcp::UidCheck::Active);
        status.mcp.uid_check_reason = self.mcp.uid_guard.check.reason();
        status.vault.notes = Some(self.vault.index().len());
        status.vault.watching = Some(self.vault.watching.load(Ordering::Relaxed));
        status.vault.refused_rescan = Some(self.vault.refused.load(Ordering::Relaxed));
        status.vault.embeddings = self.vault.embedder.as_ref().map(|e| e.status());
        memoryd_core::ops::status::assess(&mut status, &config);
        status
    }

    /// Answers `session.hello`: refuses another protocol version, saying
    /// which side to move.
    fn greet(&self, hello: &Hello) -> Result<Value, RpcError> {
        if hello.protocol != PROTOCOL_VERSION {
            let fix = if hello.protocol > PROTOCOL_VERSION {
                "restart memoryd onto the installed binary with: memoryctl update"
            } else {
                "upgrade memoryctl to the daemon's version"
            };
            return Err(RpcError::new(
                ErrorKind::ProtocolMismatch,
                format!(
                    "{} speaks protocol {} but memoryd {} speaks protocol {PROTOCOL_VERSION}; {fix}",
                    hello.client,
                    hello.protocol,
                    memoryd_core::VERSION
                ),
            )
            .with_details(serde_json::to_value(self.hello_result()).unwrap_or(Value::Null)));
        }
        tracing::debug!(client = hello.client, "session.hello");
        reply(self.hello_result())
    }

    fn hello_result(&self) -> HelloResult {
        HelloResult {
            protocol: PROTOCOL_VERSION,
            version: memoryd_core::VERSION.to_owned(),
            pid: std::process::id(),
            root: self.host.paths.root.display().to_string(),
            supervisor: self.host.supervisor.map(str::to_owned),
        }
    }
}

impl Service for Daemon {
    fn limits(&self) -> (usize, usize) {
        let config = self.config();
        (config.max_connections, config.max_request_bytes)
    }

    fn hello(&self, request: &Request) -> Result<Value, RpcError> {
        self.greet(&request.params()?)
    }

    fn answer_now(&self, request: &Request) -> Option<Result<Value, RpcError>> {
        // Bad params fall through to `call`, which answers them in full.
        let beat = (request.method == methods::RUNTIMENODE_HEARTBEAT).then(|| request.params().ok()).flatten()?;
        self.soft_heartbeat(&beat).then_some(Ok(Value::Null))
    }

    async fn call(self: Arc<Self>, request: Request, progress: ProgressSink) -> Result<Value, RpcError> {
        match Command::parse(&request)? {
            Command::SessionHello(hello) => self.greet(&hello),
            Command::HostStatus => reply(self.blocking(Daemon::status).await),
            Command::HostReload => reply(self.blocking(move |d| d.reload(&progress)).await.map_err(|e| {
                RpcError::new(ErrorKind::ConfigInvalid, format!("{e}; the running configuration is kept"))
            })?),
            Command::HostSweep => {
                let report = self.sweep(None, "request", progress).await?;
                let failed = report.failures();
                reply(Swept {
                    ok: failed.is_empty(),
                    failed,
                    pairs: report.pairs.len(),
                    skipped: report.skipped,
                    writes: report.writes,
                })
            }
            Command::HostUpdate(params) => {
                memoryd_core::ops::update::check_skip(&params.skip)
                    .map_err(|e| RpcError::new(ErrorKind::RequestInvalid, e))?;
                reply(self.update(params.skip, progress).await)
            }
            Command::HostVerify(params) => reply(self.verify(params.repair, progress).await),
            Command::HostRestart => {
                let bin = self
                    .blocking(|d| {
                        let tools = memoryd_core::ops::provision::Tools::new(
                            &d.host.paths,
                            &d.config(),
                            &d.host.running_exe,
                            d.host.sandboxed,
                        );
                        let bin = tools.binaries.memoryd;
                        memoryd_core::ops::install::check_executable(&bin).map(|()| bin)
                    })
                    .await
                    .map_err(|e| RpcError::new(ErrorKind::Internal, format!("cannot restart: {e}")))?;
                self.host.restart_pending.store(true, Ordering::Relaxed);
                reply(Restarting { restarting: true, binary: bin, pid: std::process::id() })
            }
            Command::HostShutdown => reply(Stopping {
                stopping: true,
                supervisor: self.host.supervisor.map(str::to_owned),
                restarted: self.host.supervisor.is_some(),
            }),
            Command::PeerProvision(params) => reply(self.provision(params, true, progress).await?),
            Command::PeerUnprovision(params) => reply(self.provision(params, false, progress).await?),
            Command::Attach(params) => reply(self.attach(params).await?),
            Command::Heartbeat(params) => self.heartbeat(params).await.map(|()| Value::Null),
            Command::Detach(params) => self.detach(params).await.map(|()| Value::Null),
            Command::CapabilityUpdate(params) => reply(self.capability_update(params).await?),
            Command::Roster => reply(self.roster().await?),
            Command::Revoke(params) => self.revocation(params, true).await.map(|()| Value::Null),
            Command::Unrevoke(params) => self.revocation(params, false).await.map(|()| Value::Null),
            Command::EventsTail(params) => self.events_tail(params, progress).await,
            Command::PeerLink(pair) => reply(self.peer_link(pair).await?),
            Command::PeerUnlink(pair) => reply(self.peer_unlink(pair).await?),
            Command::PeerVisible(params) => reply(self.peer_visible(params).await?),
            Command::PeerSend(params) => reply(self.peer_send(params).await?),
            Command::PeerInbox(params) => reply(self.peer_inbox(params).await?),
            Command::PeerAck(params) => reply(self.peer_ack(params).await?),
            Command::PeerReply(params) => reply(self.peer_reply(params).await?),
            Command::PeerAcknowledge(params) => reply(self.peer_acknowledge(params).await?),
            Command::PeerOutbox(params) => reply(self.peer_outbox(params).await?),
            Command::PeerHistory(params) => reply(self.peer_history(params).await?),
        }
    }

    fn after_reply(&self, method: &str) {
        if matches!(method, methods::HOST_UPDATE | methods::HOST_RESTART)
            && self.host.restart_pending.swap(false, Ordering::Relaxed)
        {
            tracing::info!(method, "restarting onto the installed memoryd, keeping the sockets open");
            self.host.restarting.store(true, Ordering::Relaxed);
            self.host.shutdown.begun.cancel();
        }
        if method == methods::HOST_SHUTDOWN {
            tracing::info!("shutdown requested over the control socket");
            self.host.shutdown.begun.cancel();
        }
    }
}

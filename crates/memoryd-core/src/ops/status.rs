//! Judging health from the facts of a [`HostStatus`].

use crate::config::Config;
use memoryd_proto::status::HostStatus;

/// Fills `healthy` and `problems`: unhealthy when the root holds no
/// install, the daemon is down, the heartbeat is missing or stale, the
/// watch is off, the last sweep failed, or the MCP endpoint is configured
/// but not listening.
pub fn assess(status: &mut HostStatus, config: &Config) {
    let mut problems = Vec::new();
    if !status.installed {
        problems.push(format!("{}.", crate::ops::install::missing(Path::new(&status.root))));
    }
    match (status.running, status.pid) {
        (true, _) => {}
        (false, Some(pid)) => problems.push(format!("memoryd (pid {pid}) holds the lock but does not answer.")),
        (false, None) => problems.push("memoryd is not running.".to_owned()),
    }
    let stale = config.heartbeat_stale_after.as_secs();
    match status.heartbeat_age_secs {
        None => problems.push("there is no heartbeat file.".to_owned()),
        Some(age) if age > stale => {
            problems.push(format!("the heartbeat is {age}s old, past heartbeat_stale_after ({stale}s)."))
        }
        Some(_) => {}
    }
    if status.watch.as_deref() == Some("off") {
        problems.push("the fleet map watcher is off; changes are seen only by polling every 5 s.".to_owned());
    }
    if let Some(sweep) = &status.last_sweep
        && sweep.failed > 0
    {
        problems.push(format!("the last sweep failed for {} peer-runtime(s); run: memoryctl verify", sweep.failed));
    }
    match &status.mcp {
        mcp if mcp.port == 0 => {}
        mcp if mcp.listening == Some(false) => problems.push(match &mcp.error {
            Some(error) => format!("the MCP endpoint on port {} is not listening: {error}.", mcp.port),
            None => format!("the MCP endpoint on port {} is not listening.", mcp.port),
        }),
        // Off Linux the check does not exist (spec 60): said, not a problem.
        mcp if mcp.uid_check == Some(false) && cfg!(target_os = "linux") => {
            problems.push(format!("{}.", mcp.uid_check_reason.as_deref().unwrap_or("the MCP uid check is not active")))
        }
        _ => {}
    }
    if let Some(store) = &status.store
        && store.state != "up"
    {
        let why = store.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        problems.push(format!(
            "the fleet database is {}{why}; presence, links and messages answer store.unavailable until it is up.",
            store.state
        ));
    }
    status.healthy = problems.is_empty();
    status.problems = problems;
}

use crate::fleet::FleetRead;
use crate::host::heartbeat::Heartbeat;
use crate::host::instance::{lock_is_held, read_pid};
use crate::host::paths::Paths;
use crate::store::{FileStore, PresenceStore, StateStore};
use memoryd_proto::status::{FleetStatus, LockStatus, McpStatus, VaultStatus};
use std::path::Path;
use std::time::SystemTime;

/// The facts that can be read from disk without the daemon: the pid while
/// the lock is held, the heartbeat, the fleet map and its freshness, the
/// provision lock's holder, the configured endpoints, and the store's
/// presence counts, waiting messages and last sweep record. `running` is
/// false; what only a daemon knows stays null.
pub fn from_disk(paths: &Paths, config: &Config, config_file: &Path, now: SystemTime) -> HostStatus {
    let locked = lock_is_held(&paths.instance_lock).unwrap_or(false);
    let peers = FleetRead::load(&paths.fleet_map).map().map(|m| m.peers.len());
    let store = FileStore::read_only(paths);
    let mut status = shared_facts(paths, config, config_file, now, peers, &store);
    status.pid = if locked { read_pid(&paths.pid_file) } else { None };
    if config.store.backend == crate::config::Backend::Postgres {
        // The fleet database holds them, not S/store/: not read, so null.
        status.waiting_messages = None;
        return status;
    }
    status.presence = store.presence().ok().map(|p| p.counts());
    status.last_sweep = store.last_sweep().ok().flatten();
    status
}

/// The facts the daemon reads from disk too (it knows its pid and its
/// fleet map): whether the root holds an install, the heartbeat, the map's
/// freshness, the provision lock's holder, the waiting messages and the
/// configured endpoints.
pub fn shared_facts(
    paths: &Paths,
    config: &Config,
    config_file: &Path,
    now: SystemTime,
    peers: Option<usize>,
    store: &dyn StateStore,
) -> HostStatus {
    let heartbeat = Heartbeat::read(&paths.heartbeat);
    let checked_age_secs = std::fs::read_to_string(&paths.fleet_checked)
        .ok()
        .and_then(|t| humantime::parse_rfc3339(t.trim()).ok())
        .map(|at| now.duration_since(at).unwrap_or_default().as_secs());
    let holder = lock_is_held(&paths.provision_lock)
        .unwrap_or(false)
        .then(|| std::fs::read_to_string(&paths.provision_lock).map(|t| t.trim().to_owned()).unwrap_or_default());
    HostStatus {
        running: false,
        pid: None,
        version: None,
        uptime_secs: None,
        started_at: None,
        root: paths.root.display().to_string(),
        installed: crate::ops::install::is_installed(config_file),
        heartbeat_age_secs: heartbeat.as_ref().map(|h| h.age(now).as_secs()),
        watch: heartbeat.as_ref().map(|h| if h.watch_on { "on" } else { "off" }.to_owned()),
        fleet: FleetStatus { peers, checked_age_secs },
        last_sweep: None,
        lock: LockStatus { holder },
        presence: None,
        waiting_messages: store.waiting().ok().map(|w| w.values().sum()),
        // The daemon fills in what it found; from disk nothing is known.
        mcp: McpStatus { port: config.mcp_port, ..McpStatus::default() },
        vault: VaultStatus { path: config.vault.as_ref().map(|v| v.display().to_string()), ..VaultStatus::default() },
        supervisor: None,
        store: None,
        healthy: false,
        problems: Vec::new(),
    }
}

//! `verify [--repair]` (spec 30): one line per check, in order, repair
//! where the table says so. Without repair nothing is written at all and
//! no lock is taken.
//!
//! The daemon checks (`memoryd-heartbeat`, `memoryd-socket`) depend on who
//! runs them, so the caller reports them between [`config`] and [`rest`].

use crate::config::Config;
use crate::fleet::slot::{self, SlotState};
use crate::fleet::{FleetPeer, FleetRead};
use crate::host::heartbeat::Heartbeat;
use crate::ops::install::{check_executable, launcher_script};
use crate::ops::provision::{PairReport, Provisioner};
use crate::ops::report::Tally;
use crate::surfaces::codex_trust::{self, HookStates, Verdict};
use crate::surfaces::{self, Action, StateFile, json, shims};
use memoryd_proto::ProgressStatus::{self, Fail, Ok as Good, Repaired, Skip, Warn};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The header on every answer of the MCP endpoint that names the pid of
/// the memoryd answering: how `mcp-endpoint` tells this daemon's endpoint
/// from another program (or another root's memoryd) on the port.
pub const PID_HEADER: &str = "x-memoryd-pid";

/// `config`: the config loads and the vault, if set, is a readable dir.
pub fn config(config: &Config, error: Option<&str>, out: &mut Tally<'_>) {
    let (status, detail) = match (error, &config.vault) {
        (Some(e), _) => (Fail, format!("{e}; fix that key (memoryctl config check)")),
        (None, Some(vault)) if std::fs::read_dir(vault).is_err() => {
            (Fail, format!("vault {} is not a readable directory; fix the `vault` key", vault.display()))
        }
        (None, _) => (Good, "loads".to_owned()),
    };
    out.line("config", status, &detail);
}

/// `memoryd-heartbeat` as read from disk: present, fresh, `watch=on`.
pub fn heartbeat_from_disk(path: &Path, config: &Config, now: SystemTime) -> (ProgressStatus, String) {
    let Some(beat) = Heartbeat::read(path) else {
        return (Fail, format!("no heartbeat at {}: memoryd is not running", path.display()));
    };
    let age = beat.age(now);
    let stale = config.heartbeat_stale_after;
    if age > stale {
        (Fail, format!("{}s old, past heartbeat_stale_after ({}s)", age.as_secs(), stale.as_secs()))
    } else if !beat.watch_on {
        (Fail, format!("{}s old, but watch=off: the fleet map is only polled", age.as_secs()))
    } else {
        (Good, format!("{}s old, watch=on", age.as_secs()))
    }
}

/// Everything after the daemon checks.
pub struct Verify<'a> {
    pub p: &'a Provisioner<'a>,
    pub repair: bool,
    /// The user's home, where the agents keep their folder trust.
    pub home: Option<PathBuf>,
    /// Whether the daemon refused a rescan of the vault (false offline).
    pub refused_rescan: bool,
    /// The daemon's probe of the embeddings endpoint (None offline: the
    /// endpoint is the daemon's to ask).
    pub embeddings: Option<(ProgressStatus, String)>,
    /// The fleet database's facts (None with the file store).
    pub fleet: Option<FleetCheck>,
}

/// What the `store` rows say of the fleet database (spec 80), gathered by
/// whoever holds the store.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetCheck {
    /// The URL, never with a password.
    pub url: String,
    /// Up and compatible, or why not.
    pub state: Result<(), String>,
    /// One sentence per `warn` row: name conflicts, config values that
    /// differ from the fleet's, clock skew.
    pub warnings: Vec<String>,
}

impl Verify<'_> {
    pub fn rest(&self, out: &mut Tally<'_>) {
        self.slot(out);
        self.fleet_map(out);
        let peers = crate::ops::update::map_peers(self.p).unwrap_or_default();
        self.peer_surfaces(&peers, out);
        self.peer_trust(&peers, out);
        self.hook_trust(&peers, out);
        self.launcher(out);
        self.mcp_endpoint(out);
        self.vault(out);
        self.embeddings(out);
        self.provision_lock(out);
        self.store(out);
    }

    fn slot(&self, out: &mut Tally<'_>) {
        let paths = self.p.paths;
        let state = SlotState::read(&paths.slot);
        if let Some(refusal) = state.refusal(&paths.slot) {
            return out.line("memory-slot", Fail, &refusal);
        }
        let problem = match &state {
            SlotState::Ours(current) => {
                let mut want = slot::expected(paths, &self.p.tools.settings.memoryctl, SystemTime::now());
                want.registered_at = current.registered_at.clone();
                if *current != want {
                    Some(if current.version != want.version {
                        format!("declares v{}, this is v{}", current.version, want.version)
                    } else {
                        "its heartbeat or provision commands are stale".to_owned()
                    })
                } else {
                    check_executable(Path::new(&current.provision.command)).err()
                }
            }
            _ => Some("empty: the iapeer core cannot find memoryd's provision commands".to_owned()),
        };
        let Some(problem) = problem else {
            return out.line("memory-slot", Good, &format!("ours, v{}", crate::VERSION));
        };
        if !self.repair {
            return out.line("memory-slot", Fail, &problem);
        }
        match self.p.declare_slot() {
            Ok(_) => out.line("memory-slot", Repaired, &format!("{problem}; rewritten")),
            Err(e) => out.line("memory-slot", Fail, &format!("{problem}; cannot rewrite: {e}")),
        }
    }

    fn fleet_problem(&self) -> Option<String> {
        let paths = self.p.paths;
        match FleetRead::load(&paths.fleet_map) {
            FleetRead::Map(map) if map.peers.is_empty() => return Some("the map lists no peer".to_owned()),
            FleetRead::Map(_) => {}
            other => return Some(other.describe()),
        }
        let limit = self.p.config.fleet_refresh_interval * 3;
        let checked = std::fs::read_to_string(&paths.fleet_checked)
            .ok()
            .and_then(|t| humantime::parse_rfc3339(t.trim()).ok())
            .map(|at| SystemTime::now().duration_since(at).unwrap_or_default());
        match checked {
            None => Some("never refreshed from iapeer (no fleet.checked)".to_owned()),
            Some(age) if age > limit => {
                Some(format!("last refreshed {}s ago, past 3 × fleet_refresh_interval", age.as_secs()))
            }
            Some(_) => None,
        }
    }

    fn fleet_map(&self, out: &mut Tally<'_>) {
        let Some(problem) = self.fleet_problem() else {
            let peers = crate::ops::update::map_peers(self.p).map(|p| p.len()).unwrap_or(0);
            return out.line("fleet-map", Good, &format!("{peers} peers, fresh"));
        };
        if !self.repair {
            return out.line("fleet-map", Fail, &problem);
        }
        match self.p.refresh_fleet().map(|_| self.fleet_problem()) {
            Ok(None) => out.line("fleet-map", Repaired, &format!("{problem}; refreshed from iapeer")),
            Ok(Some(still)) => out.line("fleet-map", Fail, &format!("refreshed, but {still}")),
            Err(e) => out.line("fleet-map", Fail, &format!("{problem}; refresh failed: {e}")),
        }
    }

    fn peer_surfaces(&self, peers: &[FleetPeer], out: &mut Tally<'_>) {
        let (pairs, _) = self.p.inspect(peers);
        let total = pairs.len();
        let mut drifted: Vec<PairReport> = pairs.into_iter().filter(is_drifted).collect();
        if drifted.is_empty() {
            return out.line("peer-surfaces", Good, &format!("{total} peer-runtime(s) in place"));
        }
        let mut repaired = 0;
        if self.repair {
            let names: Vec<&str> = drifted.iter().map(|d| d.personality.as_str()).collect();
            let subset: Vec<FleetPeer> =
                peers.iter().filter(|p| names.contains(&p.personality.as_str())).cloned().collect();
            if let Err(e) = self.p.sweep(&subset) {
                return out.line("peer-surfaces", Fail, &format!("cannot re-sweep the drifted peers: {e}"));
            }
            let before = drifted.len();
            drifted = self.p.inspect(&subset).0.into_iter().filter(is_drifted).collect();
            repaired = before - drifted.len();
        }
        for pair in &drifted {
            let problems: Vec<String> = pair
                .outcomes
                .iter()
                .filter(|o| matches!(o.action, Action::Written | Action::Failed))
                .map(|o| format!("{}: {}", o.surface, o.detail.as_deref().unwrap_or("not in place")))
                .collect();
            let name = format!("peer-surfaces[{}:{}]", pair.personality, pair.runtime);
            out.line(&name, Fail, &problems.join("; "));
        }
        match (drifted.len(), repaired) {
            (0, n) => out.line("peer-surfaces", Repaired, &format!("{n} drifted peer-runtime(s) re-swept")),
            (left, _) => out.line("peer-surfaces", Fail, &format!("{left} of {total} peer-runtime(s) not in place")),
        }
    }

    fn peer_trust(&self, peers: &[FleetPeer], out: &mut Tally<'_>) {
        let home = self.home.as_deref();
        let claude_trust = home
            .and_then(|h| std::fs::read(h.join(".claude.json")).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let codex_trust = home
            .and_then(|h| std::fs::read_to_string(h.join(".codex/config.toml")).ok())
            .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok());
        let user_settings = home.map(|h| h.join(".claude/settings.json"));
        let (mut warned, mut checked) = (0, 0);
        for peer in peers.iter().filter(|p| p.cwd.is_dir()) {
            let keys = folder_keys(&peer.cwd);
            for runtime in peer.session_runtimes() {
                checked += 1;
                let name = format!("peer-trust[{}:{runtime}]", peer.personality);
                let trusted = match runtime {
                    "claude" => keys.iter().any(|k| {
                        claude_trust.as_ref().and_then(|v| v["projects"][k]["hasTrustDialogAccepted"].as_bool())
                            == Some(true)
                    }),
                    _ => keys.iter().any(|k| {
                        codex_trust
                            .as_ref()
                            .and_then(|d| d.get("projects")?.get(k)?.get("trust_level")?.as_str().map(str::to_owned))
                            .as_deref()
                            == Some("trusted")
                    }),
                };
                if !trusted {
                    warned += 1;
                    let file = if runtime == "claude" { "~/.claude.json" } else { "~/.codex/config.toml" };
                    out.line(
                        &name,
                        Warn,
                        &format!(
                            "{} is not trusted in {file}; the iapeer core trusts folders at birth",
                            peer.cwd.display()
                        ),
                    );
                }
                if runtime != "claude" {
                    continue;
                }
                // An operator's deny (or ask) rule wins over our allow rule.
                let files = [peer.cwd.join(".claude/settings.json"), peer.cwd.join(".claude/settings.local.json")];
                for file in files.iter().chain(&user_settings) {
                    let Some(settings) = std::fs::read(file).ok().and_then(|b| json::parse_object(&b).ok()) else {
                        continue;
                    };
                    let rules = surfaces::rules_against_our_tools(&settings);
                    if !rules.is_empty() {
                        warned += 1;
                        out.line(
                            &name,
                            Warn,
                            &format!(
                                "{} of {} keep a headless Claude session from calling memoryd's tools; memoryd never changes an operator's rule",
                                rules.join(", "),
                                file.display()
                            ),
                        );
                    }
                }
            }
        }
        match warned {
            0 => out.line("peer-trust", Good, &format!("{checked} peer-runtime(s) trusted")),
            w => out.line(
                "peer-trust",
                Warn,
                &format!(
                    "{w} finding(s) above; memoryd changes neither folder trust nor an operator's permission rules"
                ),
            ),
        }
    }

    /// `hook-trust`: per Codex peer, whether Codex would run each of
    /// memoryd's hooks as they are on disk, judged by the user's Codex
    /// config (read, never written: trusting is the iapeer core's job).
    /// `--repair` runs the trust step again and checks again.
    fn hook_trust(&self, peers: &[FleetPeer], out: &mut Tally<'_>) {
        let state = StateFile::load(&self.p.paths.surface_state).state;
        let codex: Vec<&FleetPeer> = peers
            .iter()
            .filter(|p| p.cwd.is_dir() && p.session_runtimes().any(|r| r == "codex") && !state.is_off(&p.cwd, "codex"))
            .collect();
        if codex.is_empty() {
            return out.line("hook-trust", Good, "no Codex peer-runtime");
        }
        let Some(config) = self.home.as_ref().map(|h| h.join(".codex/config.toml")) else {
            return out.line("hook-trust", Skip, "HOME is not set, so the user's Codex config cannot be read");
        };
        let judge_all = |peers: &[&FleetPeer]| -> Result<Vec<Result<Verdict, String>>, String> {
            let states = HookStates::load(&config)?;
            Ok(peers
                .iter()
                .map(|peer| {
                    let named = peer.cwd.join(".codex/hooks.json");
                    let real =
                        named.canonicalize().map_err(|_| format!("no {} (see peer-surfaces)", named.display()))?;
                    codex_trust::judge(&real, &named, &states)
                })
                .collect())
        };
        let verdicts = match judge_all(&codex) {
            Ok(verdicts) => verdicts,
            Err(e) => return out.line("hook-trust", Fail, &format!("{e}; Codex cannot read it either")),
        };
        let skipped = |v: &Result<Verdict, String>| !matches!(v, Ok(Verdict::Runs(_) | Verdict::Disabled(_)));
        let mut findings: Vec<(&FleetPeer, Result<Verdict, String>)> = codex.iter().copied().zip(verdicts).collect();
        let mut repaired = 0;
        let failing: Vec<usize> = (0..findings.len()).filter(|i| skipped(&findings[*i].1)).collect();
        if self.repair && !failing.is_empty() {
            let peers: Vec<&FleetPeer> = failing.iter().map(|i| findings[*i].0).collect();
            let cwds: Vec<PathBuf> = peers.iter().map(|p| p.cwd.clone()).collect();
            let seeded = match self.p.reseed_hook_trust(&cwds) {
                Ok(seeded) => seeded,
                Err(e) => return out.line("hook-trust", Fail, &format!("cannot re-seed Codex hook trust: {e}")),
            };
            let again = match judge_all(&peers) {
                Ok(again) => again,
                Err(e) => return out.line("hook-trust", Fail, &format!("{e}; Codex cannot read it either")),
            };
            for ((i, verdict), seeded) in failing.into_iter().zip(again).zip(seeded) {
                findings[i].1 = if !skipped(&verdict) {
                    repaired += 1;
                    verdict
                } else if matches!(seeded.action, Action::Failed | Action::Skipped) {
                    // The trust step's own failure says more than the check.
                    Err(seeded.detail.unwrap_or_else(|| "iapeer trust-hooks failed".to_owned()))
                } else {
                    verdict
                };
            }
        }
        let (mut failed, mut disabled, mut hooks) = (0, 0, 0);
        for (peer, verdict) in &findings {
            let name = format!("hook-trust[{}:codex]", peer.personality);
            match verdict {
                Ok(Verdict::Runs(n)) => hooks += n,
                Ok(Verdict::Disabled(note)) => {
                    disabled += 1;
                    out.line(&name, Warn, note);
                }
                Ok(Verdict::Skipped(why)) | Err(why) => {
                    failed += 1;
                    out.line(&name, Fail, why);
                }
            }
        }
        let total = findings.len();
        let (status, detail) = match (failed, repaired, disabled) {
            (0, 0, 0) => (Good, format!("Codex runs all {hooks} memoryd hooks of {total} Codex peer(s)")),
            (0, 0, d) => (Warn, format!("{d} Codex peer(s) with memoryd hooks turned off by the user")),
            (0, r, _) => {
                (Repaired, format!("re-seeded Codex hook trust for {r} folder(s); Codex runs memoryd's hooks now"))
            }
            (f, _, _) => (
                Fail,
                format!(
                    "{f} of {total} Codex peer(s) would skip memoryd's hooks: no presence, no peer messages in headless sessions"
                ),
            ),
        };
        out.line("hook-trust", status, &detail);
    }

    fn launcher(&self, out: &mut Tally<'_>) {
        let settings = &self.p.tools.settings;
        let mut wanted =
            vec![(self.p.paths.launcher.clone(), launcher_script(&self.p.tools.binaries.memoryd, &self.p.paths.root))];
        for runtime in shims::SESSION_RUNTIMES {
            for event in &shims::EVENTS {
                wanted.push((
                    shims::shim_path(&settings.hooks_dir, runtime, event),
                    shims::render(&settings.memoryctl, &settings.root, runtime, event),
                ));
            }
        }
        let wrong: Vec<String> = wanted
            .iter()
            .filter(|(path, bytes)| {
                std::fs::read(path).ok().as_deref() != Some(bytes.as_bytes()) || check_executable(path).is_err()
            })
            .map(|(path, _)| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect();
        if wrong.is_empty() {
            return out.line("launcher", Good, "launcher and hook shims in place");
        }
        let problem = format!("missing, changed or not executable: {}", wrong.join(", "));
        if !self.repair {
            return out.line("launcher", Fail, &problem);
        }
        match self.p.write_launcher_and_shims() {
            Ok(_) => out.line("launcher", Repaired, &format!("rewrote {}", wrong.join(", "))),
            Err(e) => out.line("launcher", Fail, &format!("{problem}; cannot rewrite: {e}")),
        }
    }

    fn mcp_endpoint(&self, out: &mut Tally<'_>) {
        let port = self.p.config.mcp_port;
        if port == 0 {
            return out.line("mcp-endpoint", Skip, "mcp_port is 0: the endpoint is off");
        }
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"memoryctl-verify","version":"1"}}}"#;
        // The endpoint answers only fleet nodes: speak as the first one.
        let node = crate::ops::update::map_peers(self.p)
            .ok()
            .and_then(|peers| peers.iter().find_map(|p| p.runtimes.first().map(|r| format!("{r}-{}", p.personality))));
        let headers: Vec<(&str, &str)> = node.iter().map(|n| ("X-IAPeer-Identity", n.as_str())).collect();
        let egress = &self.p.tools.egress;
        let answer = egress.http_post_loopback(port, "/mcp", &headers, body, Duration::from_secs(2));
        // This root's daemon, while it holds the instance lock.
        let paths = self.p.paths;
        let ours = crate::host::instance::lock_is_held(&paths.instance_lock)
            .unwrap_or(false)
            .then(|| crate::host::instance::read_pid(&paths.pid_file))
            .flatten();
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let detail = match egress.port_holder(port) {
                    Some(holder) => format!("port {port} is held by {holder}, which does not answer: {e}"),
                    None => format!("port {port} does not answer: {e}"),
                };
                return out.line("mcp-endpoint", Fail, &detail);
            }
        };
        let served_by: Option<u32> = answer.header(PID_HEADER).and_then(|p| p.parse().ok());
        let name = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["result"]["serverInfo"]["name"].as_str().map(str::to_owned));
        let (status, detail) = match (served_by, ours) {
            (Some(pid), Some(ours)) if pid == ours => match answer.status {
                200 if name.as_deref() == Some("memoryd") => {
                    (Good, format!("port {port} answers an MCP initialize as memoryd (pid {pid})"))
                }
                403 if node.is_none() => {
                    (Good, format!("port {port} answers as memoryd (pid {pid}); no fleet node to identify as"))
                }
                status => {
                    (Fail, format!("memoryd (pid {pid}) answered HTTP {status} to an MCP initialize on port {port}"))
                }
            },
            (Some(pid), _) => (
                Fail,
                format!(
                    "port {port} is served by another memoryd (pid {pid}), not this root's; give each root its own mcp_port"
                ),
            ),
            (None, _) => (
                Fail,
                format!(
                    "port {port} is held by {}, not by memoryd; stop it, or set mcp_port to a free port and run memoryctl update",
                    egress.who_holds(port)
                ),
            ),
        };
        out.line("mcp-endpoint", status, &detail);
    }

    /// A down endpoint is a warning: search then answers lexically.
    fn embeddings(&self, out: &mut Tally<'_>) {
        match (&self.p.config.search.embeddings_url, &self.embeddings) {
            (None, _) => {}
            (Some(_), Some((status, detail))) => out.line("embeddings", *status, detail),
            (Some(url), None) => {
                out.line("embeddings", Skip, &format!("{url} is asked by the daemon, and it is not running"))
            }
        }
    }

    fn vault(&self, out: &mut Tally<'_>) {
        match (&self.p.config.vault, self.p.index) {
            (None, _) => out.line("vault", Skip, "no vault configured"),
            (Some(_), _) if self.refused_rescan => out.line(
                "vault",
                Warn,
                "a rescan that would have dropped most notes was refused; the old index is kept (is the vault's disk mounted?)",
            ),
            (Some(vault), Some(index)) => out.line(
                "vault",
                Good,
                &format!("{}: {} notes indexed, {} skipped", vault.display(), index.len(), index.skipped()),
            ),
            (Some(vault), None) => out.line("vault", Fail, &format!("{}: cannot be indexed", vault.display())),
        }
    }

    fn provision_lock(&self, out: &mut Tally<'_>) {
        let path = &self.p.paths.provision_lock;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return out.line("provision-lock", Good, "free (never taken yet)");
            }
            Err(e) => return out.line("provision-lock", Fail, &format!("cannot open {}: {e}", path.display())),
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                out.line("provision-lock", Good, "free; flock works here")
            }
            Err(TryLockError::WouldBlock) => {
                let holder = crate::host::lock::read_holder(path);
                let held_for = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let limit = self.p.config.lock_timeout * 4;
                let detail = format!("held by {holder} for {}s", held_for.as_secs());
                if held_for > limit {
                    out.line("provision-lock", Fail, &format!("{detail}, more than 4 × lock_timeout"));
                } else {
                    out.line("provision-lock", Good, &detail);
                }
            }
            Err(TryLockError::Error(e)) => out.line(
                "provision-lock",
                Fail,
                &format!("flock does not work on {} ({e}); move the root to a local filesystem", path.display()),
            ),
        }
    }

    /// Loads everything stored (presence, links, each inbox); what does
    /// not load is named, never deleted.
    /// With the fleet database: FAIL (no repair) unless it is up and
    /// compatible, then a `warn` row per warning.
    fn store(&self, out: &mut Tally<'_>) {
        let at = self.fleet.as_ref().map(|f| format!("fleet database {}: ", f.url)).unwrap_or_default();
        match self.fleet.as_ref().map(|f| &f.state) {
            Some(Err(e)) => out.line("store", Fail, &format!("{at}{e}")),
            _ => match self.p.store.check() {
                Ok(loaded) => out.line("store", Good, &format!("{at}{loaded}")),
                Err(e) => out.line("store", Fail, &format!("{at}{e}")),
            },
        }
        for warning in self.fleet.iter().flat_map(|f| &f.warnings) {
            out.line("store", Warn, warning);
        }
    }
}

fn is_drifted(pair: &PairReport) -> bool {
    pair.outcomes.iter().any(|o| matches!(o.action, Action::Written | Action::Failed))
}

/// The keys a folder may be trusted under: as the map names it and as its
/// real path.
fn folder_keys(cwd: &Path) -> Vec<String> {
    let mut keys = vec![cwd.display().to_string()];
    if let Ok(real) = cwd.canonicalize()
        && real != cwd
    {
        keys.push(real.display().to_string());
    }
    keys
}

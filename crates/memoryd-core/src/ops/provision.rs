//! Provisioning peers and sweeping the fleet (spec 20), always under the
//! provision lock: the daemon's timer and on-change sweeps, its
//! `peer.provision` requests and an offline `memoryctl` all come here.

use crate::config::Config;
use crate::fleet::slot::SlotState;
use crate::fleet::{self, FleetPeer};
use crate::host::egress::Egress;
use crate::host::files::{FileError, FileGuard};
use crate::host::lock::{LockError, ProvisionGuard, ProvisionLock};
use crate::host::paths::Paths;
use crate::ops::install::{self, Binaries};
use crate::surfaces::{
    Action, Outcome, Settings, StateFile, SurfaceMemory, SurfaceState, Surfaces, shims, surface_names,
};
use crate::vault::fragment;
pub use memoryd_proto::PeerProvision as PeerRequest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A sweep holds the lock for about this long per batch, so a birth or an
/// operator's request never waits behind a whole fleet.
const BATCH: Duration = Duration::from_millis(250);

pub use memoryd_proto::host::{Skipped, SweepFailure};

/// The surfaces of one peer-runtime.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    pub personality: String,
    pub runtime: String,
    pub outcomes: Vec<Outcome>,
}

impl PairReport {
    pub fn ok(&self) -> bool {
        !self.outcomes.iter().any(|o| o.action == Action::Failed)
    }

    fn failures(&self) -> impl Iterator<Item = SweepFailure> + '_ {
        self.outcomes.iter().filter(|o| o.action == Action::Failed).map(|o| SweepFailure {
            personality: self.personality.clone(),
            runtime: self.runtime.clone(),
            surface: o.surface.to_string(),
            detail: o.detail.clone().unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub pairs: Vec<PairReport>,
    pub skipped: Vec<Skipped>,
    pub shims_written: usize,
    pub fragments_written: usize,
    /// Surface files and fragments (re)written: 0 for a no-op sweep.
    pub writes: usize,
}

impl SweepReport {
    pub fn ok_count(&self) -> usize {
        self.pairs.iter().filter(|p| p.ok()).count()
    }

    pub fn failures(&self) -> Vec<SweepFailure> {
        self.pairs.iter().flat_map(PairReport::failures).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0}")]
    Slot(String),
    #[error("cannot write the hook shims, so no entry may point at them: {0}")]
    Shims(FileError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// The argument rules of spec 30 for a provision or unprovision request:
/// names by the name rules, an absolute cwd that exists when provisioning.
/// The error names the argument.
pub fn validate(request: &PeerRequest, provisioning: bool) -> Result<(), String> {
    if !crate::fleet::names::is_personality(&request.personality) {
        return Err(format!("--personality {:?} breaks the name rule ^[a-z][a-z0-9-]{{0,31}}$", request.personality));
    }
    if !crate::fleet::names::is_runtime(&request.runtime) {
        return Err(format!("--runtime {:?} breaks the name rule ^[a-z][a-z0-9]{{0,31}}$", request.runtime));
    }
    if !request.cwd.is_absolute() {
        return Err(format!("--cwd {} is not an absolute path", request.cwd.display()));
    }
    if provisioning && !request.cwd.is_dir() {
        return Err(format!("--cwd {} does not exist or is not a directory", request.cwd.display()));
    }
    let occasion_ok = !request.occasion.is_empty()
        && request.occasion.len() <= 32
        && request.occasion.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    if !occasion_ok {
        return Err(format!(
            "--occasion {:?} is not an occasion name (birth, remove, sweep-on, off-peer, off-all)",
            request.occasion
        ));
    }
    Ok(())
}

/// What `provision-peer` / `unprovision-peer` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    /// Empty when the runtime has no surfaces.
    pub outcomes: Vec<Outcome>,
    /// The reason nothing was provisioned (not a session runtime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nothing: Option<String>,
    /// Whether a birth added the peer to the fleet map.
    #[serde(default)]
    pub fleet_updated: bool,
}

impl PeerReport {
    pub fn ok(&self) -> bool {
        !self.outcomes.iter().any(|o| o.action == Action::Failed)
    }
}

/// The surface settings and the egress of one operation, from the config
/// in force: the daemon and an offline `memoryctl` build them alike.
pub struct Tools {
    pub settings: Settings,
    pub egress: Egress,
    pub binaries: Binaries,
}

impl Tools {
    /// `running` is the canonical path of this process's binary; the
    /// refusing egress (test sandbox) allows this install's binaries and an
    /// explicitly configured `iapeer`.
    pub fn new(paths: &Paths, config: &Config, running: &Path, sandboxed: bool) -> Tools {
        let binaries = Binaries::resolve(config, running);
        let iapeer = install::iapeer_bin(config, sandboxed);
        let mut allowed = vec![binaries.memoryd.clone(), binaries.memoryctl.clone()];
        allowed.extend(iapeer.iter().cloned());
        Tools {
            settings: Settings {
                root: paths.root.clone(),
                hooks_dir: paths.hooks_dir.clone(),
                memoryctl: binaries.memoryctl.clone(),
                mcp_port: config.mcp_port,
                iapeer,
                codex_config: std::env::var_os("HOME")
                    .filter(|home| !home.is_empty())
                    .map(|home| PathBuf::from(home).join(".codex/config.toml")),
            },
            egress: if sandboxed { Egress::refusing(allowed) } else { Egress::live() },
            binaries,
        }
    }
}

/// The doors, the lock and the settings one operation works with.
pub struct Provisioner<'a> {
    pub paths: &'a Paths,
    pub files: &'a FileGuard,
    pub tools: &'a Tools,
    pub config: &'a Config,
    pub store: &'a dyn crate::store::StateStore,
    /// The vault index the fragments list notes from (None: no notes).
    pub index: Option<&'a crate::vault::Index>,
    pub lock: &'a ProvisionLock,
    /// Asked while waiting for the lock (a shutting-down daemon stops).
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// Told after every batch (`what`, items done, items in all), so the
    /// client of a long sweep sees that it moves.
    pub on_batch: &'a (dyn Fn(&str, usize, usize) + Sync),
    /// What the earlier sweeps of this process found (the daemon's).
    pub memory: Option<&'a SurfaceMemory>,
}

impl Provisioner<'_> {
    fn surfaces(&self) -> Surfaces<'_> {
        Surfaces { settings: &self.tools.settings, files: self.files, egress: &self.tools.egress, memory: self.memory }
    }

    fn acquire(&self, what: &str) -> Result<ProvisionGuard<'_>, LockError> {
        self.lock.acquire(what, self.config.lock_timeout, self.cancelled)
    }

    fn write_shims(&self, _held: &ProvisionGuard<'_>) -> Result<usize, ProvisionError> {
        shims::write_all(
            self.files,
            &self.tools.settings.hooks_dir,
            &self.tools.settings.memoryctl,
            &self.tools.settings.root,
            self.memory,
        )
        .map_err(ProvisionError::Shims)
    }

    /// What this operation's fragments are rendered from, read once.
    fn fragment_context(&self) -> fragment::Context<'_> {
        fragment::Context::load(self.paths, self.store, self.config.presence.min_client_version, self.index)
    }

    fn fragment(
        &self,
        held: &ProvisionGuard<'_>,
        context: &fragment::Context<'_>,
        state: &mut SurfaceState,
        personality: &str,
        cwd: &Path,
    ) -> Outcome {
        if context.unavailable {
            return Outcome {
                surface: "fragment".into(),
                action: Action::Skipped,
                path: cwd.to_path_buf(),
                detail: Some("the fleet database is unavailable; the fragment keeps its last content".to_owned()),
            };
        }
        let port = self.tools.settings.mcp_port;
        let inputs = context.inputs(personality, self.config.vault.as_deref(), (port != 0).then_some(port));
        let outcome = self.surfaces().write_fragment(held, state, cwd, &fragment::render(&inputs));
        if outcome.action == Action::Failed {
            tracing::warn!(personality, detail = outcome.detail.as_deref().unwrap_or(""), "cannot write the fragment");
        }
        outcome
    }

    /// Refreshes the fleet map from `iapeer list --json` (run without the
    /// lock), then stores it under the lock. A failure leaves the old map.
    pub fn refresh_fleet(&self) -> Result<fleet::Refreshed, fleet::RefreshError> {
        let iapeer = self.tools.settings.iapeer.clone().map_err(fleet::RefreshError::NoIapeer)?;
        let listed = fleet::list(&self.tools.egress, &iapeer)?;
        let held = self.acquire("fleet-refresh")?;
        let interval = self.config.fleet_refresh_interval;
        fleet::store_refresh(&held, self.files, self.paths, listed, interval, SystemTime::now())
    }

    /// Runs `each` over `items` in batches of about [`BATCH`], taking the
    /// lock per batch and releasing it in between, so a birth or an
    /// operator's request never waits behind a whole fleet. `first` runs
    /// once, under the first batch's hold.
    fn in_batches<T>(
        &self,
        what: &str,
        items: &[T],
        first: impl FnOnce(&ProvisionGuard<'_>) -> Result<(), ProvisionError>,
        mut each: impl FnMut(&ProvisionGuard<'_>, &mut SurfaceState, &T),
    ) -> Result<(), ProvisionError> {
        let mut first = Some(first);
        let mut next = 0;
        let mut file: Option<StateFile> = self.memory.and_then(SurfaceMemory::take_state);
        while first.is_some() || next < items.len() {
            if (self.cancelled)() {
                return Err(ProvisionError::Lock(LockError::Cancelled));
            }
            let held = self.acquire(what)?;
            if let Some(first) = first.take() {
                first(&held)?;
            }
            let file = match &mut file {
                Some(file) => {
                    file.refresh();
                    file
                }
                None => file.insert(StateFile::load(&self.paths.surface_state)),
            };
            let started = Instant::now();
            while next < items.len() && started.elapsed() < BATCH {
                each(&held, &mut file.state, &items[next]);
                next += 1;
            }
            file.save(self.files)?;
            (self.on_batch)(what, next, items.len());
        }
        if let (Some(memory), Some(file)) = (self.memory, file) {
            memory.keep_state(file);
        }
        Ok(())
    }

    /// The peers a sweep works on; the others are reported skipped.
    fn sweepable<'p>(peers: &'p [FleetPeer], skipped: &mut Vec<Skipped>) -> Vec<&'p FleetPeer> {
        let mut work = Vec::with_capacity(peers.len());
        work.extend(peers.iter().filter(|peer| {
            let reason = if peer.session_runtimes().next().is_none() {
                Some("no session runtime".to_owned())
            } else if !peer.cwd.is_dir() {
                Some(format!("cwd missing: {}", peer.cwd.display()))
            } else {
                None
            };
            if let Some(reason) = &reason {
                skipped.push(Skipped { personality: peer.personality.clone(), reason: reason.clone() });
            }
            reason.is_none()
        }));
        work
    }

    /// The peer's session runtimes memory is on for; those `unprovision-peer`
    /// turned off are reported skipped.
    fn switched_on<'p>(state: &SurfaceState, peer: &'p FleetPeer, skipped: &mut Vec<Skipped>) -> Vec<&'p str> {
        peer.session_runtimes()
            .filter(|runtime| {
                let off = state.is_off(&peer.cwd, runtime);
                if off {
                    skipped.push(Skipped {
                        personality: peer.personality.clone(),
                        reason: format!(
                            "memory turned off for {runtime} by unprovision-peer; provision-peer turns it on"
                        ),
                    });
                }
                !off
            })
            .collect()
    }

    /// Provisions every session runtime of every peer (and renders its
    /// fragment), batch by batch. A foreign or unreadable slot stops the
    /// sweep before it touches anything.
    pub fn sweep(&self, peers: &[FleetPeer]) -> Result<SweepReport, ProvisionError> {
        if let Some(refusal) = SlotState::read(&self.paths.slot).refusal(&self.paths.slot) {
            return Err(ProvisionError::Slot(refusal));
        }
        let _sweep = self.memory.map(SurfaceMemory::sweep);
        let mut report = SweepReport::default();
        let work = Self::sweepable(peers, &mut report.skipped);
        // One allocation, not a dozen doublings of a large buffer.
        report.pairs.reserve(work.iter().map(|peer| peer.session_runtimes().count()).sum());
        let mut shims_written = 0;
        let context = self.fragment_context();
        self.in_batches(
            "sweep",
            &work,
            |held| {
                shims_written = self.write_shims(held)?;
                Ok(())
            },
            |held, state, peer| {
                let runtimes = Self::switched_on(state, peer, &mut report.skipped);
                if runtimes.is_empty() {
                    return;
                }
                for runtime in runtimes {
                    match self.surfaces().provision(held, state, &peer.personality, &peer.cwd, runtime) {
                        Ok(outcomes) => {
                            report.writes += outcomes.iter().filter(|o| o.action == Action::Written).count();
                            report.pairs.push(PairReport {
                                personality: peer.personality.clone(),
                                runtime: runtime.to_owned(),
                                outcomes,
                            });
                        }
                        Err(reason) => report.skipped.push(Skipped { personality: peer.personality.clone(), reason }),
                    }
                }
                if self.fragment(held, &context, state, &peer.personality, &peer.cwd).action == Action::Written {
                    report.fragments_written += 1;
                    report.writes += 1;
                }
            },
        )?;
        report.shims_written = shims_written;
        Ok(report)
    }

    /// What a sweep would change, changing nothing and taking no lock:
    /// one report per session peer-runtime, `written` outcomes being drift.
    pub fn inspect(&self, peers: &[FleetPeer]) -> (Vec<PairReport>, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let state = StateFile::load(&self.paths.surface_state).state;
        let mut pairs = Vec::new();
        for peer in Self::sweepable(peers, &mut skipped) {
            for runtime in Self::switched_on(&state, peer, &mut skipped) {
                match self.surfaces().inspect(&state, &peer.personality, &peer.cwd, runtime) {
                    Ok(outcomes) => pairs.push(PairReport {
                        personality: peer.personality.clone(),
                        runtime: runtime.to_owned(),
                        outcomes,
                    }),
                    Err(reason) => skipped.push(Skipped { personality: peer.personality.clone(), reason }),
                }
            }
        }
        (pairs, skipped)
    }

    /// `verify --repair`: runs the Codex hook trust step again for these
    /// folders and checks it, batch by batch; one `trust` outcome each.
    pub fn reseed_hook_trust(&self, cwds: &[PathBuf]) -> Result<Vec<Outcome>, ProvisionError> {
        let mut outcomes = Vec::new();
        self.in_batches(
            "hook-trust",
            cwds,
            |_| Ok(()),
            |held, state, cwd| outcomes.push(self.surfaces().reseed_trust(held, state, cwd)),
        )?;
        Ok(outcomes)
    }

    /// Re-renders every peer's fragment; (written, unchanged, failed).
    pub fn render_fragments(&self, peers: &[FleetPeer]) -> Result<(usize, usize, usize), ProvisionError> {
        let mut skipped = Vec::new();
        let work = Self::sweepable(peers, &mut skipped);
        let mut counts = (0, 0, 0);
        let context = self.fragment_context();
        self.in_batches(
            "fragments",
            &work,
            |_| Ok(()),
            |held, state, peer| {
                if Self::switched_on(state, peer, &mut skipped).is_empty() {
                    return;
                }
                match self.fragment(held, &context, state, &peer.personality, &peer.cwd).action {
                    Action::Written => counts.0 += 1,
                    Action::Already | Action::Skipped => counts.1 += 1,
                    _ => counts.2 += 1,
                }
            },
        )?;
        Ok(counts)
    }

    /// Declares the slot with this version and these commands.
    pub fn declare_slot(&self) -> Result<crate::fleet::slot::Declared, ProvisionError> {
        let held = self.acquire("slot")?;
        crate::fleet::slot::declare(&held, self.files, self.paths, &self.tools.settings.memoryctl, SystemTime::now())
            .map_err(|e| match e {
                crate::fleet::slot::SlotError::Refused(why) => ProvisionError::Slot(why),
                crate::fleet::slot::SlotError::File(e) => ProvisionError::File(e),
            })
    }

    /// `uninstall`'s last step: our slot (never a foreign one), the hook
    /// shims and the launcher go. What was removed, by name.
    pub fn remove_install(&self) -> Result<Vec<String>, ProvisionError> {
        let held = self.acquire("uninstall")?;
        let mut removed = Vec::new();
        match crate::fleet::slot::remove(&held, self.files, self.paths) {
            Ok(true) => removed.push("slot".to_owned()),
            Ok(false) => {}
            Err(crate::fleet::slot::SlotError::Refused(why)) => return Err(ProvisionError::Slot(why)),
            Err(crate::fleet::slot::SlotError::File(e)) => return Err(e.into()),
        }
        for runtime in shims::SESSION_RUNTIMES {
            for event in &shims::EVENTS {
                if self.files.remove_file(&shims::shim_path(&self.tools.settings.hooks_dir, runtime, event))? {
                    removed.push(format!("memoryd.{runtime}.{}.sh", event.shim));
                }
            }
        }
        self.files.remove_empty_dir(&self.tools.settings.hooks_dir)?;
        if self.files.remove_file(&self.paths.launcher)? {
            removed.push("launcher".to_owned());
        }
        let mut file = StateFile::load(&self.paths.surface_state);
        file.state.forget_switches();
        file.save(self.files)?;
        Ok(removed)
    }

    /// Writes the hook shims and the launcher (0755, byte for byte); how
    /// many files were (re)written.
    pub fn write_launcher_and_shims(&self) -> Result<usize, ProvisionError> {
        let held = self.acquire("launcher")?;
        let script = crate::ops::install::launcher_script(&self.tools.binaries.memoryd, &self.paths.root);
        let launcher = self.files.write_if_changed(&self.paths.launcher, script.as_bytes(), Some(0o755))?;
        Ok(self.write_shims(&held)? + usize::from(launcher == crate::host::files::WriteOutcome::Written))
    }

    /// `provision-peer`: a birth first adds the peer to the fleet map.
    pub fn provision_peer(&self, request: &PeerRequest) -> Result<PeerReport, ProvisionError> {
        let what = format!("provision-peer {}:{}", request.personality, request.runtime);
        let held = self.acquire(&what)?;
        let mut fleet_updated = false;
        if request.occasion == "birth" {
            fleet_updated = fleet::record_birth(
                &held,
                self.files,
                self.paths,
                &request.personality,
                &request.cwd,
                &request.runtime,
                SystemTime::now(),
            )? == crate::host::files::WriteOutcome::Written;
            // A new birth is one of the two ways out of a revocation.
            self.revocation(request, |p, node, now| p.unrevoke(node, crate::presence::Revoker::Birth, now));
        }
        if surface_names(&request.runtime).is_none() {
            return Ok(PeerReport {
                outcomes: Vec::new(),
                nothing: Some(nothing_for(&request.runtime)),
                fleet_updated,
            });
        }
        self.write_shims(&held)?;
        let mut file = StateFile::load(&self.paths.surface_state);
        let outcomes = self
            .surfaces()
            .provision(&held, &mut file.state, &request.personality, &request.cwd, &request.runtime)
            .unwrap_or_else(|reason| vec![skipped_all(&request.runtime, &request.cwd, &reason)]);
        file.state.switch(&request.cwd, &request.runtime, true);
        self.fragment(&held, &self.fragment_context(), &mut file.state, &request.personality, &request.cwd);
        file.save(self.files)?;
        Ok(PeerReport { outcomes, nothing: None, fleet_updated })
    }

    /// `unprovision-peer`: the mirror; revocation (occasion `remove`) is
    /// the presence store's business.
    pub fn unprovision_peer(&self, request: &PeerRequest) -> Result<PeerReport, ProvisionError> {
        // Only the core's `remove` revokes; the other occasions only turn
        // memory off for a peer that still exists.
        if request.occasion == "remove" {
            self.revocation(request, |p, node, now| {
                p.revoke(node, crate::presence::Revoker::Core, Some("removed by the iapeer core"), now)
            });
        }
        if surface_names(&request.runtime).is_none() {
            return Ok(PeerReport {
                outcomes: Vec::new(),
                nothing: Some(nothing_for(&request.runtime)),
                fleet_updated: false,
            });
        }
        let what = format!("unprovision-peer {}:{}", request.personality, request.runtime);
        let held = self.acquire(&what)?;
        let mut file = StateFile::load(&self.paths.surface_state);
        let outcomes = self
            .surfaces()
            .unprovision(&held, &mut file.state, &request.personality, &request.cwd, &request.runtime)
            .unwrap_or_else(|reason| vec![skipped_all(&request.runtime, &request.cwd, &reason)]);
        file.state.switch(&request.cwd, &request.runtime, false);
        file.save(self.files)?;
        Ok(PeerReport { outcomes, nothing: None, fleet_updated: false })
    }
}

impl Provisioner<'_> {
    /// Revokes or unrevokes the request's node in the store; a store that
    /// fails is logged (the surfaces' outcome does not depend on it).
    fn revocation(
        &self,
        request: &PeerRequest,
        change: impl FnOnce(
            &dyn crate::store::StateStore,
            &str,
            SystemTime,
        ) -> Result<Vec<crate::presence::Event>, crate::store::StoreError>,
    ) {
        let node = format!("{}-{}", request.runtime, request.personality);
        let result = change(self.store, &node, SystemTime::now());
        if let Err(e) = result {
            tracing::warn!(node, error = %e, "cannot record the revocation change");
        }
    }
}

fn nothing_for(runtime: &str) -> String {
    format!("runtime `{runtime}` has no session surfaces; nothing to provision")
}

fn skipped_all(runtime: &str, cwd: &Path, reason: &str) -> Outcome {
    Outcome {
        surface: runtime.to_owned().into(),
        action: Action::Skipped,
        path: cwd.to_path_buf(),
        detail: Some(reason.to_owned()),
    }
}

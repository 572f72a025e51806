//! Synthetic fleets and the sweeps over them, in this process, with the
//! same domain code the daemon runs; the floor is this process reading the
//! same surface files and doing nothing else.

use crate::daemon::Bins;
use memoryd_core::config::Config;
use memoryd_core::fleet::FleetPeer;
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::lock::ProvisionLock;
use memoryd_core::host::paths::Paths;
use memoryd_core::ops::provision::{Provisioner, Tools};
use memoryd_core::store::FileStore;
use memoryd_core::surfaces::SurfaceMemory;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FOREIGN_SETTINGS: &str = r#"{"model":"opus","permissions":{"allow":["Bash(ls:*)"]},"hooks":{"SessionStart":[{"hooks":[{"type":"command","command":"team-start.sh"}]}],"PreToolUse":[{"matcher":"Bash","hooks":[{"type":"command","command":"guard.sh"}]}]},"enabledMcpjsonServers":["github"]}"#;
const FOREIGN_MCP: &str = r#"{"mcpServers":{"github":{"type":"stdio","command":"gh-mcp"}}}"#;
const FOREIGN_TOML: &str = "# team settings\nmodel = \"o4\" # pinned\n\n[mcp_servers.github]\ncommand = \"gh-mcp\"\n\n[profiles.fast]\nmodel = \"o4-mini\"\n";

/// A fake `iapeer`: lists the fleet file and trusts any hooks.json.
pub fn fake_iapeer(dir: &Path, listing: &Path) -> anyhow::Result<PathBuf> {
    let bin = dir.join("iapeer");
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  list) cat '{}' ;;\n  trust-hooks) echo trusted ;;\n  *) exit 0 ;;\nesac\n",
            listing.display()
        ),
    )?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

/// The peers of a synthetic fleet of `n`, their folders created under
/// `dir/peers`, every fifth pre-seeded with foreign content.
pub fn peers(dir: &Path, n: usize, offset: usize) -> anyhow::Result<Vec<FleetPeer>> {
    (offset..offset + n)
        .map(|i| {
            let cwd = dir.join("peers").join(format!("p{i}"));
            std::fs::create_dir_all(&cwd)?;
            if i % 5 == 0 {
                std::fs::create_dir_all(cwd.join(".claude"))?;
                std::fs::write(cwd.join(".claude/settings.json"), FOREIGN_SETTINGS)?;
                std::fs::write(cwd.join(".mcp.json"), FOREIGN_MCP)?;
                std::fs::create_dir_all(cwd.join(".codex"))?;
                std::fs::write(cwd.join(".codex/config.toml"), FOREIGN_TOML)?;
            }
            let runtimes: Vec<String> = match i % 4 {
                0 | 1 => vec!["claude".into()],
                2 => vec!["codex".into()],
                _ => vec!["claude".into(), "codex".into()],
            };
            Ok(FleetPeer {
                personality: format!("p{i}"),
                cwd: cwd.canonicalize()?,
                default_runtime: runtimes.first().cloned(),
                runtimes,
                description: String::new(),
            })
        })
        .collect()
}

/// A fleet and everything a provisioner needs to sweep it here.
pub struct Fleet {
    paths: Paths,
    files: FileGuard,
    tools: Tools,
    config: Config,
    store: FileStore,
    lock: ProvisionLock,
    peers: Vec<FleetPeer>,
    /// Kept between sweeps, as the daemon keeps it.
    memory: SurfaceMemory,
}

impl Fleet {
    pub fn generate(dir: &Path, n: usize, bins: &Bins) -> anyhow::Result<Fleet> {
        let paths = Paths::new(dir.join("r"));
        let files = FileGuard::for_install(&paths.root, None);
        memoryd_core::host::instance::ensure_private_dir(&files, &paths.state)?;
        let peers = peers(dir, n, 0)?;
        let mut config = Config { mcp_port: 8766, ..Config::default() };
        config.iapeer_bin = Some(fake_iapeer(dir, &dir.join("listing.json"))?);
        config.memoryctl_bin = Some(bins.memoryctl.clone());
        config.memoryd_bin = Some(bins.memoryd.clone());
        let mut tools = Tools::new(&paths, &config, &bins.memoryctl, true);
        // The fake core records no Codex hook trust, so the check after each
        // trust step would fail every codex pair (and re-run at every sweep).
        tools.settings.codex_config = None;
        let store = FileStore::open(&paths, &files)?;
        let lock = ProvisionLock::open(&files, &paths.provision_lock)?;
        Ok(Fleet { paths, files, tools, config, store, lock, peers, memory: SurfaceMemory::default() })
    }

    pub fn pairs(&self) -> usize {
        self.peers.iter().map(|p| p.session_runtimes().count()).sum()
    }

    fn provisioner(&self) -> Provisioner<'_> {
        Provisioner {
            paths: &self.paths,
            files: &self.files,
            tools: &self.tools,
            config: &self.config,
            store: &self.store,
            index: None,
            lock: &self.lock,
            cancelled: &|| false,
            on_batch: &|_, _, _| {},
            memory: Some(&self.memory),
        }
    }

    /// One whole sweep; its wall time.
    pub fn sweep(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let report = self.provisioner().sweep(&self.peers)?;
        let took = started.elapsed();
        anyhow::ensure!(report.failures().is_empty(), "the sweep failed: {:?}", report.failures().first());
        Ok(took)
    }

    /// The floor of a no-op sweep: reading every surface file it reads.
    pub fn read_surfaces(&self) -> Duration {
        let started = Instant::now();
        let bytes: usize =
            self.peers.iter().flat_map(surface_files).map(|f| std::fs::read(f).map_or(0, |b| b.len())).sum();
        std::hint::black_box(bytes);
        started.elapsed()
    }

    /// The floor of a first provision: the same bytes written to as many
    /// files in fresh folders under `dir`, each through a tmp file, a data
    /// sync and a rename (as every memoryd write is), and nothing else.
    pub fn write_floor(&self, dir: &Path) -> anyhow::Result<Duration> {
        let mut files = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            for file in surface_files(peer) {
                let rel = file.strip_prefix(&peer.cwd)?.to_path_buf();
                files.push((dir.join(format!("p{i}")).join(rel), std::fs::read(&file)?));
            }
        }
        let started = Instant::now();
        for (path, bytes) in &files {
            write_like_memoryd(path, bytes)?;
        }
        Ok(started.elapsed())
    }

    /// The file of each drifted peer (every `100 / percent`-th).
    fn drifted(&self, percent: usize) -> Vec<(PathBuf, &'static str)> {
        let every = 100 / percent.max(1);
        self.peers
            .iter()
            .step_by(every)
            .map(|peer| {
                if peer.runtimes.iter().any(|r| r == "claude") {
                    (
                        peer.cwd.join(".mcp.json"),
                        r#"{"mcpServers":{"memoryd":{"type":"http","url":"http://127.0.0.1:1/mcp"}}}"#,
                    )
                } else {
                    (peer.cwd.join(".codex/hooks.json"), r#"{"hooks":{}}"#)
                }
            })
            .collect()
    }

    /// Drifts `percent` % of the peers by hand, then times the sweep that
    /// repairs them.
    pub fn drift_and_repair(&self, percent: usize) -> anyhow::Result<Duration> {
        for (file, drift) in self.drifted(percent) {
            std::fs::write(file, drift)?;
        }
        self.sweep()
    }

    /// The floor of a drift repair: reading every surface file, then
    /// writing the drifted ones again as memoryd would.
    pub fn drift_floor(&self, percent: usize) -> anyhow::Result<Duration> {
        let repaired: Vec<(PathBuf, Vec<u8>)> = self
            .drifted(percent)
            .into_iter()
            .map(|(file, _)| std::fs::read(&file).map(|bytes| (file, bytes)))
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        self.read_surfaces();
        for (file, bytes) in &repaired {
            write_like_memoryd(file, bytes)?;
        }
        Ok(started.elapsed())
    }
}

/// The files a sweep reads for one peer (and writes on a first provision).
pub fn surface_files(peer: &FleetPeer) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = peer
        .session_runtimes()
        .flat_map(|runtime| match runtime {
            "claude" => &[".claude/settings.json", ".mcp.json", ".claude/skills/memoryd/SKILL.md"][..],
            _ => &[".codex/config.toml", ".codex/hooks.json"][..],
        })
        .map(|rel| peer.cwd.join(rel))
        .collect();
    files.push(peer.cwd.join(".iapeer/fragments/memoryd.md"));
    files
}

/// One write as memoryd makes it: a tmp file, the bytes, a data sync, a
/// rename into place (the parent created when missing).
pub fn write_like_memoryd(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("floor.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

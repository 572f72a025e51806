//! The fleet map `S/fleet.json` (spec 20): which peers exist, where, with
//! which runtimes. Produced from `iapeer list --json`, written only when the
//! peers changed, and diffed by the daemon to act on what changed.

pub mod names;
pub mod slot;

use crate::fleet::names::{is_personality, is_runtime};
use crate::host::egress::Egress;
use crate::host::files::{FileError, FileGuard, WriteOutcome};
use crate::host::lock::ProvisionGuard;
use crate::host::paths::Paths;
use crate::surfaces::shims::SESSION_RUNTIMES;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long `iapeer list --json` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// One peer of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetPeer {
    pub personality: String,
    pub cwd: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_runtime: Option<String>,
    pub runtimes: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The map as written to `S/fleet.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetMap {
    pub updated_at: String,
    pub peers: Vec<FleetPeer>,
}

/// What reading the map found. "No map" is never an empty fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetRead {
    Map(FleetMap),
    Missing,
    /// Present but unreadable or malformed; the sentence says why.
    Unreadable(String),
}

impl FleetRead {
    pub fn load(path: &Path) -> FleetRead {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FleetRead::Missing,
            Err(e) => return FleetRead::Unreadable(format!("cannot read {}: {e}", path.display())),
        };
        match serde_json::from_slice(&bytes) {
            Ok(map) => FleetRead::Map(map),
            Err(e) => FleetRead::Unreadable(format!("{} is malformed: {e}", path.display())),
        }
    }

    pub fn map(&self) -> Option<&FleetMap> {
        match self {
            FleetRead::Map(m) => Some(m),
            _ => None,
        }
    }

    /// One phrase for logs and status: `12 peers`, `no map (…)`.
    pub fn describe(&self) -> String {
        match self {
            FleetRead::Map(m) => format!("{} peers", m.peers.len()),
            FleetRead::Missing => "no map (not written yet)".to_owned(),
            FleetRead::Unreadable(why) => format!("no map ({why})"),
        }
    }
}

impl FleetMap {
    /// 2-space JSON with a trailing newline.
    pub fn render(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    pub fn peer(&self, personality: &str) -> Option<&FleetPeer> {
        self.peers.iter().find(|p| p.personality == personality)
    }

    /// Whether `node` (`<runtime>-<personality>`) is a runtime of a peer.
    pub fn has_node(&self, node: &str) -> bool {
        crate::fleet::names::split_node_id(node).is_some_and(|(runtime, personality)| {
            self.peer(personality).is_some_and(|p| p.runtimes.iter().any(|r| r == runtime))
        })
    }

    /// Every node of the fleet, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> =
            self.peers.iter().flat_map(|p| p.runtimes.iter().map(|r| format!("{r}-{}", p.personality))).collect();
        nodes.sort();
        nodes
    }

    /// Every peer's name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.peers.iter().map(|p| p.personality.as_str()).collect();
        names.sort_unstable();
        names
    }
}

impl FleetPeer {
    /// The runtimes that get surfaces.
    pub fn session_runtimes(&self) -> impl Iterator<Item = &str> {
        self.runtimes.iter().map(String::as_str).filter(|r| SESSION_RUNTIMES.contains(r))
    }
}

/// Why a refresh failed; the old map is left untouched.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("cannot run iapeer: {0}")]
    Run(String),
    #[error("{0}")]
    NoIapeer(String),
    #[error("`iapeer list --json` exited with {code}: {stderr}")]
    Failed { code: String, stderr: String },
    #[error("`iapeer list --json` printed something that is not a JSON list of peers: {0}")]
    Parse(String),
    #[error(transparent)]
    Lock(#[from] crate::host::lock::LockError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Runs `iapeer list --json` and normalises its rows. Takes no lock: the
/// caller writes the result under the provision lock.
pub fn list(egress: &Egress, iapeer: &Path) -> Result<Vec<FleetPeer>, RefreshError> {
    let out =
        egress.run(iapeer, &["list", "--json"], None, LIST_TIMEOUT).map_err(|e| RefreshError::Run(e.to_string()))?;
    if !out.success() {
        return Err(RefreshError::Failed {
            code: out.code.map_or("a signal".to_owned(), |c| c.to_string()),
            stderr: String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("no message").to_owned(),
        });
    }
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).map_err(|e| RefreshError::Parse(e.to_string()))?;
    Ok(normalise(&rows))
}

/// Drops rows without a personality or cwd (humans often have none) and
/// rows whose names break the name rules (logged); trims strings;
/// de-duplicates runtimes keeping their order. Unknown keys are ignored.
pub fn normalise(rows: &[Value]) -> Vec<FleetPeer> {
    let text = |row: &Value, key: &str| row.get(key).and_then(Value::as_str).map(str::trim).unwrap_or("").to_owned();
    let mut peers: Vec<FleetPeer> = Vec::new();
    for row in rows {
        let personality = text(row, "personality");
        let cwd = text(row, "cwd");
        if personality.is_empty() || cwd.is_empty() {
            continue;
        }
        if !is_personality(&personality) {
            tracing::warn!(
                personality,
                "fleet: dropping a peer whose name breaks the name rule ^[a-z][a-z0-9-]{{0,31}}$"
            );
            continue;
        }
        if !Path::new(&cwd).is_absolute() {
            tracing::warn!(personality, cwd, "fleet: dropping a peer whose cwd is not an absolute path");
            continue;
        }
        if peers.iter().any(|p| p.personality == personality) {
            tracing::warn!(personality, "fleet: dropping a second row for the same peer");
            continue;
        }
        let mut runtimes: Vec<String> = Vec::new();
        for entry in row.get("runtimes").and_then(Value::as_array).into_iter().flatten() {
            let name = entry.get("runtime").and_then(Value::as_str).or(entry.as_str()).map(str::trim).unwrap_or("");
            if !is_runtime(name) {
                tracing::warn!(
                    personality,
                    runtime = name,
                    "fleet: dropping a runtime whose name breaks the name rule"
                );
            } else if !runtimes.iter().any(|r| r == name) {
                runtimes.push(name.to_owned());
            }
        }
        let default_runtime = Some(text(row, "default_runtime")).filter(|r| is_runtime(r));
        peers.push(FleetPeer {
            personality,
            cwd: PathBuf::from(cwd),
            default_runtime,
            runtimes,
            description: text(row, "description"),
        });
    }
    peers
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub map: FleetMap,
    /// Whether `fleet.json` was written (the peers changed).
    pub changed: bool,
}

/// Records births (`S/fleet.births.json`: personality → RFC 3339), so a
/// refresh that runs before the core registers a newborn keeps it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Births(BTreeMap<String, String>);

impl Births {
    fn load(path: &Path) -> Births {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn save(&self, files: &FileGuard, path: &Path) -> Result<(), FileError> {
        let mut bytes = serde_json::to_vec_pretty(&self.0).unwrap_or_default();
        bytes.push(b'\n');
        files.write_if_changed(path, &bytes, Some(0o600)).map(drop)
    }

    fn age(&self, personality: &str, now: SystemTime) -> Option<Duration> {
        let at = humantime::parse_rfc3339(self.0.get(personality)?).ok()?;
        Some(now.duration_since(at).unwrap_or_default())
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Writes the listed peers as the new map (only when the peers changed),
/// keeping peers born less than two refresh intervals ago that the
/// registry does not list yet, and stamps `fleet.checked`.
pub fn store_refresh(
    _held: &ProvisionGuard<'_>,
    files: &FileGuard,
    paths: &Paths,
    mut listed: Vec<FleetPeer>,
    refresh_interval: Duration,
    now: SystemTime,
) -> Result<Refreshed, RefreshError> {
    let current = FleetRead::load(&paths.fleet_map);
    let mut births = Births::load(&paths.fleet_births);
    let grace = refresh_interval * 2;
    let young: Vec<String> =
        births.0.keys().filter(|p| births.age(p, now).is_some_and(|age| age < grace)).cloned().collect();
    if let Some(map) = current.map() {
        for personality in &young {
            if listed.iter().all(|p| &p.personality != personality)
                && let Some(peer) = map.peer(personality)
            {
                listed.push(peer.clone());
            }
        }
    }
    // Past the grace, the registry is the word.
    births.0.retain(|p, _| young.contains(p));
    births.save(files, &paths.fleet_births)?;
    let changed = current.map().is_none_or(|m| m.peers != listed);
    let map = match current {
        FleetRead::Map(map) if !changed => map,
        _ => {
            let map = FleetMap { updated_at: rfc3339(now), peers: listed };
            files.write_atomic(&paths.fleet_map, &map.render(), Some(0o644))?;
            map
        }
    };
    files.write_atomic(&paths.fleet_checked, format!("{}\n", rfc3339(now)).as_bytes(), Some(0o644))?;
    Ok(Refreshed { map, changed })
}

/// A birth adds (or updates) the peer in the map at once and remembers
/// when. An unreadable map is left alone (the next refresh rebuilds it).
pub fn record_birth(
    _held: &ProvisionGuard<'_>,
    files: &FileGuard,
    paths: &Paths,
    personality: &str,
    cwd: &Path,
    runtime: &str,
    now: SystemTime,
) -> Result<WriteOutcome, FileError> {
    let mut births = Births::load(&paths.fleet_births);
    births.0.insert(personality.to_owned(), rfc3339(now));
    births.save(files, &paths.fleet_births)?;
    let mut map = match FleetRead::load(&paths.fleet_map) {
        FleetRead::Map(map) => map,
        FleetRead::Missing => FleetMap { updated_at: rfc3339(now), peers: Vec::new() },
        FleetRead::Unreadable(_) => return Ok(WriteOutcome::Unchanged),
    };
    let before = map.peers.clone();
    match map.peers.iter_mut().find(|p| p.personality == personality) {
        Some(peer) => {
            peer.cwd = cwd.to_path_buf();
            if !peer.runtimes.iter().any(|r| r == runtime) {
                peer.runtimes.push(runtime.to_owned());
            }
        }
        None => map.peers.push(FleetPeer {
            personality: personality.to_owned(),
            cwd: cwd.to_path_buf(),
            default_runtime: Some(runtime.to_owned()),
            runtimes: vec![runtime.to_owned()],
            description: String::new(),
        }),
    }
    if map.peers == before {
        return Ok(WriteOutcome::Unchanged);
    }
    map.updated_at = rfc3339(now);
    files.write_atomic(&paths.fleet_map, &map.render(), Some(0o644)).map(|()| WriteOutcome::Written)
}

/// What the daemon must do about a map change: the peer-runtimes to
/// provision now (new peers, new session runtimes, moved folders) and the
/// peers that left the map (hidden, never revoked or unprovisioned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetDiff {
    pub provision: Vec<(FleetPeer, Vec<String>)>,
    pub gone: Vec<String>,
}

/// Diffs the old and new map. "No map" before means every peer is new;
/// "no map" after is never diffed (the caller keeps the old map).
pub fn diff(old: Option<&FleetMap>, new: &FleetMap) -> FleetDiff {
    let mut out = FleetDiff::default();
    for peer in &new.peers {
        let runtimes: Vec<String> = match old.and_then(|m| m.peer(&peer.personality)) {
            Some(before) if before.cwd == peer.cwd => {
                peer.session_runtimes().filter(|r| !before.runtimes.iter().any(|b| b == r)).map(str::to_owned).collect()
            }
            _ => peer.session_runtimes().map(str::to_owned).collect(),
        };
        if !runtimes.is_empty() {
            out.provision.push((peer.clone(), runtimes));
        }
    }
    if let Some(old) = old {
        out.gone =
            old.peers.iter().filter(|p| new.peer(&p.personality).is_none()).map(|p| p.personality.clone()).collect();
    }
    out
}
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn reads_a_map_and_tells_missing_from_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.json");
        assert_eq!(FleetRead::load(&path), FleetRead::Missing);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(FleetRead::load(&path), FleetRead::Unreadable(_)));
        std::fs::write(
            &path,
            r#"{"updatedAt":"2026-11-23T10:00:00Z","peers":[{"personality":"boris","cwd":"/p/boris","defaultRuntime":"claude","runtimes":["claude","codex"],"description":"x"}]}"#,
        )
        .unwrap();
        let read = FleetRead::load(&path);
        assert_eq!(read.describe(), "1 peers");
        assert_eq!(read.map().unwrap().peers[0].runtimes, ["claude", "codex"]);
    }

    #[test]
    fn normalises_the_listing() {
        let rows: Vec<Value> = serde_json::from_str(
            r#"[
              {"personality":" boris ","default_runtime":"claude","intelligence":"artificial","cwd":" /p/boris ",
               "runtimes":[{"runtime":"claude","status":"live"},{"runtime":"codex","status":"asleep"},{"runtime":"claude"}],
               "description":" d ","future":1},
              {"personality":"human","cwd":"","runtimes":[]},
              {"personality":"Bad_Name","cwd":"/p/x","runtimes":[]},
              {"personality":"rel","cwd":"p/rel","runtimes":[]},
              {"personality":"odd","cwd":"/p/odd","runtimes":[{"runtime":"no-dash"},"telegram"],"default_runtime":7}
            ]"#,
        )
        .unwrap();
        let peers = normalise(&rows);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].personality, "boris");
        assert_eq!(peers[0].cwd, PathBuf::from("/p/boris"));
        assert_eq!(peers[0].runtimes, ["claude", "codex"]);
        assert_eq!(peers[0].description, "d");
        assert_eq!(peers[1].runtimes, ["telegram"]);
        assert_eq!(peers[1].default_runtime, None);
        assert_eq!(peers[1].session_runtimes().count(), 0);
    }

    fn peer(name: &str, cwd: &str, runtimes: &[&str]) -> FleetPeer {
        FleetPeer {
            personality: name.into(),
            cwd: cwd.into(),
            default_runtime: runtimes.first().map(|r| r.to_string()),
            runtimes: runtimes.iter().map(|r| r.to_string()).collect(),
            description: String::new(),
        }
    }

    #[test]
    fn diffs_new_peers_runtimes_and_moves_but_never_a_missing_map() {
        let old = FleetMap {
            updated_at: "x".into(),
            peers: vec![peer("a", "/a", &["claude"]), peer("b", "/b", &["claude"]), peer("gone", "/g", &["codex"])],
        };
        let new = FleetMap {
            updated_at: "y".into(),
            peers: vec![
                peer("a", "/a", &["claude", "codex", "telegram"]),
                peer("b", "/b2", &["claude"]),
                peer("c", "/c", &["telegram"]),
                peer("d", "/d", &["codex"]),
            ],
        };
        let d = diff(Some(&old), &new);
        let got: Vec<(&str, Vec<String>)> =
            d.provision.iter().map(|(p, r)| (p.personality.as_str(), r.clone())).collect();
        assert_eq!(
            got,
            [("a", vec!["codex".to_owned()]), ("b", vec!["claude".to_owned()]), ("d", vec!["codex".to_owned()])]
        );
        assert_eq!(d.gone, ["gone"]);
        assert_eq!(diff(None, &new).provision.len(), 3, "no map before: every session peer is new");
        assert_eq!(diff(Some(&new), &new), FleetDiff::default());
    }

    #[test]
    fn a_refresh_writes_only_changes_and_keeps_young_births() {
        use crate::host::lock::ProvisionLock;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_path_buf());
        std::fs::create_dir_all(&paths.state).unwrap();
        let files = FileGuard::live();
        let lock = ProvisionLock::open(&files, &paths.provision_lock).unwrap();
        let held = lock.acquire("t", Duration::ZERO, &|| false).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let interval = Duration::from_secs(300);

        let first = store_refresh(&held, &files, &paths, vec![peer("a", "/a", &["claude"])], interval, t0).unwrap();
        assert!(first.changed);
        let bytes = std::fs::read(&paths.fleet_map).unwrap();
        assert!(bytes.ends_with(b"}\n") && bytes.starts_with(b"{\n  \"updatedAt\""));
        let again =
            store_refresh(&held, &files, &paths, vec![peer("a", "/a", &["claude"])], interval, t0 + interval).unwrap();
        assert!(!again.changed);
        assert_eq!(std::fs::read(&paths.fleet_map).unwrap(), bytes, "unchanged peers: not rewritten");
        assert!(std::fs::read_to_string(&paths.fleet_checked).unwrap().starts_with("2027-01-15T08:05:00Z"));

        // A birth is in the map at once, and survives a refresh that does
        // not list it yet, until two intervals have passed.
        let born = t0 + interval;
        let w = record_birth(&held, &files, &paths, "newt", Path::new("/n"), "codex", born).unwrap();
        assert_eq!(w, WriteOutcome::Written);
        assert!(FleetRead::load(&paths.fleet_map).map().unwrap().peer("newt").is_some());
        let kept = store_refresh(&held, &files, &paths, vec![peer("a", "/a", &["claude"])], interval, born + interval)
            .unwrap();
        assert!(kept.map.peer("newt").is_some() && !kept.changed);
        let dropped =
            store_refresh(&held, &files, &paths, vec![peer("a", "/a", &["claude"])], interval, born + interval * 3)
                .unwrap();
        assert!(dropped.map.peer("newt").is_none() && dropped.changed);
    }
}

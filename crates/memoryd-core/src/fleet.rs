//! The fleet map `S/fleet.json` (spec 20): which peers exist, where, with
//! which runtimes.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
}

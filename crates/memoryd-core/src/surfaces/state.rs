//! What memoryd remembers about each peer folder it provisioned
//! (`S/surfaces.json`): the runtimes it wired, the files and dirs it
//! created (only those may be deleted by unprovision), and the content hash
//! of the Codex hooks.json it last had trusted. Read and written under the
//! provision lock.

use crate::files::{FileError, FileGuard};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRecord {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub runtimes: BTreeSet<String>,
    /// Paths relative to the real peer folder.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub created: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_hooks: Option<String>,
}

impl PeerRecord {
    fn is_empty(&self) -> bool {
        *self == PeerRecord::default()
    }
}

/// Every provisioned folder, keyed by its real path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurfaceState {
    folders: BTreeMap<PathBuf, PeerRecord>,
}

impl SurfaceState {
    /// Loads the state; a missing file is an empty state. A malformed one
    /// is logged and replaced: losing it only means that files we created
    /// are kept on unprovision and Codex hook trust is asked for again.
    pub fn load(path: &Path) -> SurfaceState {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "the surface state is malformed; starting afresh");
                SurfaceState::default()
            }),
            Err(_) => SurfaceState::default(),
        }
    }

    /// Writes the state when it changed.
    pub fn save(&self, files: &FileGuard, path: &Path) -> Result<(), FileError> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        files.write_if_changed(path, &bytes, Some(0o600)).map(drop)
    }

    pub fn record(&mut self, folder: &Path) -> &mut PeerRecord {
        self.folders.entry(folder.to_path_buf()).or_default()
    }

    /// Every folder memoryd wired, with its record.
    pub fn folders(&self) -> impl Iterator<Item = (&Path, &PeerRecord)> {
        self.folders.iter().map(|(path, record)| (path.as_path(), record))
    }

    /// Drops records that hold nothing any more.
    pub fn prune(&mut self) {
        self.folders.retain(|_, r| !r.is_empty());
    }
}

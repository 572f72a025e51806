//! The `host.*` methods' results (their params are in [`crate::message`]).

use crate::message::ProgressStatus;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `host.reload` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reloaded {
    pub reloaded: bool,
    /// Whether the new configuration differs from the running one.
    pub changed: bool,
    pub file: PathBuf,
    /// Keys whose change takes effect at the next start of memoryd.
    pub restart_needed: Vec<String>,
}

/// `host.sweep` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swept {
    /// No surface failed.
    pub ok: bool,
    pub failed: Vec<SweepFailure>,
    /// Peer-runtimes swept.
    pub pairs: usize,
    pub skipped: Vec<Skipped>,
    /// Surface files and fragments (re)written: 0 for a no-op sweep.
    pub writes: usize,
}

/// One failed surface, as `host.sweep` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepFailure {
    pub personality: String,
    pub runtime: String,
    pub surface: String,
    pub detail: String,
}

/// A peer a sweep did not provision, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub personality: String,
    pub reason: String,
}

/// `host.restart` result, sent before the exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarting {
    pub restarting: bool,
    /// The binary the daemon execs.
    pub binary: PathBuf,
    /// The pid, which the restarted daemon keeps.
    pub pid: u32,
}

/// `host.shutdown` result, sent before the stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
    /// `systemd` or `launchd` when one runs the daemon.
    pub supervisor: Option<String>,
    /// Whether the supervisor will start it again.
    pub restarted: bool,
}

/// `host.update` result (its steps came as `host.progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Updated {
    pub ok: bool,
    /// Steps that failed.
    pub problems: usize,
    /// The version of the daemon that ran the update.
    pub version: String,
    /// Whether the daemon restarts onto `memoryd_bin` after this reply.
    pub restart: bool,
}

/// `host.verify` result: every check, as streamed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// One check of `host.verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: ProgressStatus,
    pub detail: String,
}

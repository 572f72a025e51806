//! The `host.status` object (also what `memoryctl status --json` prints).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub uptime_secs: Option<u64>,
    /// When this daemon image started (a restart in place starts a new
    /// image under the same pid); null without a daemon or from a daemon
    /// older than this field.
    #[serde(default)]
    pub started_at: Option<crate::time::Timestamp>,
    pub root: String,
    /// Whether the root holds a memoryd install (its config file exists).
    pub installed: bool,
    pub heartbeat_age_secs: Option<u64>,
    /// `on` or `off`; null when no heartbeat says.
    pub watch: Option<String>,
    pub fleet: FleetStatus,
    pub last_sweep: Option<SweepStatus>,
    pub lock: LockStatus,
    /// Null when the presence store could not be read. Without a daemon:
    /// the counts as stored.
    pub presence: Option<PresenceCounts>,
    /// Peer messages waiting in every inbox; null when not read.
    pub waiting_messages: Option<usize>,
    pub mcp: McpStatus,
    pub vault: VaultStatus,
    pub supervisor: Option<String>,
    /// Where presence, links and inboxes last (spec 80); null from a
    /// daemon older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    pub healthy: bool,
    /// One sentence per reason `healthy` is false.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// Null when there is no readable map.
    pub peers: Option<usize>,
    pub checked_age_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepStatus {
    /// RFC 3339.
    pub at: String,
    /// Peer-runtimes with no failed surface.
    pub ok: usize,
    /// Peer-runtimes with a failed surface.
    pub failed: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockStatus {
    /// `"<pid> <what>"` of the provision lock's holder, null when free.
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PresenceCounts {
    pub online: usize,
    pub degraded: usize,
    pub offline: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpStatus {
    /// 0 when the endpoint is off.
    pub port: u16,
    /// Null when no daemon answered to say.
    pub listening: Option<bool>,
    /// Why the endpoint is not listening (the port is taken, and by which
    /// process when that can be known); null when it listens or is off.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether connections from other uids are refused: true only when the
    /// daemon proved at start-up that it can tell who opened a connection;
    /// null when no daemon answered to say.
    pub uid_check: Option<bool>,
    /// Why `uidCheck` is false; null when it is true.
    #[serde(default)]
    pub uid_check_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultStatus {
    pub path: Option<String>,
    /// The index and the watcher live in the daemon: null when no daemon
    /// answered to say.
    pub notes: Option<usize>,
    pub watching: Option<bool>,
    pub refused_rescan: Option<bool>,
    /// Hybrid search's embeddings: null when they are off or no daemon
    /// answered to say.
    #[serde(default)]
    pub embeddings: Option<EmbeddingsStatus>,
}

/// The embeddings endpoint and how much of the vault has a vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingsStatus {
    pub endpoint: String,
    pub model: String,
    /// Notes with a vector; the others are ranked lexically.
    pub embedded: usize,
    pub dimension: Option<usize>,
    pub health: EndpointHealth,
    /// Why the endpoint is down: one sentence; null when it is not.
    pub error: Option<String>,
}

/// What the last request to the embeddings endpoint found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealth {
    /// Nothing asked yet.
    Unknown,
    Up,
    Down,
}

/// The store as `status` shows it: the file store is always `up`; the
/// fleet database is `connecting`, `up`, `down` or `incompatible`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    /// `file` or `postgres`.
    pub backend: String,
    pub state: String,
    /// When the store went `up` or `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<crate::time::Timestamp>,
    /// Why it is `down` or `incompatible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// The PostgreSQL schema holding the fleet's tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_name: Option<String>,
    /// The newest schema version applied to the database, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<i32>,
    /// The lowest schema version a binary may know and still use the
    /// database, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat_floor: Option<i32>,
    /// This host's clock minus the database's, as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

//! The `runtimenode.*` methods (spec 40) and `events.tail`: params,
//! results, and the states they speak of.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Attachment state of one (node, session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Registering,
    Online,
    Degraded,
    Offline,
    Revoked,
}

impl State {
    pub fn is_active(self) -> bool {
        matches!(self, State::Registering | State::Online | State::Degraded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Registering => "registering",
            State::Online => "online",
            State::Degraded => "degraded",
            State::Offline => "offline",
            State::Revoked => "revoked",
        }
    }
}

/// What a node reports about itself: never `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Online,
    Degraded,
    Offline,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Online => "online",
            Health::Degraded => "degraded",
            Health::Offline => "offline",
        }
    }
}

/// `runtimenode.attach` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachParams {
    pub session_id: String,
    pub node_id: String,
    pub client_version: String,
    #[serde(default)]
    pub capabilities: Map<String, Value>,
    #[serde(default = "online")]
    pub health_state: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

fn online() -> Health {
    Health::Online
}

/// `runtimenode.attach` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attached {
    pub attachment_id: String,
    pub state: State,
    pub read_only: bool,
    pub attached_at: Timestamp,
}

/// `runtimenode.heartbeat` params (result: null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatParams {
    pub node_id: String,
    /// Must be the active session when given.
    #[serde(default)]
    pub session_id: Option<String>,
    /// `online` when not given.
    #[serde(default)]
    pub health_state: Option<Health>,
}

/// `runtimenode.detach` params (result: null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetachParams {
    pub node_id: String,
    /// Must be the active session when given.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Why (`session-end`, an operator's words), for the logs.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `runtimenode.capabilityupdate` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityParams {
    pub node_id: String,
    pub capabilities: Map<String, Value>,
    #[serde(default)]
    pub health_changes: Option<HealthChange>,
}

/// `runtimenode.capabilityupdate` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityUpdated {
    pub node_id: String,
    pub state: State,
    pub updated_at: Timestamp,
}

/// A health the node reports with its new capabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthChange {
    pub state: Health,
}

/// `runtimenode.revoke` / `runtimenode.unrevoke` params (result: null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationParams {
    pub node_id: String,
    /// revoke: why, kept with the revocation.
    #[serde(default)]
    pub reason: Option<String>,
    /// revoke: a node the fleet map does not list (yet).
    #[serde(default)]
    pub force: bool,
}

/// One row of the `runtimenode.roster` result: a node's active session,
/// else its newest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterRow {
    pub node_id: String,
    pub personality: String,
    pub runtime: String,
    pub session_id: String,
    pub state: State,
    pub health: Health,
    pub read_only: bool,
    pub client_version: String,
    pub last_heartbeat_at: Timestamp,
    pub attached_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

/// `events.tail` params. The result (the recent events, or how a follow
/// ended) and the `events.event` notifications carry the events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TailParams {
    /// Stream new events as `events.event` notifications until the client
    /// goes or the daemon stops.
    #[serde(default)]
    pub follow: bool,
    /// Only this node's events.
    #[serde(default)]
    pub node: Option<String>,
    /// At most this many of the recent events (the daemon sends 200 at
    /// most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only recent events at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

//! The events of spec 40 and 50, as the store writes them and
//! `events.event` notifications carry them: one JSON object per event,
//! `event` naming it (`runtime_node.online`, `peer.message_dropped`, ...),
//! camelCase fields, times as RFC 3339 with milliseconds.

pub use crate::presence::{Health, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::SystemTime;

/// Why a session went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    /// The same process started a new session.
    Superseded,
    HeartbeatLost,
    ExplicitShutdown,
}

/// Who changed a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    Operator,
    /// The iapeer core removed the peer.
    Core,
    /// A new birth of the peer.
    Birth,
}

/// One event: when, and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The events, by their spec names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum EventKind {
    #[serde(rename = "runtime_node.registered", rename_all = "camelCase")]
    Registered {
        node_id: String,
        session_id: String,
        /// The names of the declared capabilities.
        capabilities: Vec<String>,
        client_version: String,
        /// Set when an ended session reconnects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_state: Option<State>,
        new_state: State,
    },
    #[serde(rename = "runtime_node.capability_declared", rename_all = "camelCase")]
    CapabilityDeclared { node_id: String, session_id: String, capability: String, capability_details: Value },
    #[serde(rename = "runtime_node.capability_updated", rename_all = "camelCase")]
    CapabilityUpdated {
        node_id: String,
        session_id: String,
        capability: String,
        previous_value: Option<Value>,
        new_value: Value,
    },
    #[serde(rename = "runtime_node.online", rename_all = "camelCase")]
    Online { node_id: String, session_id: String, previous_state: State, new_state: State },
    #[serde(rename = "runtime_node.degraded", rename_all = "camelCase")]
    Degraded { node_id: String, session_id: String, detail: String, previous_state: State, new_state: State },
    #[serde(rename = "runtime_node.offline", rename_all = "camelCase")]
    Offline {
        node_id: String,
        session_id: String,
        #[serde(with = "rfc3339")]
        last_heartbeat_at: SystemTime,
        reason: OfflineReason,
        previous_state: State,
        new_state: State,
    },
    #[serde(rename = "runtime_node.revoked", rename_all = "camelCase")]
    Revoked {
        node_id: String,
        /// The session it ended, when one was active.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        revoked_by: Actor,
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_state: Option<State>,
        new_state: State,
        actor: Actor,
    },
    #[serde(rename = "runtime_node.unrevoked", rename_all = "camelCase")]
    Unrevoked { node_id: String, by: Actor, previous_state: State, new_state: State },
    #[serde(rename = "peer.message_dropped", rename_all = "camelCase")]
    MessageDropped { personality: String, message_id: String, from: String },
    /// Queued in `personality`'s inbox.
    #[serde(rename = "peer.message_queued", rename_all = "camelCase")]
    MessageQueued { personality: String, message_id: String, from: String },
    /// Printed into `personality`'s context by a hook, which acknowledged its lease.
    #[serde(rename = "peer.message_delivered", rename_all = "camelCase")]
    MessageDelivered { personality: String, message_id: String, from: String },
    /// Confirmed by `personality`'s agent.
    #[serde(rename = "peer.message_acknowledged", rename_all = "camelCase")]
    MessageAcknowledged { personality: String, message_id: String, from: String },
    /// A host claimed a personality that another host owned but no longer
    /// had present (spec 80): the peer moved, with its links and inbox.
    #[serde(rename = "peer.claim_moved", rename_all = "camelCase")]
    ClaimMoved { personality: String, from: String, to: String },
}

impl Event {
    /// The node the event concerns, if it is a presence event.
    pub fn node_id(&self) -> Option<&str> {
        match &self.kind {
            EventKind::Registered { node_id, .. }
            | EventKind::CapabilityDeclared { node_id, .. }
            | EventKind::CapabilityUpdated { node_id, .. }
            | EventKind::Online { node_id, .. }
            | EventKind::Degraded { node_id, .. }
            | EventKind::Offline { node_id, .. }
            | EventKind::Revoked { node_id, .. }
            | EventKind::Unrevoked { node_id, .. } => Some(node_id),
            EventKind::MessageDropped { .. }
            | EventKind::MessageQueued { .. }
            | EventKind::MessageDelivered { .. }
            | EventKind::MessageAcknowledged { .. }
            | EventKind::ClaimMoved { .. } => None,
        }
    }

    /// The state a presence transition moved its node to.
    pub fn new_state(&self) -> Option<State> {
        match &self.kind {
            EventKind::Registered { new_state, .. }
            | EventKind::Online { new_state, .. }
            | EventKind::Degraded { new_state, .. }
            | EventKind::Offline { new_state, .. }
            | EventKind::Revoked { new_state, .. }
            | EventKind::Unrevoked { new_state, .. } => Some(*new_state),
            EventKind::CapabilityDeclared { .. }
            | EventKind::CapabilityUpdated { .. }
            | EventKind::MessageDropped { .. }
            | EventKind::MessageQueued { .. }
            | EventKind::MessageDelivered { .. }
            | EventKind::MessageAcknowledged { .. }
            | EventKind::ClaimMoved { .. } => None,
        }
    }

    /// Whether the event concerns `node` (all events when None).
    pub fn concerns(&self, node: Option<&str>) -> bool {
        node.is_none_or(|n| self.node_id() == Some(n))
    }
}

/// A time as RFC 3339 with milliseconds (`2026-12-01T10:00:00.000Z`), the
/// form every stored and sent time has.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime};

    pub fn format(at: SystemTime) -> String {
        humantime::format_rfc3339_millis(at).to_string()
    }

    pub fn parse(text: &str) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(text).ok()
    }

    /// `at` cut to the millisecond, as it is stored: a time kept in memory
    /// compares equal to the same time read back.
    pub fn millis(at: SystemTime) -> SystemTime {
        let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn serialize<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time")))
    }

    /// The same for an optional time.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::SystemTime;

        pub fn serialize<S: Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(text) => super::parse(&text)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn events_keep_their_spec_names_and_fields_on_the_wire() {
        let ts = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let offline = Event {
            ts,
            kind: EventKind::Offline {
                node_id: "claude-boris".into(),
                session_id: "s1".into(),
                last_heartbeat_at: ts,
                reason: OfflineReason::HeartbeatLost,
                previous_state: State::Online,
                new_state: State::Offline,
            },
        };
        let wire = serde_json::to_value(&offline).unwrap();
        assert_eq!(
            wire,
            json!({"ts": "2027-01-15T08:00:00.123Z", "event": "runtime_node.offline", "nodeId": "claude-boris",
                   "sessionId": "s1", "lastHeartbeatAt": "2027-01-15T08:00:00.123Z", "reason": "heartbeat_lost",
                   "previousState": "online", "newState": "offline"})
        );
        assert_eq!(serde_json::from_value::<Event>(wire).unwrap(), offline);
        let revoked = json!({"ts": "2027-01-15T08:00:00.123Z", "event": "runtime_node.revoked",
                             "nodeId": "claude-boris", "revokedBy": "core", "reason": null,
                             "newState": "revoked", "actor": "core"});
        let parsed: Event = serde_json::from_value(revoked.clone()).unwrap();
        assert_eq!(parsed.new_state(), Some(State::Revoked));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), revoked);
        let dropped = json!({"ts": "2027-01-15T08:00:00.123Z", "event": "peer.message_dropped",
                             "personality": "bob", "messageId": "m1", "from": "ada"});
        let parsed: Event = serde_json::from_value(dropped.clone()).unwrap();
        assert!(parsed.concerns(None) && !parsed.concerns(Some("claude-boris")));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), dropped);
    }
}

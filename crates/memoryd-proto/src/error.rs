//! JSON-RPC error objects and the stable `data.kind` strings (spec 10).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// JSON-RPC code for a line that is not JSON.
pub const CODE_PARSE_ERROR: i64 = -32700;
/// JSON-RPC code for a malformed request.
pub const CODE_INVALID_REQUEST: i64 = -32600;
/// JSON-RPC code for an unknown method.
pub const CODE_METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC code for bad params.
pub const CODE_INVALID_PARAMS: i64 = -32602;
/// JSON-RPC code for every other error; `data.kind` says which.
pub const CODE_SERVER_ERROR: i64 = -32000;

macro_rules! error_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// Every stable error kind a client may see in `data.kind`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorKind {
            /// All kinds, in declaration order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant,)*];

            /// The stable dotted name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $name,)*
                }
            }

            /// Looks a kind up by its dotted name.
            pub fn from_name(name: &str) -> Option<ErrorKind> {
                match name {
                    $($name => Some(ErrorKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_kinds! {
    /// Not JSON, not a JSON-RPC 2.0 request, or bad params.
    RequestInvalid => "request.invalid",
    /// No such method.
    MethodUnknown => "method.unknown",
    /// A line longer than `max_request_bytes`; the connection is closed.
    RequestTooLarge => "request.too_large",
    /// Past `max_connections`; the connection is closed.
    ServerBusy => "server.busy",
    /// The client speaks another protocol version.
    ProtocolMismatch => "protocol.mismatch",
    /// The daemon is stopping and did not finish the request in time.
    DaemonShuttingDown => "daemon.shutting_down",
    /// The connecting process runs as another user.
    ConnectionRefused => "connection.refused",
    /// The configuration is invalid (a reload keeps the old one).
    ConfigInvalid => "config.invalid",
    /// The provision lock stayed busy past `lock_timeout`.
    LockBusy => "lock.busy",
    /// The slot belongs to another provider or cannot be read.
    SlotForeign => "slot.foreign",
    /// An effect was refused by the test sandbox.
    SandboxRefused => "sandbox.refused",
    /// The node is not a session runtime of a peer in the fleet map.
    RuntimenodeUnknownNode => "runtimenode.unknown_node",
    /// The node is revoked.
    RuntimenodeAttachRevoked => "runtimenode.attach_revoked",
    /// Another session of the node is active.
    RuntimenodeAttachConflict => "runtimenode.attach_conflict",
    /// The session is not the node's active session.
    RuntimenodeStaleSession => "runtimenode.stale_session",
    /// The node has no active session.
    RuntimenodeNotAttached => "runtimenode.not_attached",
    /// The node's client version is below `presence.min_client_version`.
    VersionFloorExceeded => "version.floor_exceeded",
    /// A named peer is not in the fleet map.
    PeerMissing => "peer.missing",
    /// A peer cannot link or message itself.
    PeerSelf => "peer.self",
    /// An empty peer message.
    PeerMessageEmpty => "peer.message_empty",
    /// A peer message longer than 7,000 characters.
    PeerMessageTooLong => "peer.message_too_long",
    /// The recipient is not visible to the sender.
    PeerNotVisible => "peer.not_visible",
    /// More recipients than a message may have, or none.
    PeerTooManyRecipients => "peer.too_many_recipients",
    /// A subject longer than 200 characters or of more than one line.
    PeerSubjectInvalid => "peer.subject_invalid",
    /// The sender sent more messages in the last minute than
    /// `presence.peer_send_rate` allows.
    PeerRateLimited => "peer.rate_limited",
    /// The named message is not among those the peer received.
    PeerMessageUnknown => "peer.message_unknown",
    /// There is no readable fleet map to work on.
    FleetUnavailable => "fleet.unavailable",
    /// The fleet database (spec 80) cannot be reached or did not answer
    /// within the call's deadline; per-host work goes on.
    StoreUnavailable => "store.unavailable",
    /// The fleet database's schema is newer than this memoryd can use, or an
    /// applied migration does not match its file.
    StoreIncompatible => "store.incompatible",
    /// Another running host already uses this `postgres.host_id`.
    StoreHostTaken => "store.host_taken",
    /// The personality is owned by another host in the fleet.
    PeerNameTaken => "peer.name_taken",
    /// No memoryd install at the root (its config file is missing).
    /// Raised by memoryctl.
    InstallMissing => "install.missing",
    /// No daemon runs on the root (nothing holds its lock). Raised by
    /// memoryctl.
    DaemonNotRunning => "daemon.not_running",
    /// A daemon holds the root's lock or took the connection but did not
    /// answer in time (hung, stopped, or past a deadline). Raised by
    /// memoryctl.
    DaemonNotAnswering => "daemon.not_answering",
    /// A new daemon exited, or did not answer, before it was up. Raised by
    /// memoryctl.
    DaemonStartFailed => "daemon.start_failed",
    /// The control socket's file modes keep this user out (connect gave
    /// EACCES or EPERM). Raised by memoryctl.
    ConnectionPermissionDenied => "connection.permission_denied",
    /// A failure that is none of the above (in the daemon, or in memoryctl
    /// itself).
    Internal => "internal",
}

impl ErrorKind {
    /// The JSON-RPC code this kind travels with, when built without a
    /// more specific code (see [`RpcError::parse_error`]).
    pub fn code(self) -> i64 {
        match self {
            ErrorKind::RequestInvalid => CODE_INVALID_PARAMS,
            ErrorKind::MethodUnknown => CODE_METHOD_NOT_FOUND,
            _ => CODE_SERVER_ERROR,
        }
    }

    /// Whether the daemon closes the connection after sending this error.
    pub fn closes_connection(self) -> bool {
        matches!(self, ErrorKind::RequestTooLarge | ErrorKind::ServerBusy | ErrorKind::ConnectionRefused)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `data` member of an error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorData {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    /// One human sentence.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ErrorData>,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            code: kind.code(),
            message: message.into(),
            data: Some(ErrorData { kind: kind.as_str().to_owned(), details: None }),
        }
    }

    /// A line that is not JSON (-32700, `request.invalid`).
    pub fn parse_error(message: impl Into<String>) -> Self {
        RpcError { code: CODE_PARSE_ERROR, ..RpcError::new(ErrorKind::RequestInvalid, message) }
    }

    /// JSON that is not a JSON-RPC 2.0 request (-32600, `request.invalid`).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        RpcError { code: CODE_INVALID_REQUEST, ..RpcError::new(ErrorKind::RequestInvalid, message) }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        if let Some(data) = self.data.as_mut() {
            data.details = Some(details);
        }
        self
    }

    /// The stable kind, when the peer sent one this build knows.
    pub fn kind(&self) -> Option<ErrorKind> {
        self.data.as_ref().and_then(|d| ErrorKind::from_name(&d.kind))
    }

    /// The raw `data.kind` string, known to this build or not.
    pub fn kind_name(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.kind.as_str())
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use crate::methods::is_valid_name;

    #[test]
    fn kinds_are_unique_dotted_names_that_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let name = kind.as_str();
            assert!(seen.insert(name), "duplicate {name}");
            assert!(name == "internal" || name.contains('.'), "{name}");
            assert!(name == "internal" || is_valid_name(&name.replace('_', "")), "{name}");
            assert_eq!(ErrorKind::from_name(name), Some(*kind));
        }
    }

    #[test]
    fn codes_follow_spec_10() {
        assert_eq!(RpcError::parse_error("x").code, -32700);
        assert_eq!(RpcError::invalid_request("x").code, -32600);
        assert_eq!(RpcError::new(ErrorKind::RequestInvalid, "x").code, -32602);
        assert_eq!(RpcError::new(ErrorKind::MethodUnknown, "x").code, -32601);
        assert_eq!(RpcError::new(ErrorKind::RequestTooLarge, "x").code, -32000);
        assert_eq!(RpcError::parse_error("x").kind(), Some(ErrorKind::RequestInvalid));
    }
}

//! Every request as a typed command: the daemon parses a request into a
//! [`Command`] where it arrives and dispatches on it; a client builds one
//! and sends it. Method names live here and in [`crate::methods`] only.

use crate::error::{ErrorKind, RpcError};
use crate::message::{Hello, PeerProvision, Request, UpdateParams, VerifyParams};
use crate::methods;
use crate::peers::*;
use crate::presence::*;
use serde_json::{Map, Value};

macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident $(($params:ty))? = $name:path,)*) => {
        /// One request, by method, with its params.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Command {
            $($(#[$doc])* $variant $(($params))?,)*
        }

        impl Command {
            /// Parses a request: an unknown method is `method.unknown`,
            /// params that do not fit are `request.invalid` naming the field.
            pub fn parse(request: &Request) -> Result<Command, RpcError> {
                match request.method.as_str() {
                    $($name => Ok(commands!(@parse request $variant $(($params))?)),)*
                    other => Err(RpcError::new(ErrorKind::MethodUnknown, format!("unknown method `{other}`"))),
                }
            }

            /// The method name.
            pub fn method(&self) -> &'static str {
                match self {
                    $(commands!(@pattern $variant $(($params))?) => $name,)*
                }
            }

            /// The params, as they travel (`{}` for a method without).
            pub fn params(&self) -> Value {
                match self {
                    $(commands!(@bind params $variant $(($params))?) => commands!(@value params $(($params))?),)*
                }
            }
        }
    };
    (@parse $request:ident $variant:ident ($params:ty)) => { Command::$variant($request.params::<$params>()?) };
    (@parse $request:ident $variant:ident) => { Command::$variant };
    (@pattern $variant:ident ($params:ty)) => { Command::$variant(_) };
    (@pattern $variant:ident) => { Command::$variant };
    (@bind $p:ident $variant:ident ($params:ty)) => { Command::$variant($p) };
    (@bind $p:ident $variant:ident) => { Command::$variant };
    // Params types are plain structs with string keys: serialising them
    // cannot fail.
    (@value $p:ident ($params:ty)) => { serde_json::to_value($p).unwrap_or_else(|_| Value::Object(Map::new())) };
    (@value $p:ident) => { Value::Object(Map::new()) };
}

commands! {
    /// The handshake; result [`crate::HelloResult`].
    SessionHello(Hello) = methods::SESSION_HELLO,
    /// Result [`crate::status::HostStatus`].
    HostStatus = methods::HOST_STATUS,
    /// Result [`crate::host::Reloaded`].
    HostReload = methods::HOST_RELOAD,
    /// Result [`crate::host::Stopping`].
    HostShutdown = methods::HOST_SHUTDOWN,
    /// Result [`crate::host::Restarting`].
    HostRestart = methods::HOST_RESTART,
    /// Result [`crate::host::Swept`].
    HostSweep = methods::HOST_SWEEP,
    /// Result [`crate::host::Updated`].
    HostUpdate(UpdateParams) = methods::HOST_UPDATE,
    /// Result [`crate::host::Verified`].
    HostVerify(VerifyParams) = methods::HOST_VERIFY,
    PeerProvision(PeerProvision) = methods::PEER_PROVISION,
    PeerUnprovision(PeerProvision) = methods::PEER_UNPROVISION,
    /// Result [`Attached`].
    Attach(AttachParams) = methods::RUNTIMENODE_ATTACH,
    Heartbeat(HeartbeatParams) = methods::RUNTIMENODE_HEARTBEAT,
    Detach(DetachParams) = methods::RUNTIMENODE_DETACH,
    /// Result [`CapabilityUpdated`].
    CapabilityUpdate(CapabilityParams) = methods::RUNTIMENODE_CAPABILITYUPDATE,
    /// Result: [`RosterRow`]s.
    Roster = methods::RUNTIMENODE_ROSTER,
    Revoke(RevocationParams) = methods::RUNTIMENODE_REVOKE,
    Unrevoke(RevocationParams) = methods::RUNTIMENODE_UNREVOKE,
    EventsTail(TailParams) = methods::EVENTS_TAIL,
    /// Result [`Linked`].
    PeerLink(PeerPair) = methods::PEER_LINK,
    /// Result [`Unlinked`].
    PeerUnlink(PeerPair) = methods::PEER_UNLINK,
    /// Result: [`Visible`] rows.
    PeerVisible(PersonalityParams) = methods::PEER_VISIBLE,
    /// Result [`Sent`].
    PeerSend(SendParams) = methods::PEER_SEND,
    /// Result: [`Message`]s.
    PeerInbox(InboxParams) = methods::PEER_INBOX,
    /// Result [`Acked`].
    PeerAck(AckParams) = methods::PEER_ACK,
    /// Result [`Sent`].
    PeerReply(ReplyParams) = methods::PEER_REPLY,
    /// Result [`Acknowledged`].
    PeerAcknowledge(AcknowledgeParams) = methods::PEER_ACKNOWLEDGE,
    /// Result: [`OutboxRow`]s.
    PeerOutbox(OutboxParams) = methods::PEER_OUTBOX,
    /// Result: [`HistoryRow`]s.
    PeerHistory(HistoryParams) = methods::PEER_HISTORY,
}

impl Command {
    /// The request that carries this command.
    pub fn request(&self, id: impl Into<Value>) -> Request {
        Request::new(id, self.method(), self.params())
    }

    /// Whether the command may run for long while it streams: a client
    /// then waits for as long as notifications keep coming.
    pub fn is_long(&self) -> bool {
        matches!(
            self,
            Command::HostUpdate(_)
                | Command::HostVerify(_)
                | Command::HostSweep
                | Command::PeerProvision(_)
                | Command::PeerUnprovision(_)
                | Command::EventsTail(TailParams { follow: true, .. })
        )
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(method: &str, params: Value) -> Result<Command, RpcError> {
        Command::parse(&Request::new(1, method, params))
    }

    #[test]
    fn every_command_round_trips_through_its_request() {
        let commands = [
            Command::HostStatus,
            Command::HostUpdate(UpdateParams { skip: vec!["memoryd".into()] }),
            Command::Heartbeat(HeartbeatParams {
                node_id: "claude-boris".into(),
                session_id: Some("s1".into()),
                health_state: Some(Health::Degraded),
            }),
            Command::Revoke(RevocationParams { node_id: "codex-ada".into(), reason: None, force: true }),
            Command::EventsTail(TailParams { follow: true, ..TailParams::default() }),
            Command::PeerSend(SendParams {
                from: "ada".into(),
                to: Recipients::One("boris".into()),
                message: "hi".into(),
                subject: None,
                importance: Importance::Normal,
                ack_required: false,
                operator: false,
            }),
            Command::PeerSend(SendParams {
                from: "ada".into(),
                to: Recipients::Many(vec!["boris".into(), "cyd".into()]),
                message: "hi".into(),
                subject: Some("s".into()),
                importance: Importance::Urgent,
                ack_required: true,
                operator: false,
            }),
            Command::PeerHistory(HistoryParams {
                personality: "ada".into(),
                query: Some("x".into()),
                ..HistoryParams::default()
            }),
            Command::PeerAck(AckParams { personality: "ada".into(), ids: vec!["m1".into()] }),
        ];
        for command in commands {
            let request = Request::decode(&command.request(7).encode()).unwrap();
            assert_eq!(request.method, command.method());
            assert_eq!(Command::parse(&request).unwrap(), command);
        }
        assert_eq!(Command::HostSweep.params(), json!({}));
    }

    #[test]
    fn params_travel_with_their_spec_names() {
        let attach = Command::Attach(AttachParams {
            session_id: "s1".into(),
            node_id: "claude-boris".into(),
            client_version: "1.2".into(),
            capabilities: Map::new(),
            health_state: Health::Online,
            pid: Some(42),
        });
        assert_eq!(
            attach.params(),
            json!({"sessionId": "s1", "nodeId": "claude-boris", "clientVersion": "1.2", "capabilities": {},
                   "healthState": "online", "pid": 42})
        );
        let inbox = parse("peer.inbox", json!({"personality": "ada"})).unwrap();
        assert_eq!(inbox, Command::PeerInbox(InboxParams { personality: "ada".into(), lease: false, urgent: false }));
    }

    #[test]
    fn bad_params_and_unknown_methods_are_named() {
        let e = parse("peer.send", json!({"from": "ada", "to": "boris"})).unwrap_err();
        assert_eq!((e.code, e.kind()), (-32602, Some(ErrorKind::RequestInvalid)));
        assert!(e.message.contains("peer.send") && e.message.contains("message"), "{}", e.message);
        let e = parse("runtimenode.heartbeat", json!({"nodeId": "claude-boris", "healthState": "asleep"})).unwrap_err();
        assert!(e.message.contains("`healthState`"), "{}", e.message);
        let e = parse("host.nothing", json!({})).unwrap_err();
        assert_eq!((e.code, e.kind()), (-32601, Some(ErrorKind::MethodUnknown)));
        assert_eq!(e.message, "unknown method `host.nothing`");
    }

    #[test]
    fn only_streaming_commands_are_long() {
        assert!(Command::HostSweep.is_long());
        assert!(Command::EventsTail(TailParams { follow: true, ..TailParams::default() }).is_long());
        assert!(!Command::EventsTail(TailParams::default()).is_long());
        assert!(!Command::Roster.is_long());
    }
}

/// The results keep the exact bytes the daemon sent before they were
/// types (key order included: clients and scripts read them).
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod wire_shapes {
    use crate::host::*;
    use crate::peers::*;
    use crate::presence::*;
    use crate::time::Timestamp;
    use std::time::{Duration, SystemTime};

    fn text(value: impl serde::Serialize) -> String {
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn results_serialise_as_they_always_did() {
        let at = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_738_324_800_123));
        // The fields a sent message always had keep their names and order;
        // the thread and the recipients come after them.
        let sent = Sent {
            to: "bob".into(),
            queued: true,
            queue_depth: 2,
            dropped: 0,
            ts: at,
            id: "msg-1".into(),
            thread: "t".into(),
            recipients: vec![],
        };
        assert_eq!(
            text(sent),
            r#"{"to":"bob","queued":true,"queueDepth":2,"dropped":0,"ts":"2025-01-31T12:00:00.123Z","id":"msg-1","thread":"t","recipients":[]}"#
        );
        let linked = Linked { linked: true, already: false, a: "ada".into(), b: "bob".into() };
        assert_eq!(text(linked), r#"{"linked":true,"already":false,"a":"ada","b":"bob"}"#);
        let visible = Visible {
            personality: "ada".into(),
            reason: VisibleReason::Itself,
            state: State::Offline,
            health: Health::Offline,
        };
        assert_eq!(text(visible), r#"{"personality":"ada","reason":"self","state":"offline","health":"offline"}"#);
        // A message without threads' fields travels as it always did.
        let message = Message::plain("m".into(), "ada".into(), at, "hi".into());
        assert_eq!(text(message), r#"{"id":"m","from":"ada","ts":"2025-01-31T12:00:00.123Z","text":"hi"}"#);
        let stopping = Stopping { stopping: true, supervisor: None, restarted: false };
        assert_eq!(text(stopping), r#"{"stopping":true,"supervisor":null,"restarted":false}"#);
        let reloaded = Reloaded { reloaded: true, changed: false, file: "/c.toml".into(), restart_needed: vec![] };
        assert_eq!(text(reloaded), r#"{"reloaded":true,"changed":false,"file":"/c.toml","restartNeeded":[]}"#);
        let swept = Swept { ok: true, failed: vec![], pairs: 3, skipped: vec![], writes: 0 };
        assert_eq!(text(swept), r#"{"ok":true,"failed":[],"pairs":3,"skipped":[],"writes":0}"#);
        let updated = Updated { ok: true, problems: 0, version: "0.1.0".into(), restart: false };
        assert_eq!(text(updated), r#"{"ok":true,"problems":0,"version":"0.1.0","restart":false}"#);
        let attached = Attached { attachment_id: "a1".into(), state: State::Online, read_only: false, attached_at: at };
        assert_eq!(
            text(attached),
            r#"{"attachmentId":"a1","state":"online","readOnly":false,"attachedAt":"2025-01-31T12:00:00.123Z"}"#
        );
    }
}

//! Every method and notification name (each matches
//! `^[a-z][a-z0-9]*(\.[a-z][a-z0-9]*)+$`).

pub const SESSION_HELLO: &str = "session.hello";
pub const HOST_STATUS: &str = "host.status";
pub const HOST_RELOAD: &str = "host.reload";
pub const HOST_SHUTDOWN: &str = "host.shutdown";
pub const HOST_RESTART: &str = "host.restart";
pub const HOST_SWEEP: &str = "host.sweep";
pub const HOST_UPDATE: &str = "host.update";
pub const HOST_VERIFY: &str = "host.verify";
pub const PEER_PROVISION: &str = "peer.provision";
pub const PEER_UNPROVISION: &str = "peer.unprovision";
pub const RUNTIMENODE_ATTACH: &str = "runtimenode.attach";
pub const RUNTIMENODE_HEARTBEAT: &str = "runtimenode.heartbeat";
pub const RUNTIMENODE_DETACH: &str = "runtimenode.detach";
pub const RUNTIMENODE_CAPABILITYUPDATE: &str = "runtimenode.capabilityupdate";
pub const RUNTIMENODE_ROSTER: &str = "runtimenode.roster";
pub const RUNTIMENODE_REVOKE: &str = "runtimenode.revoke";
pub const RUNTIMENODE_UNREVOKE: &str = "runtimenode.unrevoke";
pub const EVENTS_TAIL: &str = "events.tail";
pub const PEER_LINK: &str = "peer.link";
pub const PEER_UNLINK: &str = "peer.unlink";
pub const PEER_VISIBLE: &str = "peer.visible";
pub const PEER_SEND: &str = "peer.send";
pub const PEER_INBOX: &str = "peer.inbox";
pub const PEER_ACK: &str = "peer.ack";
pub const PEER_REPLY: &str = "peer.reply";
pub const PEER_ACKNOWLEDGE: &str = "peer.acknowledge";
pub const PEER_OUTBOX: &str = "peer.outbox";
pub const PEER_HISTORY: &str = "peer.history";

/// Notification carrying one event of a followed `events.tail`.
pub const EVENTS_EVENT: &str = "events.event";

/// Notification carrying one step or check of a long request.
pub const HOST_PROGRESS: &str = "host.progress";

/// Notification that a long request moved (a sweep batch done) or that a
/// followed event log is still being followed: it prints nothing, and
/// tells the client the daemon is alive.
pub const HOST_WORKING: &str = "host.working";

/// Methods a client may call before a successful `session.hello`: the
/// handshake itself and the restart that moves an old daemon onto a new
/// binary (both keep their shape across protocol versions).
pub const BEFORE_HELLO: &[&str] = &[SESSION_HELLO, HOST_RESTART];

/// Whether `name` is a well-formed method or notification name.
pub fn is_valid_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let valid_part = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some('a'..='z')) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    match parts.next() {
        Some(first) if valid_part(first) => {}
        _ => return false,
    }
    let mut rest = 0;
    for p in parts {
        if !valid_part(p) {
            return false;
        }
        rest += 1;
    }
    rest > 0
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for name in [
            SESSION_HELLO,
            HOST_STATUS,
            HOST_RELOAD,
            HOST_SHUTDOWN,
            HOST_RESTART,
            HOST_PROGRESS,
            HOST_SWEEP,
            HOST_UPDATE,
            HOST_VERIFY,
            PEER_PROVISION,
            PEER_UNPROVISION,
            RUNTIMENODE_ATTACH,
            RUNTIMENODE_HEARTBEAT,
            RUNTIMENODE_DETACH,
            RUNTIMENODE_CAPABILITYUPDATE,
            RUNTIMENODE_ROSTER,
            RUNTIMENODE_REVOKE,
            RUNTIMENODE_UNREVOKE,
            EVENTS_TAIL,
            EVENTS_EVENT,
            PEER_LINK,
            PEER_UNLINK,
            PEER_VISIBLE,
            PEER_SEND,
            PEER_INBOX,
            PEER_ACK,
            PEER_REPLY,
            PEER_ACKNOWLEDGE,
            PEER_OUTBOX,
            PEER_HISTORY,
        ] {
            assert!(is_valid_name(name), "{name}");
        }
        for bad in ["host", "Host.status", "host.", ".host", "host..status", "host.st-atus", "1host.x", ""] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(is_valid_name("runtimenode.capabilityupdate"));
        assert!(is_valid_name("a1.b2.c3"));
    }
}

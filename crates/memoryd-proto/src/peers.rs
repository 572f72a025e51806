//! The `peer.link` … `peer.ack` methods (spec 50): params and results.

use crate::presence::{Health, State};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// `peer.link` / `peer.unlink` params: the two peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPair {
    pub a: String,
    pub b: String,
}

/// `peer.link` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linked {
    pub linked: bool,
    /// They were linked before this request.
    pub already: bool,
    pub a: String,
    pub b: String,
}

/// `peer.unlink` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlinked {
    /// Whether there was a link to remove.
    pub unlinked: bool,
    pub a: String,
    pub b: String,
}

/// `peer.visible` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalityParams {
    pub personality: String,
}

/// Why a peer is visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VisibleReason {
    /// The asking peer itself.
    #[serde(rename = "self")]
    Itself,
    /// A linked peer.
    Peer,
}

impl VisibleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            VisibleReason::Itself => "self",
            VisibleReason::Peer => "peer",
        }
    }
}

/// One row of the `peer.visible` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Visible {
    pub personality: String,
    pub reason: VisibleReason,
    /// The best state of the peer's nodes (`offline` when none attached).
    pub state: State,
    pub health: Health,
}

/// `peer.send` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendParams {
    pub from: String,
    pub to: String,
    pub message: String,
}

/// `peer.send` result: queued, not delivered; it reaches `to` at their
/// next turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub to: String,
    pub queued: bool,
    /// Messages now waiting for `to`.
    pub queue_depth: usize,
    /// The oldest messages dropped because the inbox was full.
    pub dropped: usize,
    pub ts: Timestamp,
    pub id: String,
}

/// `peer.inbox` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxParams {
    pub personality: String,
    /// Hide the returned messages from other readers for a while (a hook
    /// fetching its own peer's messages); false: only look.
    #[serde(default)]
    pub lease: bool,
}

/// One waiting message (a row of the `peer.inbox` result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub from: String,
    pub ts: Timestamp,
    pub text: String,
    /// Hidden from other readers until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_until: Option<Timestamp>,
}

/// `peer.ack` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckParams {
    pub personality: String,
    pub ids: Vec<String>,
}

/// `peer.ack` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked {
    /// How many of the named messages were there (and are now gone).
    pub acked: usize,
}

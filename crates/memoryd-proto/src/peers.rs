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

/// How soon a message must reach its recipient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// At the recipient's next turn.
    #[default]
    Normal,
    /// At the recipient's next hook that can add context (prompt submit,
    /// tool use), or before it goes idle (stop).
    Urgent,
}

impl Importance {
    pub fn is_normal(&self) -> bool {
        *self == Importance::Normal
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Importance::Normal => "normal",
            Importance::Urgent => "urgent",
        }
    }
}

/// Where a message stands for one recipient, as its sender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting in the recipient's inbox.
    Queued,
    /// A hook printed it into the recipient's context.
    Delivered,
    /// The recipient's agent confirmed it (`ackRequired` messages only).
    Acknowledged,
    /// The recipient's inbox was full and it was the oldest.
    Dropped,
    /// Delivered once, and gone from the recipient's bounded history since.
    Expired,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Acknowledged => "acknowledged",
            DeliveryState::Dropped => "dropped",
            DeliveryState::Expired => "expired",
        }
    }
}

/// One or more recipients: a single name travels as a string (as it
/// always did), several as a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Recipients {
    One(String),
    Many(Vec<String>),
}

impl Recipients {
    pub fn names(&self) -> Vec<String> {
        match self {
            Recipients::One(name) => vec![name.clone()],
            Recipients::Many(names) => names.clone(),
        }
    }
}

/// `peer.send` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendParams {
    /// The sending peer; ignored when `operator` is set.
    pub from: String,
    pub to: Recipients,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Importance::is_normal")]
    pub importance: Importance,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack_required: bool,
    /// Sent by the operator, to any peer, without a link.
    #[serde(default, skip_serializing_if = "is_false")]
    pub operator: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What one recipient's inbox did with a sent message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedFor {
    pub to: String,
    /// Messages now waiting for `to`.
    pub queue_depth: usize,
    /// The oldest messages dropped because the inbox was full.
    pub dropped: usize,
}

/// `peer.send` result: queued, not delivered; it reaches `to` at their
/// next turn (an urgent one at their next hook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    /// The first recipient.
    pub to: String,
    pub queued: bool,
    /// Messages now waiting for `to`.
    pub queue_depth: usize,
    /// The oldest messages dropped, over all recipients' inboxes.
    pub dropped: usize,
    pub ts: Timestamp,
    pub id: String,
    #[serde(default)]
    pub thread: String,
    /// Every recipient's inbox, in the order given.
    #[serde(default)]
    pub recipients: Vec<QueuedFor>,
}

/// `peer.inbox` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxParams {
    pub personality: String,
    /// Hide the returned messages from other readers for a while (a hook
    /// fetching its own peer's messages); false: only look.
    #[serde(default)]
    pub lease: bool,
    /// Only urgent messages (a hook in the middle of a turn).
    #[serde(default, skip_serializing_if = "is_false")]
    pub urgent: bool,
}

/// One message (a row of the `peer.inbox` result; also what a mailbox
/// keeps of what its peer sent and received). Every field past `text` is
/// optional on the wire, so inboxes written before threads load as they are.
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
    /// Every recipient (empty in an inbox written before there were several).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// The thread; None: the message starts its own (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Importance::is_normal")]
    pub importance: Importance,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack_required: bool,
    /// Sent by the operator (`from` is then `operator`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub operator: bool,
    /// A receipt: `from` acknowledged the named message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_for: Option<String>,
}

impl Message {
    /// A plain message as it was before threads.
    pub fn plain(id: String, from: String, ts: Timestamp, text: String) -> Message {
        Message {
            id,
            from,
            ts,
            text,
            leased_until: None,
            to: Vec::new(),
            thread: None,
            in_reply_to: None,
            subject: None,
            importance: Importance::Normal,
            ack_required: false,
            operator: false,
            receipt_for: None,
        }
    }

    /// The thread the message belongs to.
    pub fn thread(&self) -> &str {
        self.thread.as_deref().unwrap_or(&self.id)
    }
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

/// `peer.reply` params: answers a message `from` received, to its sender,
/// in its thread, with its subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyParams {
    pub from: String,
    pub message_id: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack_required: bool,
}

/// `peer.acknowledge` params: `personality` confirms a message it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcknowledgeParams {
    pub personality: String,
    pub message_id: String,
}

/// `peer.acknowledge` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledged {
    pub message_id: String,
    /// False when it was acknowledged before (nothing changed).
    pub acknowledged: bool,
    /// Whether a receipt went to the sender (not to the operator, who has
    /// no inbox).
    pub receipt: bool,
}

/// `peer.outbox` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxParams {
    pub personality: String,
    /// The most recent this many (20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One recipient's state of a sent message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub to: String,
    pub state: DeliveryState,
    /// When it reached that state (not known for `dropped` and `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

/// One row of the `peer.outbox` result: a sent message, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRow {
    pub id: String,
    pub thread: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub importance: Importance,
    pub ack_required: bool,
    pub sent_at: Timestamp,
    pub deliveries: Vec<Delivery>,
}

/// `peer.history` params: the messages `personality` sent or received,
/// narrowed to a peer, a thread, a search.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryParams {
    pub personality: String,
    /// Only those exchanged with this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// Ranked by relevance to these words (else oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Which way a kept message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Sent,
    Received,
}

/// One row of the `peer.history` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    pub direction: Direction,
    #[serde(flatten)]
    pub message: Message,
    /// With a query: its relevance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

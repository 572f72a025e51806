//! Peer links and peer messages (spec 50), as pure functions over the
//! stored documents; the store ([`crate::store`]) runs each inside one
//! change.
//!
//! A link is one unordered pair: both peers see each other by construction,
//! and a link is created or removed in one step, so it is whole or absent,
//! never one-sided. Each peer has its own mailbox, written durably before a
//! send is acknowledged: the messages waiting for it, and a bounded history
//! of those it received and sent, from which a sender's outbox reads each
//! recipient's delivery state (queued → delivered → acknowledged, or
//! dropped). Every rule of messages lives here; a store only orders the
//! writes.

use crate::fleet::FleetMap;
use crate::fleet::names::is_personality;
use crate::presence::{Event, EventKind, Refusal, RosterRow, State};
use crate::store::{StateStore, StoreError};
use memoryd_proto::ErrorKind;
use memoryd_proto::Timestamp;
use memoryd_proto::event::rfc3339;
pub use memoryd_proto::peers::{
    Delivery, DeliveryState, Direction, HistoryParams, HistoryRow, Importance, Message, OutboxRow, QueuedFor, Sent,
    Visible, VisibleReason,
};
use memoryd_proto::presence::Health;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The longest message, in characters: one always fits in what a hook may
/// add to an agent's context.
pub const MAX_MESSAGE_CHARS: usize = 7000;
/// How long a leased message is hidden from other readers.
pub const LEASE: Duration = Duration::from_secs(30);

/// Every link, as sorted pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    #[serde(default)]
    pub pairs: BTreeSet<(String, String)>,
}

impl Links {
    fn pair(a: &str, b: &str) -> (String, String) {
        if a <= b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
    }

    pub fn linked(&self, a: &str, b: &str) -> bool {
        self.pairs.contains(&Links::pair(a, b))
    }

    /// The peers `p` is linked with.
    pub fn of<'a>(&'a self, p: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs.iter().filter_map(move |(a, b)| {
            if a == p {
                Some(b.as_str())
            } else if b == p {
                Some(a.as_str())
            } else {
                None
            }
        })
    }

    /// `peer.link`: both must be fleet peers, and two; whether a new link
    /// was made.
    pub fn link(&mut self, fleet: &FleetMap, a: &str, b: &str) -> Result<bool, Refusal> {
        check_known(Some(fleet), a, false)?;
        check_known(Some(fleet), b, false)?;
        if a == b {
            return Err(refuse(ErrorKind::PeerSelf, format!("`{a}` cannot be linked with itself")));
        }
        Ok(self.pairs.insert(Links::pair(a, b)))
    }

    /// `peer.unlink`: each name must be a fleet peer or have a link (one
    /// that left the fleet keeps its links, and may be unlinked); whether
    /// there was a link.
    pub fn unlink(&mut self, fleet: Option<&FleetMap>, a: &str, b: &str) -> Result<bool, Refusal> {
        check_known(fleet, a, self.of(a).next().is_some())?;
        check_known(fleet, b, self.of(b).next().is_some())?;
        Ok(self.pairs.remove(&Links::pair(a, b)))
    }
}

/// Whether no reader holds `m` at `now`.
fn is_free(m: &Message, now: SystemTime) -> bool {
    m.leased_until.is_none_or(|until| until.time() <= now)
}

/// What bounds the messages kept: the inbox's capacity, the sender's rate
/// and the history (config `[presence]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages waiting per inbox; past it the oldest is dropped.
    pub capacity: usize,
    /// Most messages one peer may send per [`RATE_WINDOW`].
    pub send_rate: usize,
    /// Most delivered messages kept per peer, and most sent ones.
    pub history_max: usize,
    /// How long a delivered or sent message is kept.
    pub history_age: Duration,
}

impl Limits {
    pub fn of(config: &crate::config::PresenceConfig) -> Limits {
        Limits {
            capacity: config.inbox_capacity,
            send_rate: config.peer_send_rate,
            history_max: config.history_max,
            history_age: config.history_age,
        }
    }
}

/// The window of the per-sender rate limit.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Most recipients of one message.
pub const MAX_RECIPIENTS: usize = 16;
/// The longest subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// The sender name of the operator's messages.
pub const OPERATOR: &str = "operator";
/// How many ids of dropped messages a mailbox remembers, for the senders'
/// outboxes.
const DROPPED_KEPT: usize = 256;

/// A delivered message, kept for the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    #[serde(flatten)]
    pub message: Message,
    pub delivered_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<Timestamp>,
}

/// One peer's mailbox (`inbox/<peer>.json`): the messages waiting for it,
/// the ones it received and sent (bounded history), the ids dropped from
/// its inbox, and its recent send times. An inbox file written before
/// threads holds only `messages`, and loads as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub received: Vec<Kept>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sends: Vec<Timestamp>,
}

static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn message_event(
    kind: fn(String, String, String) -> EventKind,
    personality: &str,
    m: &Message,
    now: SystemTime,
) -> Event {
    Event { ts: rfc3339::millis(now), kind: kind(personality.to_owned(), m.id.clone(), m.from.clone()) }
}

fn queued(personality: String, message_id: String, from: String) -> EventKind {
    EventKind::MessageQueued { personality, message_id, from }
}

fn dropped_event(personality: String, message_id: String, from: String) -> EventKind {
    EventKind::MessageDropped { personality, message_id, from }
}

fn delivered(personality: String, message_id: String, from: String) -> EventKind {
    EventKind::MessageDelivered { personality, message_id, from }
}

fn acknowledged(personality: String, message_id: String, from: String) -> EventKind {
    EventKind::MessageAcknowledged { personality, message_id, from }
}

impl Inbox {
    /// Whether the mailbox has seen the message (waiting, received or
    /// dropped): queueing it again changes nothing.
    fn knows(&self, id: &str) -> bool {
        self.messages.iter().any(|m| m.id == id)
            || self.received.iter().any(|k| k.message.id == id)
            || self.dropped.iter().any(|d| d == id)
    }

    /// Queues `message` for `to`, dropping the oldest past the capacity:
    /// what `to`'s inbox did, a `peer.message_queued` event and a
    /// `peer.message_dropped` event per drop. A message the mailbox has
    /// seen already is not queued again (a receipt retried after a crash).
    pub fn queue(&mut self, to: &str, message: Message, limits: &Limits, now: SystemTime) -> (QueuedFor, Vec<Event>) {
        if self.knows(&message.id) {
            return (QueuedFor { to: to.to_owned(), queue_depth: self.messages.len(), dropped: 0 }, Vec::new());
        }
        let mut events = vec![message_event(queued, to, &message, now)];
        self.messages.push(message);
        let overflow = self.messages.len().saturating_sub(limits.capacity.max(1));
        let dropped: Vec<Message> = self.messages.drain(..overflow).collect();
        for m in &dropped {
            tracing::warn!(personality = to, message = m.id, from = m.from, "inbox full: dropped the oldest message");
            events.push(message_event(dropped_event, to, m, now));
            self.dropped.push(m.id.clone());
        }
        self.prune(limits, now);
        (QueuedFor { to: to.to_owned(), queue_depth: self.messages.len(), dropped: dropped.len() }, events)
    }

    /// The messages no reader holds at `now`, oldest first (only the urgent
    /// ones with `urgent_only`).
    pub fn free(&self, now: SystemTime, urgent_only: bool) -> Vec<Message> {
        self.messages.iter().filter(|m| is_free(m, now) && (!urgent_only || is_urgent(m))).cloned().collect()
    }

    /// The same messages, each now hidden from other readers for [`LEASE`].
    pub fn lease(&mut self, now: SystemTime, urgent_only: bool) -> Vec<Message> {
        let until = rfc3339::millis(now + LEASE);
        let mut taken = Vec::new();
        for m in self.messages.iter_mut().filter(|m| is_free(m, now) && (!urgent_only || is_urgent(m))) {
            m.leased_until = Some(Timestamp(until));
            taken.push(Message { leased_until: None, ..m.clone() });
        }
        taken
    }

    /// `peer.ack`: the named messages were printed into `p`'s context;
    /// they leave the inbox for the history. How many were waiting, and a
    /// `peer.message_delivered` event each.
    pub fn deliver(&mut self, p: &str, ids: &[String], limits: &Limits, now: SystemTime) -> (usize, Vec<Event>) {
        let (taken, kept): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.messages).into_iter().partition(|m| ids.contains(&m.id));
        self.messages = kept;
        let at = Timestamp(rfc3339::millis(now));
        let events = taken.iter().map(|m| message_event(delivered, p, m, now)).collect();
        let n = taken.len();
        self.received.extend(taken.into_iter().map(|m| Kept {
            message: Message { leased_until: None, ..m },
            delivered_at: at,
            acknowledged_at: None,
        }));
        self.prune(limits, now);
        (n, events)
    }

    /// A message this mailbox's peer received, or why there is none.
    pub fn received_message(&self, id: &str) -> Result<&Kept, Refusal> {
        match self.received.iter().find(|k| k.message.id == id) {
            Some(k) => Ok(k),
            None if self.messages.iter().any(|m| m.id == id) => Err(refuse(
                ErrorKind::PeerMessageUnknown,
                format!("message {id} has not been delivered to you yet; it arrives with your next prompt"),
            )),
            None => Err(refuse(
                ErrorKind::PeerMessageUnknown,
                format!("message {id} is not among the messages you received; peer_messages_search finds its id"),
            )),
        }
    }

    /// The received message this mailbox's peer may acknowledge, or why not.
    pub fn acknowledgeable(&self, id: &str) -> Result<&Kept, Refusal> {
        let k = self.received_message(id)?;
        if !k.message.ack_required {
            return Err(refuse(
                ErrorKind::RequestInvalid,
                format!("message {id} does not ask for an acknowledgement; there is nothing to confirm"),
            ));
        }
        Ok(k)
    }

    /// `peer.acknowledge`: marks a received `ackRequired` message; whether
    /// it changed (false: acknowledged before), with its event.
    pub fn acknowledge(&mut self, p: &str, id: &str, now: SystemTime) -> Result<(bool, Vec<Event>), Refusal> {
        self.acknowledgeable(id)?;
        let Some(k) = self.received.iter_mut().find(|k| k.message.id == id) else {
            return Err(refuse(ErrorKind::PeerMessageUnknown, format!("message {id} is not among those you received")));
        };
        if k.acknowledged_at.is_some() {
            return Ok((false, Vec::new()));
        }
        k.acknowledged_at = Some(Timestamp(rfc3339::millis(now)));
        Ok((true, vec![message_event(acknowledged, p, &k.message, now)]))
    }

    /// The per-sender rate limit: refused when `from` sent
    /// `limits.send_rate` messages within the last [`RATE_WINDOW`].
    pub fn check_rate(&self, from: &str, limits: &Limits, now: SystemTime) -> Result<(), Refusal> {
        let recent = self.sends.iter().filter(|t| within(t.time(), RATE_WINDOW, now)).count();
        if recent >= limits.send_rate {
            return Err(refuse(
                ErrorKind::PeerRateLimited,
                format!(
                    "`{from}` sent {recent} messages in the last minute, the limit of presence.peer_send_rate ({} per minute); wait a minute and send again",
                    limits.send_rate
                ),
            ));
        }
        Ok(())
    }

    /// Records a message this mailbox's peer sent.
    pub fn record_sent(&mut self, message: &Message, limits: &Limits, now: SystemTime) {
        self.sends.push(Timestamp(rfc3339::millis(now)));
        self.sent.push(Message { leased_until: None, ..message.clone() });
        self.prune(limits, now);
    }

    /// Keeps the history within its bounds and forgets send times past the
    /// rate window.
    fn prune(&mut self, limits: &Limits, now: SystemTime) {
        self.received.retain(|k| within(k.delivered_at.time(), limits.history_age, now));
        self.sent.retain(|m| within(m.ts.time(), limits.history_age, now));
        self.sends.retain(|t| within(t.time(), RATE_WINDOW, now));
        let extra = self.received.len().saturating_sub(limits.history_max);
        self.received.drain(..extra);
        let extra = self.sent.len().saturating_sub(limits.history_max);
        self.sent.drain(..extra);
        let extra = self.dropped.len().saturating_sub(DROPPED_KEPT);
        self.dropped.drain(..extra);
    }

    /// Where message `id` stands in this (its recipient's) mailbox.
    pub fn state_of(&self, id: &str) -> Option<(DeliveryState, Option<Timestamp>)> {
        if let Some(k) = self.received.iter().find(|k| k.message.id == id) {
            return Some(match k.acknowledged_at {
                Some(at) => (DeliveryState::Acknowledged, Some(at)),
                None => (DeliveryState::Delivered, Some(k.delivered_at)),
            });
        }
        if let Some(m) = self.messages.iter().find(|m| m.id == id) {
            return Some((DeliveryState::Queued, Some(m.ts)));
        }
        self.dropped.iter().any(|d| d == id).then_some((DeliveryState::Dropped, None))
    }
}

fn is_urgent(m: &Message) -> bool {
    m.importance == Importance::Urgent
}

/// Whether `at` lies within `age` before `now` (a time ahead of `now`
/// does too).
fn within(at: SystemTime, age: Duration, now: SystemTime) -> bool {
    now.duration_since(at).is_ok_and(|d| d < age) || at >= now
}

/// The `peer.send` result for `message`, queued as `recipients` say.
pub fn sent(message: &Message, recipients: Vec<QueuedFor>) -> Sent {
    let first = recipients.first();
    Sent {
        to: first.map(|q| q.to.clone()).unwrap_or_default(),
        queued: true,
        queue_depth: first.map_or(0, |q| q.queue_depth),
        dropped: recipients.iter().map(|q| q.dropped).sum(),
        ts: message.ts,
        id: message.id.clone(),
        thread: message.thread().to_owned(),
        recipients,
    }
}

/// What a peer asks to send, before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The sending peer; [`OPERATOR`] for the operator.
    pub from: String,
    pub to: Vec<String>,
    pub text: String,
    pub subject: Option<String>,
    pub importance: Importance,
    pub ack_required: bool,
    pub operator: bool,
    /// Set for a reply: the thread and the message it answers.
    pub thread: Option<String>,
    pub in_reply_to: Option<String>,
}

impl Draft {
    /// A plain one-recipient message.
    pub fn plain(from: &str, to: &str, text: &str) -> Draft {
        Draft {
            from: from.to_owned(),
            to: vec![to.to_owned()],
            text: text.to_owned(),
            subject: None,
            importance: Importance::Normal,
            ack_required: false,
            operator: false,
            thread: None,
            in_reply_to: None,
        }
    }

    /// `peer.reply`: to the sender of `original` (which `from` received),
    /// in its thread, with its subject and importance.
    pub fn reply(from: &str, original: &Message, text: &str, ack_required: bool) -> Result<Draft, Refusal> {
        if original.operator {
            return Err(refuse(
                ErrorKind::RequestInvalid,
                format!("message {} is the operator's, who reads no peer messages; answer in your turn", original.id),
            ));
        }
        if original.receipt_for.is_some() {
            return Err(refuse(
                ErrorKind::RequestInvalid,
                format!("message {} is a receipt; reply to the message it confirms instead", original.id),
            ));
        }
        Ok(Draft {
            from: from.to_owned(),
            to: vec![original.from.clone()],
            text: text.to_owned(),
            subject: original.subject.clone(),
            importance: original.importance,
            ack_required,
            operator: false,
            thread: Some(original.thread().to_owned()),
            in_reply_to: Some(original.id.clone()),
        })
    }
}

/// A new message id (or thread id), unique across processes.
fn new_id(prefix: &str, now: SystemTime) -> String {
    let n = MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{nanos:x}-{:x}-{n}", std::process::id())
}

/// The receipt `acknowledger` sends back for `original`, when its sender
/// has an inbox (the operator has none). Its id is fixed by the original,
/// so a receipt queued twice is one receipt.
pub fn receipt(acknowledger: &str, original: &Message, now: SystemTime) -> Option<Message> {
    if original.operator {
        return None;
    }
    let about = original.subject.clone().unwrap_or_else(|| {
        let first = original.text.lines().next().unwrap_or("").trim();
        if first.chars().count() > 60 {
            format!("{}…", first.chars().take(60).collect::<String>())
        } else {
            first.to_owned()
        }
    });
    let mut m = Message::plain(
        format!("rcpt-{}-{acknowledger}", original.id),
        acknowledger.to_owned(),
        Timestamp(rfc3339::millis(now)),
        format!("{acknowledger} acknowledged \"{about}\""),
    );
    m.to = vec![original.from.clone()];
    m.thread = Some(original.thread().to_owned());
    m.subject = original.subject.clone();
    m.receipt_for = Some(original.id.clone());
    Some(m)
}

fn refuse(kind: ErrorKind, message: String) -> Refusal {
    Refusal { kind, message, details: None }
}

/// Checks a peer name by the name rule.
pub fn check_name(name: &str) -> Result<(), Refusal> {
    if is_personality(name) {
        Ok(())
    } else {
        Err(refuse(
            ErrorKind::RequestInvalid,
            format!("the peer name {name:?} breaks the name rule ^[a-z][a-z0-9-]{{0,31}}$"),
        ))
    }
}

/// Refuses a peer name the fleet map does not list, naming the fleet's
/// peers, unless the store still knows it (`kept`: a peer that left the
/// fleet keeps its links and its inbox).
pub fn check_known(fleet: Option<&FleetMap>, name: &str, kept: bool) -> Result<(), Refusal> {
    check_name(name)?;
    match fleet {
        Some(fleet) if fleet.peer(name).is_some() => Ok(()),
        _ if kept => Ok(()),
        Some(fleet) => Err(refuse(
            ErrorKind::PeerMissing,
            format!(
                "`{name}` is not a peer of the fleet (its peers: {})",
                crate::fleet::names::listing(&fleet.names())
            ),
        )),
        None => Err(refuse(
            ErrorKind::FleetUnavailable,
            format!("there is no fleet map to find `{name}` in (memoryctl status shows why)"),
        )),
    }
}

/// The checks of `peer.send` that need no stored state, in the order of
/// spec 50; then the new message, stamped `now`.
pub fn compose(draft: &Draft, now: SystemTime) -> Result<Message, Refusal> {
    let from = draft.from.as_str();
    if !draft.operator {
        check_name(from)?;
    }
    let mut to: Vec<String> = Vec::new();
    for name in &draft.to {
        check_name(name)?;
        if !to.contains(name) {
            to.push(name.clone());
        }
    }
    if to.is_empty() || to.len() > MAX_RECIPIENTS {
        return Err(refuse(
            ErrorKind::PeerTooManyRecipients,
            format!("a message goes to 1 to {MAX_RECIPIENTS} peers, not {}; split the list", to.len()),
        ));
    }
    if !draft.operator && to.iter().any(|t| t == from) {
        return Err(refuse(ErrorKind::PeerSelf, format!("`{from}` cannot send a message to itself")));
    }
    let text = draft.text.as_str();
    if text.trim().is_empty() {
        return Err(refuse(ErrorKind::PeerMessageEmpty, "the message is empty".to_owned()));
    }
    let chars = text.chars().count();
    if chars > MAX_MESSAGE_CHARS {
        return Err(refuse(
            ErrorKind::PeerMessageTooLong,
            format!("the message has {chars} characters; the limit is {MAX_MESSAGE_CHARS}"),
        ));
    }
    let subject = draft.subject.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(subject) = subject
        && (subject.chars().count() > MAX_SUBJECT_CHARS || subject.contains(['\n', '\r']))
    {
        return Err(refuse(
            ErrorKind::PeerSubjectInvalid,
            format!("the subject must be one line of at most {MAX_SUBJECT_CHARS} characters; shorten it"),
        ));
    }
    let now = rfc3339::millis(now);
    let id = new_id("msg", now);
    let mut m = Message::plain(
        id,
        if draft.operator { OPERATOR.to_owned() } else { from.to_owned() },
        Timestamp(now),
        text.to_owned(),
    );
    m.thread = Some(draft.thread.clone().unwrap_or_else(|| new_id("thr", now)));
    m.to = to;
    m.in_reply_to = draft.in_reply_to.clone();
    m.subject = subject.map(str::to_owned);
    m.importance = draft.importance;
    m.ack_required = draft.ack_required;
    m.operator = draft.operator;
    Ok(m)
}

/// The check of `peer.send` against the stored links: `to` must be visible
/// to `from`.
pub fn check_visible(links: &Links, fleet: &FleetMap, from: &str, to: &str) -> Result<(), Refusal> {
    if links.linked(from, to) && fleet.peer(to).is_some() && fleet.peer(from).is_some() {
        Ok(())
    } else {
        Err(refuse(
            ErrorKind::PeerNotVisible,
            format!("`{to}` is not visible to `{from}`: link them first (memoryctl peer link {from} {to})"),
        ))
    }
}

/// What `p` sees: itself and every linked peer present in the fleet, each
/// with its presence summary.
pub fn visible(links: &Links, fleet: &FleetMap, roster: &[RosterRow], p: &str) -> Vec<Visible> {
    let summary = |name: &str| {
        let rank = |s: State| match s {
            State::Online => 4,
            State::Degraded => 3,
            State::Registering => 2,
            State::Offline => 1,
            State::Revoked => 0,
        };
        roster
            .iter()
            .filter(|r| r.personality == name)
            .max_by_key(|r| rank(r.state))
            .map_or((State::Offline, Health::Offline), |r| (r.state, r.health))
    };
    let mut out = Vec::new();
    if fleet.peer(p).is_some() {
        let (state, health) = summary(p);
        out.push(Visible { personality: p.to_owned(), reason: VisibleReason::Itself, state, health });
    }
    let mut linked: Vec<&str> = links.of(p).filter(|l| fleet.peer(l).is_some()).collect();
    linked.sort_unstable();
    for l in linked {
        let (state, health) = summary(l);
        out.push(Visible { personality: l.to_owned(), reason: VisibleReason::Peer, state, health });
    }
    out
}

/// `peer.visible`.
pub fn visible_in(
    store: &dyn StateStore,
    fleet: &FleetMap,
    floor: Option<crate::config::ClientVersion>,
    p: &str,
) -> Result<Vec<Visible>, StoreError> {
    check_known(Some(fleet), p, false)?;
    let links = store.links()?;
    let presence = store.presence()?;
    Ok(visible(&links, fleet, &presence.roster(floor), p))
}

/// One message as a hook prints it: a labelled first line (who, when,
/// id, thread, importance), the subject, what the sender asks, the text.
fn render_one(m: &Message) -> String {
    let at = rfc3339::format(m.ts.time());
    if m.receipt_for.is_some() {
        return format!("[Receipt] {} (at {at}, thread {})\n", m.text, m.thread());
    }
    let who =
        if m.operator { "[Message from the operator".to_owned() } else { format!("[Peer message from `{}`", m.from) };
    let urgent = if m.importance == Importance::Urgent { ", urgent" } else { "" };
    let mut block = format!("{who} at {at}, id {}, thread {}{urgent}]\n", m.id, m.thread());
    if let Some(subject) = &m.subject {
        block.push_str(&format!("Subject: {subject}\n"));
    }
    if m.ack_required {
        block.push_str("The sender asks you to confirm it: call peer_ack with this id once you have acted on it.\n");
    }
    block.push_str(&m.text);
    block.push('\n');
    block
}

/// The hook's rendering of messages (oldest first), within `budget`
/// characters; the ids printed, and a closing line when some had to wait.
pub fn render_for_agent(messages: &[Message], budget: usize) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut printed = Vec::new();
    for m in messages {
        let block = format!("{}\n", render_one(m));
        if !printed.is_empty() && text.chars().count() + block.chars().count() > budget {
            break;
        }
        text.push_str(&block);
        printed.push(m.id.clone());
    }
    let more = messages.len() - printed.len();
    if more > 0 {
        text.push_str(&format!("{more} more peer message(s) wait; they arrive with your next prompt.\n"));
    }
    (text.trim_end().to_owned(), printed)
}

/// The default and largest number of rows of an outbox or history answer.
pub const DEFAULT_ROWS: usize = 20;
pub const MAX_ROWS: usize = 200;

/// `peer.outbox`: the last `limit` messages `sender` sent, newest first,
/// each with every recipient's state as `mailbox_of(recipient)` shows it
/// (a recipient whose history no longer holds it: `expired`).
pub fn outbox<'a>(
    sender: &'a Inbox,
    limit: Option<usize>,
    mailbox_of: impl Fn(&str) -> Option<&'a Inbox>,
) -> Vec<OutboxRow> {
    let limit = limit.unwrap_or(DEFAULT_ROWS).clamp(1, MAX_ROWS);
    sender
        .sent
        .iter()
        .rev()
        .take(limit)
        .map(|m| OutboxRow {
            id: m.id.clone(),
            thread: m.thread().to_owned(),
            subject: m.subject.clone(),
            importance: m.importance,
            ack_required: m.ack_required,
            sent_at: m.ts,
            deliveries: m
                .to
                .iter()
                .map(|to| {
                    let (state, at) =
                        mailbox_of(to).and_then(|b| b.state_of(&m.id)).unwrap_or((DeliveryState::Expired, None));
                    Delivery { to: to.clone(), state, at }
                })
                .collect(),
        })
        .collect()
}

/// The recipients whose mailboxes [`outbox`] reads.
pub fn outbox_recipients(sender: &Inbox, limit: Option<usize>) -> BTreeSet<String> {
    let limit = limit.unwrap_or(DEFAULT_ROWS).clamp(1, MAX_ROWS);
    sender.sent.iter().rev().take(limit).flat_map(|m| m.to.iter().cloned()).collect()
}

/// `peer.history`: the messages `mailbox`'s peer sent or received, with
/// one peer, in one thread; with a query ranked by the vault's ranking
/// (best first), else oldest first (the last `limit`).
pub fn history(mailbox: &Inbox, p: &HistoryParams) -> Result<Vec<HistoryRow>, Refusal> {
    let limit = p.limit.unwrap_or(DEFAULT_ROWS).clamp(1, MAX_ROWS);
    let with = p.with.as_deref();
    let sent =
        mailbox.sent.iter().filter(|m| with.is_none_or(|w| m.to.iter().any(|t| t == w))).map(|m| (Direction::Sent, m));
    let received = mailbox
        .received
        .iter()
        .map(|k| &k.message)
        .filter(|m| with.is_none_or(|w| m.from == w))
        .map(|m| (Direction::Received, m));
    let mut rows: Vec<(Direction, &Message)> =
        sent.chain(received).filter(|(_, m)| p.thread.as_deref().is_none_or(|t| m.thread() == t)).collect();
    rows.sort_by(|a, b| a.1.ts.cmp(&b.1.ts).then_with(|| a.1.id.cmp(&b.1.id)));
    let row =
        |(direction, m): (Direction, &Message), score: Option<f64>| HistoryRow { direction, message: m.clone(), score };
    let Some(query) = p.query.as_deref() else {
        let skip = rows.len().saturating_sub(limit);
        return Ok(rows.into_iter().skip(skip).map(|r| row(r, None)).collect());
    };
    if query.trim().is_empty() {
        return Err(refuse(ErrorKind::RequestInvalid, "`query` is empty; say what to look for".to_owned()));
    }
    // The vault's ranking, over one note per message: the subject counts
    // as a title, the path is the row's position.
    let notes = rows
        .iter()
        .enumerate()
        .map(|(i, (_, m))| crate::vault::Note {
            path: i.to_string(),
            title: m.subject.clone().unwrap_or_default(),
            author: Some(m.from.clone()),
            created: None,
            tags: Vec::new(),
            owner: None,
            body: m.text.clone(),
            modified: m.ts.time(),
        })
        .collect();
    let index = crate::vault::Index::build(crate::vault::Scan { notes, skipped: Vec::new() });
    Ok(index
        .search(query, |_| true, limit)
        .into_iter()
        .filter_map(|hit| {
            let i: usize = hit.note.path.parse().ok()?;
            let score = (f64::from(hit.score) * 1000.0).round() / 1000.0;
            Some(row(rows[i], Some(score)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_render_oldest_first_within_the_budget() {
        let message =
            |id: &str, text: String| Message::plain(id.into(), "ada".into(), Timestamp(SystemTime::UNIX_EPOCH), text);
        let (text, ids) = render_for_agent(&[message("a", "hi".into()), message("b", "ho".into())], 8000);
        assert!(
            text.starts_with("[Peer message from `ada` at 1970-01-01T00:00:00.000Z, id a, thread a]\nhi"),
            "{text}"
        );
        assert_eq!(ids, ["a", "b"]);
        let big = vec![message("a", "y".repeat(7000)), message("b", "y".repeat(7000))];
        let (text, ids) = render_for_agent(&big, 8000);
        assert_eq!(ids, ["a"]);
        assert!(
            text.ends_with("1 more peer message(s) wait; they arrive with your next prompt.")
                && text.chars().count() < 8000
        );
    }

    #[test]
    fn the_block_shows_subject_thread_importance_and_the_ask() {
        let mut m = Message::plain("m1".into(), "ada".into(), Timestamp(SystemTime::UNIX_EPOCH), "ship it".into());
        m.thread = Some("t1".into());
        m.subject = Some("Release".into());
        m.importance = Importance::Urgent;
        m.ack_required = true;
        let (text, _) = render_for_agent(std::slice::from_ref(&m), 8000);
        assert!(
            text.starts_with(
                "[Peer message from `ada` at 1970-01-01T00:00:00.000Z, id m1, thread t1, urgent]\nSubject: Release\n"
            ),
            "{text}"
        );
        assert!(text.contains("call peer_ack") && text.ends_with("ship it"), "{text}");
        let r = receipt("bob", &m, SystemTime::UNIX_EPOCH).unwrap();
        let (text, _) = render_for_agent(&[r], 8000);
        assert!(text.starts_with("[Receipt] bob acknowledged \"Release\""), "{text}");
    }
}

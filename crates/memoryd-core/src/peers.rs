//! Peer links and peer messages (spec 50), as pure functions over the
//! stored documents; the store ([`crate::store`]) runs each inside one
//! change.
//!
//! A link is one unordered pair: both peers see each other by construction,
//! and a link is created or removed in one step, so it is whole or absent,
//! never one-sided. Each peer has its own inbox, written durably before a
//! send is acknowledged.

use crate::fleet::FleetMap;
use crate::fleet::names::is_personality;
use crate::presence::{Event, EventKind, Refusal, RosterRow, State};
use crate::store::{StateStore, StoreError};
use memoryd_proto::ErrorKind;
use memoryd_proto::Timestamp;
use memoryd_proto::event::rfc3339;
pub use memoryd_proto::peers::{Message, Sent, Visible, VisibleReason};
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

/// One peer's inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    #[serde(default)]
    pub messages: Vec<Message>,
}

static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Inbox {
    /// Queues `message` for `to`, dropping the oldest past `capacity`: the
    /// `peer.send` result and a `peer.message_dropped` event per drop.
    pub fn queue(&mut self, to: &str, message: Message, capacity: usize) -> (Sent, Vec<Event>) {
        let (id, ts) = (message.id.clone(), message.ts);
        self.messages.push(message);
        let overflow = self.messages.len().saturating_sub(capacity.max(1));
        let dropped: Vec<Message> = self.messages.drain(..overflow).collect();
        let events = dropped
            .iter()
            .map(|m| {
                tracing::warn!(
                    personality = to,
                    message = m.id,
                    from = m.from,
                    "inbox full: dropped the oldest message"
                );
                Event {
                    ts: ts.time(),
                    kind: EventKind::MessageDropped {
                        personality: to.to_owned(),
                        message_id: m.id.clone(),
                        from: m.from.clone(),
                    },
                }
            })
            .collect();
        // Queued, not delivered: it reaches `to` at their next turn.
        let result =
            Sent { to: to.to_owned(), queued: true, queue_depth: self.messages.len(), dropped: dropped.len(), ts, id };
        (result, events)
    }

    /// The messages no reader holds at `now`, oldest first.
    pub fn free(&self, now: SystemTime) -> Vec<Message> {
        self.messages.iter().filter(|m| is_free(m, now)).cloned().collect()
    }

    /// The free messages, each now hidden from other readers for [`LEASE`].
    pub fn lease(&mut self, now: SystemTime) -> Vec<Message> {
        let until = rfc3339::millis(now + LEASE);
        let mut taken = Vec::new();
        for m in self.messages.iter_mut().filter(|m| is_free(m, now)) {
            m.leased_until = Some(Timestamp(until));
            taken.push(Message { leased_until: None, ..m.clone() });
        }
        taken
    }

    /// Removes the named messages; how many were there.
    pub fn ack(&mut self, ids: &[String]) -> usize {
        let before = self.messages.len();
        self.messages.retain(|m| !ids.contains(&m.id));
        before - self.messages.len()
    }
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
pub fn compose(from: &str, to: &str, text: &str, now: SystemTime) -> Result<Message, Refusal> {
    check_name(from)?;
    check_name(to)?;
    if from == to {
        return Err(refuse(ErrorKind::PeerSelf, format!("`{from}` cannot send a message to itself")));
    }
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
    let now = rfc3339::millis(now);
    let n = MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let id = format!("msg-{nanos:x}-{:x}-{n}", std::process::id());
    Ok(Message { id, from: from.to_owned(), ts: Timestamp(now), text: text.to_owned(), leased_until: None })
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

/// The hook's rendering of messages (oldest first), within `budget`
/// characters; the ids printed, and a closing line when some had to wait.
pub fn render_for_agent(messages: &[Message], budget: usize) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut printed = Vec::new();
    for m in messages {
        let block = format!("[Peer message from `{}` at {}]\n{}\n\n", m.from, rfc3339::format(m.ts.time()), m.text);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_render_oldest_first_within_the_budget() {
        let message = |id: &str, text: String| Message {
            id: id.into(),
            from: "ada".into(),
            ts: Timestamp(SystemTime::UNIX_EPOCH),
            text,
            leased_until: None,
        };
        let (text, ids) = render_for_agent(&[message("a", "hi".into()), message("b", "ho".into())], 8000);
        assert!(text.starts_with("[Peer message from `ada` at 1970-01-01T00:00:00.000Z]\nhi"), "{text}");
        assert_eq!(ids, ["a", "b"]);
        let big = vec![message("a", "y".repeat(7000)), message("b", "y".repeat(7000))];
        let (text, ids) = render_for_agent(&big, 8000);
        assert_eq!(ids, ["a"]);
        assert!(
            text.ends_with("1 more peer message(s) wait; they arrive with your next prompt.")
                && text.chars().count() < 8000
        );
    }
}

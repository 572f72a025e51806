//! Peer links and peer messages (spec 50).
//!
//! A link is one unordered pair in `S/store/links.json`: both peers see
//! each other by construction, and a link is created or removed by one
//! rename, so a crash at any instant leaves it whole or absent, never
//! one-sided. Each peer's inbox is its own file `S/store/inbox/<peer>.json`,
//! written (and fsynced) before a send is acknowledged.

use crate::fleet::FleetMap;
use crate::fleet::names::is_personality;
use crate::host::paths::Paths;
use crate::presence::{Event, Refusal, RosterRow, State, timestamp};
use crate::store::{Store, StoreError, read_doc};
use memoryd_proto::ErrorKind;
use memoryd_proto::Timestamp;
pub use memoryd_proto::peers::{Message, Sent, Visible, VisibleReason};
use memoryd_proto::presence::Health;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The longest message, in characters: one always fits in what a hook may
/// add to an agent's context.
pub const MAX_MESSAGE_CHARS: usize = 7000;
/// How long a leased message is hidden from other readers.
pub const LEASE: Duration = Duration::from_secs(30);

/// The links document, relative to `S/store/`.
pub const LINKS: &str = "links.json";

fn inbox_file(personality: &str) -> String {
    format!("inbox/{personality}.json")
}

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
}

/// One peer's inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    #[serde(default)]
    pub messages: Vec<Message>,
}

fn refuse(kind: ErrorKind, message: String) -> StoreError {
    StoreError::Refused(Refusal { kind, message, details: None })
}

fn check_name(name: &str) -> Result<(), StoreError> {
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
pub fn check_known(fleet: Option<&FleetMap>, name: &str, kept: bool) -> Result<(), StoreError> {
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

/// `peer.link`: reciprocal, idempotent. Whether a new link was made.
pub fn link(store: &Store, fleet: &FleetMap, a: &str, b: &str) -> Result<bool, StoreError> {
    check_known(Some(fleet), a, false)?;
    check_known(Some(fleet), b, false)?;
    if a == b {
        return Err(refuse(ErrorKind::PeerSelf, format!("`{a}` cannot be linked with itself")));
    }
    store.change("peer-link", LINKS, |links: &mut Links| Ok((links.pairs.insert(Links::pair(a, b)), Vec::new())))
}

/// `peer.unlink`: both sides in one step. Whether there was a link. Each
/// name must be a fleet peer or have a link (one that left the fleet keeps
/// its links, and may be unlinked).
pub fn unlink(store: &Store, fleet: Option<&FleetMap>, a: &str, b: &str) -> Result<bool, StoreError> {
    let links: Links = store.read(LINKS)?;
    check_known(fleet, a, links.of(a).next().is_some())?;
    check_known(fleet, b, links.of(b).next().is_some())?;
    store.change("peer-unlink", LINKS, |links: &mut Links| Ok((links.pairs.remove(&Links::pair(a, b)), Vec::new())))
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
    store: &Store,
    fleet: &FleetMap,
    floor: Option<crate::config::ClientVersion>,
    p: &str,
) -> Result<Vec<Visible>, StoreError> {
    check_known(Some(fleet), p, false)?;
    let links: Links = store.read(LINKS)?;
    let presence = store.presence()?;
    Ok(visible(&links, fleet, &presence.roster(floor), p))
}

static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `peer.send`: checked in the order of spec 50, then queued durably in
/// the recipient's inbox (dropping the oldest past `capacity`). The
/// caller refuses a read-only sending node before calling.
pub fn send(
    store: &Store,
    fleet: &FleetMap,
    from: &str,
    to: &str,
    text: &str,
    capacity: usize,
    now: SystemTime,
) -> Result<Sent, StoreError> {
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
    let held = store.hold("peer-send")?;
    let links: Links = store.read(LINKS)?;
    if !(links.linked(from, to) && fleet.peer(to).is_some() && fleet.peer(from).is_some()) {
        return Err(refuse(
            ErrorKind::PeerNotVisible,
            format!("`{to}` is not visible to `{from}`: link them first (memoryctl peer link {from} {to})"),
        ));
    }
    let ts = timestamp(now);
    let n = MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let id = format!("msg-{nanos:x}-{:x}-{n}", std::process::id());
    let message = Message {
        id: id.clone(),
        from: from.to_owned(),
        ts: Timestamp(now),
        text: text.to_owned(),
        leased_until: None,
    };
    store.update(&held, &inbox_file(to), |inbox: &mut Inbox| {
        inbox.messages.push(message);
        let overflow = inbox.messages.len().saturating_sub(capacity.max(1));
        let dropped: Vec<Message> = inbox.messages.drain(..overflow).collect();
        let events: Vec<Event> = dropped
            .iter()
            .map(|m| {
                tracing::warn!(
                    personality = to,
                    message = m.id,
                    from = m.from,
                    "inbox full: dropped the oldest message"
                );
                json!({"ts": ts, "event": "peer.message_dropped", "personality": to, "messageId": m.id, "from": m.from})
            })
            .collect();
        // Queued, not delivered: it reaches `to` at their next turn.
        let result = Sent {
            to: to.to_owned(),
            queued: true,
            queue_depth: inbox.messages.len(),
            dropped: dropped.len(),
            ts: Timestamp(now),
            id,
        };
        Ok((result, events))
    })
}

/// `peer.inbox`: the waiting messages, oldest first, none removed; with
/// `lease`, the returned ones are hidden from other readers for 30 s.
pub fn inbox(store: &Store, p: &str, lease: bool, now: SystemTime) -> Result<Vec<Message>, StoreError> {
    check_name(p)?;
    let free = |m: &Message| m.leased_until.is_none_or(|until| until.time() <= now);
    if !lease {
        let doc: Inbox = store.read(&inbox_file(p))?;
        return Ok(doc.messages.into_iter().filter(free).collect());
    }
    store.change("peer-inbox", &inbox_file(p), |doc: &mut Inbox| {
        let until = Timestamp(now + LEASE);
        let mut taken = Vec::new();
        for m in doc.messages.iter_mut().filter(|m| free(m)) {
            m.leased_until = Some(until);
            taken.push(Message { leased_until: None, ..m.clone() });
        }
        Ok((taken, Vec::new()))
    })
}

/// `peer.ack`: removes the named messages; how many were there.
pub fn ack(store: &Store, p: &str, ids: &[String]) -> Result<usize, StoreError> {
    check_name(p)?;
    store.change("peer-ack", &inbox_file(p), |doc: &mut Inbox| {
        let before = doc.messages.len();
        doc.messages.retain(|m| !ids.contains(&m.id));
        Ok((before - doc.messages.len(), Vec::new()))
    })
}

/// How many messages wait in each inbox of `S/store/inbox/` (leased or
/// not; empty inboxes left out), read without opening the store.
pub fn waiting_all(paths: &Paths) -> Result<BTreeMap<String, usize>, StoreError> {
    let dir = paths.store.join("inbox");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(StoreError::Corrupt { path: dir, error: e.to_string() }),
    };
    let mut waiting = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| StoreError::Corrupt { path: dir.clone(), error: e.to_string() })?.path();
        let Some(peer) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let n = read_doc::<Inbox>(&path)?.messages.len();
        if n > 0 {
            waiting.insert(peer.to_owned(), n);
        }
    }
    Ok(waiting)
}

/// How many messages wait for `p` (leased or not).
pub fn waiting(store: &Store, p: &str) -> usize {
    store.read::<Inbox>(&inbox_file(p)).map_or(0, |i| i.messages.len())
}

/// The hook's rendering of messages (oldest first), within `budget`
/// characters; the ids printed, and a closing line when some had to wait.
pub fn render_for_agent(messages: &[Message], budget: usize) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut printed = Vec::new();
    for m in messages {
        let block = format!("[Peer message from `{}` at {}]\n{}\n\n", m.from, m.ts, m.text);
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
    use crate::fleet::FleetPeer;
    use crate::host::files::FileGuard;
    use crate::host::paths::Paths;

    fn fleet(names: &[&str]) -> FleetMap {
        FleetMap {
            updated_at: "x".into(),
            peers: names
                .iter()
                .map(|n| FleetPeer {
                    personality: (*n).into(),
                    cwd: format!("/p/{n}").into(),
                    default_runtime: Some("claude".into()),
                    runtimes: vec!["claude".into()],
                    description: String::new(),
                })
                .collect(),
        }
    }

    fn kind(e: StoreError) -> ErrorKind {
        match e {
            StoreError::Refused(r) => r.kind,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn links_are_reciprocal_idempotent_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Paths::new(dir.path().into()), &FileGuard::live()).unwrap();
        let map = fleet(&["ada", "bob"]);
        assert!(link(&store, &map, "ada", "bob").unwrap());
        assert!(!link(&store, &map, "bob", "ada").unwrap(), "already linked");
        assert_eq!(kind(link(&store, &map, "ada", "ada").unwrap_err()), ErrorKind::PeerSelf);
        assert_eq!(kind(link(&store, &map, "ada", "zed").unwrap_err()), ErrorKind::PeerMissing);
        assert_eq!(kind(link(&store, &map, "Ada", "bob").unwrap_err()), ErrorKind::RequestInvalid);
        let v = visible_in(&store, &map, None, "bob").unwrap();
        assert_eq!((v[0].reason.as_str(), v[1].personality.as_str(), v[1].reason.as_str()), ("self", "ada", "peer"));
        // Absent from the fleet: kept, not visible.
        assert_eq!(visible_in(&store, &fleet(&["bob"]), None, "bob").unwrap().len(), 1);
        assert_eq!(visible_in(&store, &map, None, "bob").unwrap().len(), 2);
        let missing = visible_in(&store, &map, None, "zed").unwrap_err();
        assert!(missing.to_string().contains("`zed` is not a peer of the fleet (its peers: ada, bob)"), "{missing}");
        assert_eq!(kind(missing), ErrorKind::PeerMissing);
        // ada left the fleet: her link is kept, and may be removed.
        assert!(unlink(&store, Some(&fleet(&["bob"])), "bob", "ada").unwrap());
        assert!(!unlink(&store, Some(&map), "bob", "ada").unwrap());
        assert_eq!(kind(unlink(&store, Some(&fleet(&["bob"])), "bob", "ada").unwrap_err()), ErrorKind::PeerMissing);
    }

    #[test]
    fn sends_are_checked_queued_leased_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Paths::new(dir.path().into()), &FileGuard::live()).unwrap();
        let map = fleet(&["ada", "bob", "cyd"]);
        link(&store, &map, "ada", "bob").unwrap();
        let now = SystemTime::now();
        let send = |to: &str, text: &str| send(&store, &map, "ada", to, text, 3, now);
        assert_eq!(kind(send("ada", "hi").unwrap_err()), ErrorKind::PeerSelf);
        assert_eq!(kind(send("bob", "  ").unwrap_err()), ErrorKind::PeerMessageEmpty);
        assert_eq!(kind(send("bob", &"x".repeat(7001)).unwrap_err()), ErrorKind::PeerMessageTooLong);
        assert_eq!(kind(send("cyd", "hi").unwrap_err()), ErrorKind::PeerNotVisible);
        assert!(send("bob", &"x".repeat(7000)).is_ok());
        for n in 0..3 {
            let r = send("bob", &format!("m{n}")).unwrap();
            assert_eq!(r.dropped, usize::from(n == 2));
        }
        let msgs = inbox(&store, "bob", true, now).unwrap();
        assert_eq!(msgs.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["m0", "m1", "m2"]);
        assert!(inbox(&store, "bob", true, now).unwrap().is_empty(), "leased");
        assert_eq!(inbox(&store, "bob", true, now + LEASE).unwrap().len(), 3, "the lease expired");
        assert_eq!(ack(&store, "bob", &[msgs[0].id.clone()]).unwrap(), 1);
        assert_eq!(waiting(&store, "bob"), 2);
        let all = waiting_all(&Paths::new(dir.path().into())).unwrap();
        assert_eq!(all.into_iter().collect::<Vec<_>>(), [("bob".to_owned(), 2)]);
        let (text, ids) = render_for_agent(&msgs[1..], 8000);
        assert!(text.starts_with("[Peer message from `ada` at "), "{text}");
        assert_eq!(ids.len(), 2);
        let big = vec![
            Message {
                id: "a".into(),
                from: "ada".into(),
                ts: Timestamp(SystemTime::UNIX_EPOCH),
                text: "y".repeat(7000),
                leased_until: None
            };
            2
        ];
        let (text, ids) = render_for_agent(&big, 8000);
        assert_eq!(ids, ["a"]);
        assert!(
            text.ends_with("1 more peer message(s) wait; they arrive with your next prompt.")
                && text.chars().count() < 8000
        );
        let log = std::fs::read_to_string(dir.path().join("state/memoryd/events.jsonl")).unwrap();
        assert!(log.contains("\"peer.message_dropped\""), "{log}");
    }
}

//! The domain test suite of the store traits, written once and run against
//! every backend: `run_all(|| a fresh, empty store)`. Each case drives the
//! state changes of spec 40 and 50 through the traits only, with its own
//! clock and process probe, and checks the values, the stored state and the
//! events in the log. Built for tests and with the `store-suite` feature.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step is a failed test

use super::{Cursor, StateStore, StoreError};
use crate::config::ClientVersion;
use crate::fleet::{FleetMap, FleetPeer};
use crate::peers::{
    DeliveryState, Direction, Draft, HistoryParams, Importance, LEASE, Limits, MAX_MESSAGE_CHARS, MAX_RECIPIENTS,
    MAX_SUBJECT_CHARS, OPERATOR,
};
use crate::presence::{Actor, AttachParams, Event, EventKind, Health, OfflineReason, Revoker, Rules, State};
use memoryd_proto::ErrorKind;
use memoryd_proto::peers::ReplyParams;
use serde_json::{Map, json};
use std::time::{Duration, SystemTime};

/// One case of the suite.
pub type Case = fn(&dyn StateStore);

/// Every case, each on a store of its own.
pub fn run_all<S: StateStore>(make: impl Fn() -> S) {
    let cases: [(&str, Case); 18] = [
        ("attach_registers_then_online", attach_registers_then_online),
        ("heartbeats_and_the_sweep", heartbeats_and_the_sweep),
        ("soft_heartbeats", soft_heartbeats),
        ("a_live_pid_counts_as_a_heartbeat", a_live_pid_counts_as_a_heartbeat),
        ("takeover_and_supersession", takeover_and_supersession),
        ("revocation", revocation),
        ("the_version_floor", the_version_floor),
        ("capability_updates", capability_updates),
        ("links", links),
        ("send_lease_ack", send_lease_ack),
        ("capacity_drops", capacity_drops),
        ("states_receipts_and_events", states_receipts_and_events),
        ("replies_and_threads", replies_and_threads),
        ("multi_recipient_capacity_drops", multi_recipient_capacity_drops),
        ("rate_limits", rate_limits),
        ("history_bounds_and_search", history_bounds_and_search),
        ("operator_and_urgent", operator_and_urgent),
        ("recent_then_follow", recent_then_follow),
    ];
    for (name, case) in cases {
        tracing::debug!(case = name, "store suite");
        case(&make());
    }
}

const T0: u64 = 1_800_000_000;
const NODE: &str = "claude-boris";

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn rules(floor: Option<ClientVersion>) -> Rules {
    Rules { degraded_after: Duration::from_secs(30), offline_after: Duration::from_secs(60), floor }
}

fn req(session: &str, version: &str, pid: Option<i32>) -> AttachParams {
    let mut capabilities = Map::new();
    capabilities.insert("hooks".into(), json!(["session-start"]));
    AttachParams {
        session_id: session.into(),
        node_id: NODE.into(),
        client_version: version.into(),
        capabilities,
        health_state: Health::Online,
        pid,
    }
}

/// Process 100 runs (start "a"), 200 runs (start "b"); others are gone.
fn probe(pid: i32) -> Option<String> {
    match pid {
        100 => Some("a".into()),
        200 => Some("b".into()),
        _ => None,
    }
}

/// No process runs.
fn none_run(_: i32) -> Option<String> {
    None
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match &e.kind {
            EventKind::Registered { .. } => "registered",
            EventKind::CapabilityDeclared { .. } => "capability_declared",
            EventKind::CapabilityUpdated { .. } => "capability_updated",
            EventKind::Online { .. } => "online",
            EventKind::Degraded { .. } => "degraded",
            EventKind::Offline { .. } => "offline",
            EventKind::Revoked { .. } => "revoked",
            EventKind::Unrevoked { .. } => "unrevoked",
            EventKind::MessageDropped { .. } => "message_dropped",
            EventKind::MessageQueued { .. } => "message_queued",
            EventKind::MessageDelivered { .. } => "message_delivered",
            EventKind::MessageAcknowledged { .. } => "message_acknowledged",
            EventKind::ClaimMoved { .. } => "claim_moved",
        })
        .collect()
}

fn reason(e: &Event) -> OfflineReason {
    match &e.kind {
        EventKind::Offline { reason, .. } => *reason,
        other => panic!("not an offline event: {other:?}"),
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T, StoreError>) -> ErrorKind {
    match r {
        Err(StoreError::Refused(r)) => r.kind,
        other => panic!("not a refusal: {other:?}"),
    }
}

/// Every event in the log, oldest first.
fn log(store: &dyn StateStore) -> Vec<Event> {
    store.recent(None, usize::MAX).unwrap().0
}

fn state(store: &dyn StateStore) -> Option<State> {
    store.presence().unwrap().active(NODE).map(|a| a.state)
}

fn fleet(names: &[&str]) -> FleetMap {
    FleetMap {
        updated_at: "x".into(),
        peers: names
            .iter()
            .map(|n| FleetPeer {
                personality: (*n).into(),
                cwd: format!("/p/{n}").into(),
                default_runtime: Some("claude".into()),
                runtimes: vec!["claude".into(), "codex".into()],
                description: String::new(),
            })
            .collect(),
    }
}

pub fn attach_registers_then_online(store: &dyn StateStore) {
    let (a, events) = store.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
    assert_eq!(a.state, State::Online);
    assert!(!a.read_only);
    assert_eq!(names(&events), ["registered", "capability_declared", "online"]);
    assert!(matches!(&events[0].kind, EventKind::Registered { client_version, previous_state: None, .. }
        if client_version == "1.0"));
    assert!(matches!(
        &events[2].kind,
        EventKind::Online { previous_state: State::Registering, new_state: State::Online, .. }
    ));
    assert_eq!(log(store), events, "the events are in the log, in order");
    // Idempotent re-attach of the active session.
    let (again, events) = store.attach(&req("s1", "1.0", None), true, &rules(None), at(5), &probe).unwrap();
    assert_eq!(again.attachment_id, a.attachment_id);
    assert!(events.is_empty());
    assert_eq!(store.presence().unwrap().attachments.len(), 1);
    assert_eq!(log(store).len(), 3);
}

pub fn heartbeats_and_the_sweep(store: &dyn StateStore) {
    store.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &none_run).unwrap();
    assert!(store.sweep(&rules(None), at(20), &none_run).unwrap().is_empty());
    assert_eq!(names(&store.sweep(&rules(None), at(31), &none_run).unwrap()), ["degraded"]);
    assert_eq!(state(store), Some(State::Degraded));
    // A heartbeat in the degraded band: back online, not via offline.
    let e = store.heartbeat(NODE, Some("s1"), Health::Online, at(40)).unwrap();
    assert_eq!(names(&e), ["online"]);
    assert!(matches!(e[0].kind, EventKind::Online { previous_state: State::Degraded, .. }));
    // A node reporting itself degraded: written at once.
    assert_eq!(names(&store.heartbeat(NODE, None, Health::Degraded, at(41)).unwrap()), ["degraded"]);
    assert_eq!(names(&store.heartbeat(NODE, None, Health::Online, at(42)).unwrap()), ["online"]);
    // Silent past offline_after.
    store.sweep(&rules(None), at(80), &none_run).unwrap();
    let e = store.sweep(&rules(None), at(103), &none_run).unwrap();
    assert_eq!(names(&e), ["offline"]);
    assert_eq!(reason(&e[0]), OfflineReason::HeartbeatLost);
    assert_eq!(state(store), None);
    assert!(store.sweep(&rules(None), at(500), &none_run).unwrap().is_empty(), "offline rows are left alone");
    assert_eq!(kind(store.heartbeat(NODE, None, Health::Online, at(501))), ErrorKind::RuntimenodeNotAttached);
    assert_eq!(kind(store.heartbeat(NODE, None, Health::Offline, at(501))), ErrorKind::RequestInvalid);
    // A reconnect of the offline session.
    let (a, e) = store.attach(&req("s1", "1.0", None), true, &rules(None), at(502), &none_run).unwrap();
    assert_eq!(a.state, State::Online);
    assert!(matches!(e[0].kind, EventKind::Registered { previous_state: Some(State::Offline), .. }));
    assert_eq!(store.presence().unwrap().attachments.len(), 1);
    // Detach: the right session only.
    assert_eq!(kind(store.detach(NODE, Some("s0"), at(503))), ErrorKind::RuntimenodeStaleSession);
    let e = store.detach(NODE, Some("s1"), at(504)).unwrap();
    assert_eq!(reason(&e[0]), OfflineReason::ExplicitShutdown);
    assert_eq!(state(store), None);
}

pub fn soft_heartbeats(store: &dyn StateStore) {
    store.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &none_run).unwrap();
    let before = log(store).len();
    // Beats that change nothing but the time: kept, not written.
    assert!(store.heartbeat(NODE, Some("s1"), Health::Online, at(40)).unwrap().is_empty());
    assert!(store.heartbeat(NODE, None, Health::Online, at(10)).unwrap().is_empty(), "an older beat");
    assert_eq!(kind(store.heartbeat(NODE, Some("old"), Health::Online, at(41))), ErrorKind::RuntimenodeStaleSession);
    let stored = |store: &dyn StateStore| store.presence().unwrap().active(NODE).unwrap().last_heartbeat_at;
    assert_eq!(stored(store), at(0), "kept in memory");
    let beat = |store: &dyn StateStore| store.roster(None).unwrap()[0].last_heartbeat_at;
    assert_eq!(beat(store).time(), at(10), "the roster shows the last kept beat");
    assert_eq!(log(store).len(), before);
    // The sweep writes them: the kept beat counts, and never moves back.
    store.heartbeat(NODE, None, Health::Online, at(40)).unwrap();
    assert!(store.sweep(&rules(None), at(60), &none_run).unwrap().is_empty(), "the kept beat counts");
    assert_eq!(stored(store), at(40));
    store.heartbeat(NODE, None, Health::Online, at(20)).unwrap();
    store.sweep(&rules(None), at(61), &none_run).unwrap();
    assert_eq!(stored(store), at(40), "never back");
}

pub fn a_live_pid_counts_as_a_heartbeat(store: &dyn StateStore) {
    store.attach(&req("s1", "1.0", Some(100)), true, &rules(None), at(0), &probe).unwrap();
    assert!(store.sweep(&rules(None), at(500), &probe).unwrap().is_empty());
    assert_eq!(state(store), Some(State::Online));
    // The same pid with another start time is another process.
    let restarted = |pid: i32| (pid == 100).then(|| "later".to_owned());
    assert_eq!(names(&store.sweep(&rules(None), at(540), &restarted).unwrap()), ["degraded"]);
}

pub fn takeover_and_supersession(store: &dyn StateStore) {
    store.attach(&req("s1", "1.0", Some(100)), true, &rules(None), at(0), &probe).unwrap();
    // Another live process: conflict, naming the active session.
    let conflict = store.attach(&req("s2", "1.0", Some(200)), true, &rules(None), at(1), &probe).unwrap_err();
    assert!(conflict.to_string().contains("s1"), "{conflict}");
    assert_eq!(kind::<()>(Err(conflict)), ErrorKind::RuntimenodeAttachConflict);
    // The same live process starts a new session: supersedes.
    let (_, e) = store.attach(&req("s3", "1.0", Some(100)), true, &rules(None), at(2), &probe).unwrap();
    assert_eq!(reason(&e[0]), OfflineReason::Superseded);
    assert_eq!(store.presence().unwrap().active(NODE).unwrap().session_id, "s3");
    // Its process dies: a new session takes over.
    let only_200 = |pid: i32| (pid == 200).then(|| "b".to_owned());
    let (_, e) = store.attach(&req("s4", "1.0", Some(200)), true, &rules(None), at(3), &only_200).unwrap();
    assert_eq!(reason(&e[0]), OfflineReason::HeartbeatLost);
    let presence = store.presence().unwrap();
    assert_eq!(presence.attachments.iter().filter(|a| a.state.is_active()).count(), 1);
    // The old session's late detach is refused.
    assert_eq!(kind(store.detach(NODE, Some("s3"), at(4))), ErrorKind::RuntimenodeStaleSession);
}

pub fn revocation(store: &dyn StateStore) {
    let map = fleet(&["boris"]);
    let operator = Revoker::Operator { fleet: Some(&map), force: false };
    store.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
    let e = store.revoke(NODE, operator, Some("removed"), at(1)).unwrap();
    assert!(matches!(&e[0].kind, EventKind::Revoked {
        revoked_by: Actor::Operator, new_state: State::Revoked, session_id: Some(_), reason: Some(r), .. } if r == "removed"));
    assert!(store.revoke(NODE, Revoker::Core, None, at(1)).unwrap().is_empty(), "already revoked");
    assert_eq!(store.roster(None).unwrap()[0].state, State::Revoked);
    let refused = store.attach(&req("s2", "1.0", None), true, &rules(None), at(2), &probe);
    assert_eq!(kind(refused), ErrorKind::RuntimenodeAttachRevoked);
    assert!(store.sweep(&rules(None), at(900), &probe).unwrap().is_empty(), "nothing automatic leads out");
    let e = store.unrevoke(NODE, Revoker::Birth, at(3)).unwrap();
    assert!(matches!(e[0].kind, EventKind::Unrevoked { by: Actor::Birth, new_state: State::Offline, .. }));
    store.attach(&req("s2", "1.0", None), true, &rules(None), at(4), &probe).unwrap();
    // Unknown and malformed nodes.
    let unknown = store.attach(&req("s9", "1.0", None), false, &rules(None), at(5), &probe);
    assert_eq!(kind(unknown), ErrorKind::RuntimenodeUnknownNode);
    let mut bad = req("s9", "1.0", None);
    bad.node_id = "claude_boris".into();
    let refused = store.attach(&bad, true, &rules(None), at(6), &probe).unwrap_err().to_string();
    assert!(refused.starts_with("the node \"claude_boris\" is not <runtime>-<personality>"), "{refused}");
    // An operator names a fleet node, or forces it; never a malformed one.
    let nobody = store.revoke("claude-nobody", operator, None, at(7)).unwrap_err().to_string();
    assert!(nobody.contains("its nodes: claude-boris, codex-boris") && nobody.contains("--force"), "{nobody}");
    let forced = Revoker::Operator { fleet: Some(&map), force: true };
    assert_eq!(names(&store.revoke("claude-nobody", forced, None, at(8)).unwrap()), ["revoked"]);
    assert_eq!(kind(store.revoke("claude_x", forced, None, at(8))), ErrorKind::RequestInvalid);
    let back = store.unrevoke("claude-nobody", operator, at(9)).unwrap();
    assert_eq!(names(&back), ["unrevoked"], "a revoked node can be let back in");
    let neither = store.unrevoke("claude-nobody", operator, at(10)).unwrap_err().to_string();
    assert!(neither.contains("nor revoked (revoked: none)"), "{neither}");
    let no_map = Revoker::Operator { fleet: None, force: false };
    assert_eq!(kind(store.revoke(NODE, no_map, None, at(11))), ErrorKind::FleetUnavailable);
}

pub fn the_version_floor(store: &dyn StateStore) {
    let floor = Some(ClientVersion { major: 2, minor: 0 });
    let (a, _) = store.attach(&req("s1", "1.0", None), true, &rules(floor), at(0), &probe).unwrap();
    assert!(a.read_only, "admitted, read-only");
    assert!(store.roster(floor).unwrap()[0].read_only);
    assert!(!store.roster(Some(ClientVersion { major: 1, minor: 0 })).unwrap()[0].read_only, "a lower floor frees it");
    let refused = store.capability_update(NODE, &Map::new(), None, floor, at(1));
    assert_eq!(kind(refused), ErrorKind::VersionFloorExceeded);
    let bad_version = store.attach(&req("s9", "1.01", None), true, &rules(None), at(2), &probe).unwrap_err();
    assert!(bad_version.to_string().contains("the client version \"1.01\""), "{bad_version}");
}

pub fn capability_updates(store: &dyn StateStore) {
    store.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
    let mut caps = Map::new();
    caps.insert("hooks".into(), json!(["all"]));
    let (result, e) = store.capability_update(NODE, &caps, Some(Health::Degraded), None, at(1)).unwrap();
    assert_eq!(names(&e), ["capability_updated", "degraded"]);
    assert_eq!(result.state, State::Degraded);
    let (_, e) = store.capability_update(NODE, &caps, Some(Health::Online), None, at(2)).unwrap();
    assert_eq!(names(&e), ["online"], "an unchanged capability records nothing");
    assert_eq!(store.presence().unwrap().active(NODE).unwrap().capabilities["hooks"], json!(["all"]));
}

pub fn links(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob"]);
    store.publish(&map).unwrap();
    assert!(store.link(&map, "ada", "bob").unwrap());
    assert!(!store.link(&map, "bob", "ada").unwrap(), "already linked");
    assert!(store.links().unwrap().linked("bob", "ada"), "reciprocal");
    assert_eq!(kind(store.link(&map, "ada", "ada")), ErrorKind::PeerSelf);
    assert_eq!(kind(store.link(&map, "ada", "zed")), ErrorKind::PeerMissing);
    assert_eq!(kind(store.link(&map, "Ada", "bob")), ErrorKind::RequestInvalid);
    let v = crate::peers::visible_in(store, &map, None, "bob").unwrap();
    assert_eq!((v[0].reason.as_str(), v[1].personality.as_str(), v[1].reason.as_str()), ("self", "ada", "peer"));
    // Absent from the fleet: kept, not visible.
    assert_eq!(crate::peers::visible_in(store, &fleet(&["bob"]), None, "bob").unwrap().len(), 1);
    let missing = crate::peers::visible_in(store, &map, None, "zed").unwrap_err();
    assert!(missing.to_string().contains("`zed` is not a peer of the fleet (its peers: ada, bob)"), "{missing}");
    // ada left the fleet: her link is kept, and may be removed, once.
    store.publish(&fleet(&["bob"])).unwrap();
    assert!(store.unlink(Some(&fleet(&["bob"])), "bob", "ada").unwrap());
    store.publish(&map).unwrap();
    assert!(!store.unlink(Some(&map), "bob", "ada").unwrap());
    store.publish(&fleet(&["bob"])).unwrap();
    assert_eq!(kind(store.unlink(Some(&fleet(&["bob"])), "bob", "ada")), ErrorKind::PeerMissing);
    assert!(store.links().unwrap().pairs.is_empty());
}

pub fn send_lease_ack(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob", "cyd"]);
    store.publish(&map).unwrap();
    store.link(&map, "ada", "bob").unwrap();
    let now = at(0);
    let send = |to: &str, text: &str| store.send(&map, &Draft::plain("ada", to, text), &limits(10), now);
    assert_eq!(kind(send("ada", "hi")), ErrorKind::PeerSelf);
    assert_eq!(kind(send("bob", "  ")), ErrorKind::PeerMessageEmpty);
    assert_eq!(kind(send("bob", &"x".repeat(MAX_MESSAGE_CHARS + 1))), ErrorKind::PeerMessageTooLong);
    assert_eq!(kind(send("cyd", "hi")), ErrorKind::PeerNotVisible);
    assert_eq!(kind(send("Bob", "hi")), ErrorKind::RequestInvalid);
    assert!(store.waiting().unwrap().is_empty(), "nothing refused was queued");
    let sent = send("bob", &"x".repeat(MAX_MESSAGE_CHARS)).unwrap();
    assert_eq!((sent.queued, sent.queue_depth), (true, 1));
    send("bob", "m1").unwrap();
    // A look takes nothing; a lease hides what it returned until it ends.
    assert_eq!(store.inbox("bob", now).unwrap().len(), 2);
    let leased = store.lease("bob", false, now).unwrap();
    assert_eq!(leased.len(), 2);
    assert!(leased.iter().all(|m| m.leased_until.is_none() && m.from == "ada"));
    assert!(store.lease("bob", false, now).unwrap().is_empty(), "leased");
    assert!(store.inbox("bob", now).unwrap().is_empty(), "hidden from a look too");
    send("bob", "m2").unwrap();
    assert_eq!(store.lease("bob", false, now).unwrap().len(), 1, "only the new one");
    assert_eq!(store.lease("bob", false, now + LEASE).unwrap().len(), 3, "the lease expired");
    assert_eq!(store.ack("bob", &[leased[0].id.clone(), "msg-none".into()], &limits(10), now).unwrap(), 1);
    assert_eq!(store.waiting().unwrap().into_iter().collect::<Vec<_>>(), [("bob".to_owned(), 2)]);
    assert_eq!(kind(store.ack("Bob", &[], &limits(10), now)), ErrorKind::RequestInvalid);
    let ids: Vec<String> = store.inbox("bob", now + LEASE * 3).unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(store.ack("bob", &ids, &limits(10), now).unwrap(), 2);
    assert!(store.waiting().unwrap().is_empty(), "empty inboxes are left out");
}

pub fn capacity_drops(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob"]);
    store.publish(&map).unwrap();
    store.link(&map, "ada", "bob").unwrap();
    for n in 0..4 {
        let sent = store.send(&map, &Draft::plain("ada", "bob", &format!("m{n}")), &limits(3), at(n)).unwrap();
        assert_eq!(sent.dropped, usize::from(n == 3));
    }
    let texts: Vec<String> = store.inbox("bob", at(9)).unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["m1", "m2", "m3"], "the oldest dropped");
    let events: Vec<Event> =
        log(store).into_iter().filter(|e| !matches!(e.kind, EventKind::MessageQueued { .. })).collect();
    assert!(
        matches!(&events[..], [Event { kind: EventKind::MessageDropped { personality, from, .. }, ts }]
            if personality == "bob" && from == "ada" && *ts == at(3)),
        "{events:?}"
    );
    assert_eq!(names(&log(store)).iter().filter(|n| **n == "message_queued").count(), 4);
}

/// What `recent` returns and what `follow` from its cursor yields leave no
/// event out and repeat none, whenever the changes happen.
pub fn recent_then_follow(store: &dyn StateStore) {
    let (empty, mut cursor) = store.recent(None, 10).unwrap();
    assert!(empty.is_empty());
    store.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
    let (recent, from_recent) = store.recent(Some(NODE), 2).unwrap();
    assert_eq!(names(&recent), ["capability_declared", "online"], "the last two");
    assert_eq!(names(&store.follow(&mut cursor, None).unwrap()), ["registered", "capability_declared", "online"]);
    assert_eq!(cursor, from_recent, "both stand after the last event");
    // Written between `recent` and the first `follow`: followed, once.
    store.detach(NODE, None, at(1)).unwrap();
    let mut other: Cursor = from_recent;
    assert_eq!(names(&store.follow(&mut other, Some(NODE)).unwrap()), ["offline"]);
    assert_eq!(names(&store.follow(&mut cursor, Some("claude-other")).unwrap()), Vec::<&str>::new(), "filtered");
    assert!(store.follow(&mut other, None).unwrap().is_empty(), "nothing twice");
    store.revoke(NODE, Revoker::Core, None, at(2)).unwrap();
    assert_eq!(names(&store.follow(&mut other, None).unwrap()), ["revoked"]);
}

/// Limits with `capacity`, a high rate and a large history.
fn limits(capacity: usize) -> Limits {
    Limits { capacity, send_rate: 1000, history_max: 1000, history_age: Duration::from_secs(30 * 86400) }
}

fn draft(from: &str, to: &[&str], text: &str) -> Draft {
    let mut d = Draft::plain(from, to[0], text);
    d.to = to.iter().map(|t| (*t).to_owned()).collect();
    d
}

fn states(store: &dyn StateStore, sender: &str, id: &str) -> Vec<(String, DeliveryState)> {
    let rows = store.outbox(sender, None).unwrap();
    let row = rows.iter().find(|r| r.id == id).expect("in the outbox");
    row.deliveries.iter().map(|d| (d.to.clone(), d.state)).collect()
}

/// queued → delivered → acknowledged per recipient, each an event; the
/// receipt reaches the sender once, however often the recipient confirms.
pub fn states_receipts_and_events(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob", "cyd"]);
    store.publish(&map).unwrap();
    store.link(&map, "ada", "bob").unwrap();
    store.link(&map, "ada", "cyd").unwrap();
    let mut d = draft("ada", &["bob", "cyd"], "Please review the release notes.");
    d.subject = Some("Release notes".into());
    d.ack_required = true;
    let sent = store.send(&map, &d, &limits(10), at(0)).unwrap();
    assert_eq!(
        sent.recipients.iter().map(|q| (q.to.as_str(), q.queue_depth)).collect::<Vec<_>>(),
        [("bob", 1), ("cyd", 1)]
    );
    let q = DeliveryState::Queued;
    assert_eq!(states(store, "ada", &sent.id), [("bob".into(), q), ("cyd".into(), q)]);
    // bob's hook prints and acknowledges the lease: delivered.
    let leased = store.lease("bob", false, at(1)).unwrap();
    assert_eq!(
        (leased[0].subject.as_deref(), leased[0].thread(), leased[0].ack_required),
        (Some("Release notes"), sent.thread.as_str(), true)
    );
    assert_eq!(leased[0].to, ["bob", "cyd"]);
    // Not delivered yet: nothing to confirm.
    assert_eq!(kind(store.acknowledge("bob", &sent.id, &limits(10), at(1))), ErrorKind::PeerMessageUnknown);
    assert_eq!(store.ack("bob", std::slice::from_ref(&sent.id), &limits(10), at(2)).unwrap(), 1);
    assert_eq!(store.ack("bob", std::slice::from_ref(&sent.id), &limits(10), at(2)).unwrap(), 0, "acknowledged once");
    assert!(store.lease("bob", false, at(100)).unwrap().is_empty(), "a delivered message never comes again");
    assert_eq!(states(store, "ada", &sent.id), [("bob".into(), DeliveryState::Delivered), ("cyd".into(), q)]);
    // bob's agent confirms it: acknowledged, and a receipt for ada.
    let a = store.acknowledge("bob", &sent.id, &limits(10), at(3)).unwrap();
    assert!(a.acknowledged && a.receipt);
    let again = store.acknowledge("bob", &sent.id, &limits(10), at(4)).unwrap();
    assert!(!again.acknowledged && !again.receipt, "a second confirmation changes nothing");
    assert_eq!(states(store, "ada", &sent.id)[0], ("bob".into(), DeliveryState::Acknowledged));
    let receipts = store.inbox("ada", at(5)).unwrap();
    assert_eq!(receipts.len(), 1, "one receipt: {receipts:?}");
    assert_eq!(receipts[0].text, "bob acknowledged \"Release notes\"");
    assert_eq!(
        (receipts[0].receipt_for.as_deref(), receipts[0].thread()),
        (Some(sent.id.as_str()), sent.thread.as_str())
    );
    // A message that asks for no confirmation cannot be confirmed, nor an unknown one.
    let plain = store.send(&map, &draft("ada", &["bob"], "fyi"), &limits(10), at(6)).unwrap();
    store.lease("bob", false, at(6)).unwrap();
    store.ack("bob", std::slice::from_ref(&plain.id), &limits(10), at(6)).unwrap();
    assert_eq!(kind(store.acknowledge("bob", &plain.id, &limits(10), at(7))), ErrorKind::RequestInvalid);
    assert_eq!(kind(store.acknowledge("bob", "msg-none", &limits(10), at(7))), ErrorKind::PeerMessageUnknown);
    let events: Vec<(&str, String)> = log(store)
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MessageQueued { personality, message_id, .. } if *message_id == sent.id => {
                Some(("queued", personality.clone()))
            }
            EventKind::MessageDelivered { personality, message_id, .. } if *message_id == sent.id => {
                Some(("delivered", personality.clone()))
            }
            EventKind::MessageAcknowledged { personality, message_id, .. } if *message_id == sent.id => {
                Some(("acknowledged", personality.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            ("queued", "bob".into()),
            ("queued", "cyd".into()),
            ("delivered", "bob".into()),
            ("acknowledged", "bob".into())
        ]
    );
    // The outbox: newest first.
    let rows = store.outbox("ada", Some(1)).unwrap();
    assert_eq!((rows.len(), rows[0].id.as_str()), (1, plain.id.as_str()));
}

/// A reply goes to the original sender, in its thread, with its subject;
/// a thread shows what the caller sent and received, in order.
pub fn replies_and_threads(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob", "cyd"]);
    store.publish(&map).unwrap();
    store.link(&map, "ada", "bob").unwrap();
    let mut d = draft("ada", &["bob"], "Can you take the migration?");
    d.subject = Some("Migration".into());
    let first = store.send(&map, &d, &limits(10), at(0)).unwrap();
    let reply = |from: &str, id: &str, text: &str, t: u64| {
        let p = ReplyParams { from: from.into(), message_id: id.into(), message: text.into(), ack_required: false };
        store.reply(&map, &p, &limits(10), at(t))
    };
    assert_eq!(kind(reply("bob", &first.id, "yes", 1)), ErrorKind::PeerMessageUnknown, "not delivered yet");
    store.lease("bob", false, at(1)).unwrap();
    store.ack("bob", std::slice::from_ref(&first.id), &limits(10), at(1)).unwrap();
    let answer = reply("bob", &first.id, "Yes, I take it.", 2).unwrap();
    assert_eq!((answer.to.as_str(), answer.thread.as_str()), ("ada", first.thread.as_str()));
    let got = store.lease("ada", false, at(3)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].in_reply_to.as_deref(), got[0].subject.as_deref()),
        (Some(first.id.as_str()), Some("Migration"))
    );
    store.ack("ada", std::slice::from_ref(&answer.id), &limits(10), at(3)).unwrap();
    assert_eq!(kind(reply("cyd", &first.id, "me too", 4)), ErrorKind::PeerMessageUnknown, "cyd never received it");
    assert_eq!(kind(reply("ada", "msg-none", "x", 4)), ErrorKind::PeerMessageUnknown);
    // Another thread between them.
    store.send(&map, &draft("bob", &["ada"], "unrelated"), &limits(10), at(5)).unwrap();
    let thread = |p: &str| {
        let params =
            HistoryParams { personality: p.into(), thread: Some(first.thread.clone()), ..HistoryParams::default() };
        crate::peers::history(&store.mailbox(p).unwrap(), &params).unwrap()
    };
    let ada: Vec<(Direction, String)> = thread("ada").into_iter().map(|r| (r.direction, r.message.id)).collect();
    assert_eq!(ada, [(Direction::Sent, first.id.clone()), (Direction::Received, answer.id.clone())]);
    let bob: Vec<(Direction, String)> = thread("bob").into_iter().map(|r| (r.direction, r.message.id)).collect();
    assert_eq!(bob, [(Direction::Received, first.id.clone()), (Direction::Sent, answer.id.clone())]);
    assert!(thread("cyd").is_empty());
    // A reply needs the link still.
    store.unlink(Some(&map), "ada", "bob").unwrap();
    assert_eq!(kind(reply("ada", &answer.id, "thanks", 6)), ErrorKind::PeerNotVisible);
}

/// One message to several peers: one state per recipient; a full inbox
/// drops its own oldest, and the sender sees that recipient as dropped.
pub fn multi_recipient_capacity_drops(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob", "cyd", "dan"]);
    store.publish(&map).unwrap();
    for p in ["bob", "cyd", "dan"] {
        store.link(&map, "ada", p).unwrap();
    }
    store.link(&map, "dan", "cyd").unwrap();
    // cyd's inbox already holds two.
    store.send(&map, &draft("dan", &["cyd"], "one"), &limits(2), at(0)).unwrap();
    store.send(&map, &draft("dan", &["cyd"], "two"), &limits(2), at(0)).unwrap();
    let first = store.send(&map, &draft("ada", &["bob", "cyd"], "first"), &limits(2), at(1)).unwrap();
    assert_eq!(first.dropped, 1);
    assert_eq!(first.recipients.iter().map(|q| q.dropped).collect::<Vec<_>>(), [0, 1]);
    let second = store.send(&map, &draft("ada", &["bob", "cyd", "bob"], "second"), &limits(2), at(2)).unwrap();
    assert_eq!(second.recipients.len(), 2, "a name given twice is one recipient");
    let third = store.send(&map, &draft("ada", &["cyd"], "third"), &limits(2), at(3)).unwrap();
    assert_eq!(third.dropped, 1);
    assert_eq!(
        states(store, "ada", &first.id),
        [("bob".into(), DeliveryState::Queued), ("cyd".into(), DeliveryState::Dropped)]
    );
    assert_eq!(store.inbox("bob", at(4)).unwrap().len(), 2, "bob dropped nothing");
    let texts: Vec<String> = store.inbox("cyd", at(4)).unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["second", "third"]);
    let many: Vec<String> = (0..=MAX_RECIPIENTS).map(|n| format!("p{n}")).collect();
    let mut d = draft("ada", &["bob"], "hi");
    d.to = many;
    assert_eq!(kind(store.send(&map, &d, &limits(2), at(5))), ErrorKind::PeerTooManyRecipients);
    d.to = Vec::new();
    assert_eq!(kind(store.send(&map, &d, &limits(2), at(5))), ErrorKind::PeerTooManyRecipients);
    // One recipient not visible: nothing is queued anywhere.
    let before = store.waiting().unwrap();
    assert_eq!(
        kind(store.send(&map, &draft("dan", &["cyd", "bob"], "x"), &limits(9), at(6))),
        ErrorKind::PeerNotVisible
    );
    assert_eq!(store.waiting().unwrap(), before);
    let mut long = draft("ada", &["bob"], "x");
    long.subject = Some("s".repeat(MAX_SUBJECT_CHARS + 1));
    assert_eq!(kind(store.send(&map, &long, &limits(9), at(7))), ErrorKind::PeerSubjectInvalid);
    long.subject = Some("two\nlines".into());
    assert_eq!(kind(store.send(&map, &long, &limits(9), at(7))), ErrorKind::PeerSubjectInvalid);
}

/// Past `send_rate` messages a minute a sender is refused, naming the
/// limit; a minute later it may send again. Replies count too.
pub fn rate_limits(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob"]);
    store.publish(&map).unwrap();
    store.link(&map, "ada", "bob").unwrap();
    let tight = Limits { send_rate: 3, ..limits(100) };
    for n in 0..3 {
        store.send(&map, &draft("ada", &["bob"], "m"), &tight, at(n)).unwrap();
    }
    let refused = store.send(&map, &draft("ada", &["bob"], "m"), &tight, at(10));
    let message = refused.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(message.contains("presence.peer_send_rate") && message.contains("3 per minute"), "{message}");
    assert_eq!(kind(refused), ErrorKind::PeerRateLimited);
    assert_eq!(store.inbox("bob", at(10)).unwrap().len(), 3, "the refused one was not queued");
    // bob is not limited by ada's sends; the operator never is.
    store.send(&map, &draft("bob", &["ada"], "m"), &tight, at(10)).unwrap();
    let mut op = draft(OPERATOR, &["bob"], "from the operator");
    op.operator = true;
    for _ in 0..5 {
        store.send(&map, &op, &tight, at(10)).unwrap();
    }
    store.send(&map, &draft("ada", &["bob"], "later"), &tight, at(61)).unwrap();
}

/// Delivered and sent messages are kept within the count and age bounds
/// and found by a word of their body, ranked.
pub fn history_bounds_and_search(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob", "cyd"]);
    store.publish(&map).unwrap();
    store.link(&map, "ada", "bob").unwrap();
    store.link(&map, "cyd", "bob").unwrap();
    let small = Limits { history_max: 3, history_age: Duration::from_secs(1000), ..limits(100) };
    let texts = ["the database migration is done", "lunch?", "migration rollback plan attached", "deploy at noon"];
    for (n, text) in texts.iter().enumerate() {
        let sent = store.send(&map, &draft("ada", &["bob"], text), &small, at(n as u64)).unwrap();
        store.lease("bob", false, at(n as u64)).unwrap();
        store.ack("bob", &[sent.id], &small, at(n as u64)).unwrap();
    }
    store.send(&map, &draft("cyd", &["bob"], "migration is scary"), &small, at(5)).unwrap();
    let find = |p: &str, params: HistoryParams| crate::peers::history(&store.mailbox(p).unwrap(), &params).unwrap();
    let all = find("bob", HistoryParams { personality: "bob".into(), ..HistoryParams::default() });
    let kept: Vec<&str> = all.iter().map(|r| r.message.text.as_str()).collect();
    assert_eq!(kept, ["lunch?", "migration rollback plan attached", "deploy at noon"], "the oldest went past 3");
    let hits = find(
        "bob",
        HistoryParams { personality: "bob".into(), query: Some("migration".into()), ..HistoryParams::default() },
    );
    assert_eq!(hits.len(), 1, "a waiting message is not history yet: {hits:?}");
    assert_eq!(hits[0].message.text, "migration rollback plan attached");
    assert!(hits[0].score.is_some_and(|s| s > 0.0));
    let sent = find(
        "ada",
        HistoryParams {
            personality: "ada".into(),
            with: Some("bob".into()),
            query: Some("noon".into()),
            ..HistoryParams::default()
        },
    );
    assert_eq!((sent.len(), sent[0].direction), (1, Direction::Sent));
    assert!(
        find("ada", HistoryParams { personality: "ada".into(), with: Some("cyd".into()), ..HistoryParams::default() })
            .is_empty()
    );
    // Past the age bound, the next change forgets them.
    let later = store.send(&map, &draft("ada", &["bob"], "much later"), &small, at(2000)).unwrap();
    store.lease("bob", false, at(2000)).unwrap();
    store.ack("bob", &[later.id], &small, at(2000)).unwrap();
    let all = find("bob", HistoryParams { personality: "bob".into(), ..HistoryParams::default() });
    assert_eq!(all.iter().map(|r| r.message.text.as_str()).collect::<Vec<_>>(), ["much later"]);
    let ada = find("ada", HistoryParams { personality: "ada".into(), ..HistoryParams::default() });
    assert_eq!(ada.len(), 1, "the sender's history is bounded too");
    assert_eq!(states(store, "ada", &ada[0].message.id), [("bob".into(), DeliveryState::Delivered)]);
}

/// The operator writes to any fleet peer without a link (its messages
/// take no reply and send no receipt); urgent messages can be leased on
/// their own, in the middle of a turn.
pub fn operator_and_urgent(store: &dyn StateStore) {
    let map = fleet(&["ada", "bob"]);
    store.publish(&map).unwrap();
    let mut op = draft(OPERATOR, &["ada", "bob"], "Stop deploying.");
    op.operator = true;
    op.importance = Importance::Urgent;
    op.ack_required = true;
    let sent = store.send(&map, &op, &limits(10), at(0)).unwrap();
    assert_eq!(sent.recipients.len(), 2);
    op.to = vec!["zed".into()];
    assert_eq!(kind(store.send(&map, &op, &limits(10), at(0))), ErrorKind::PeerMissing);
    store.link(&map, "ada", "bob").unwrap();
    store.send(&map, &draft("bob", &["ada"], "normal one"), &limits(10), at(1)).unwrap();
    let urgent = store.lease("ada", true, at(2)).unwrap();
    assert_eq!(urgent.len(), 1);
    assert!(urgent[0].operator && urgent[0].from == OPERATOR && urgent[0].importance == Importance::Urgent);
    assert!(store.lease("ada", true, at(2)).unwrap().is_empty(), "leased");
    assert_eq!(store.lease("ada", false, at(2)).unwrap()[0].text, "normal one", "the rest waits for the turn");
    store.ack("ada", std::slice::from_ref(&sent.id), &limits(10), at(3)).unwrap();
    let a = store.acknowledge("ada", &sent.id, &limits(10), at(4)).unwrap();
    assert!(a.acknowledged && !a.receipt, "the operator has no inbox for a receipt");
    let p = ReplyParams { from: "ada".into(), message_id: sent.id.clone(), message: "ok".into(), ack_required: false };
    assert_eq!(kind(store.reply(&map, &p, &limits(10), at(5))), ErrorKind::RequestInvalid);
    assert!(store.outbox("ada", None).unwrap().is_empty(), "the operator's message is not ada's");
}

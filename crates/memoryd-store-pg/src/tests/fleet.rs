//! Several hosts on one fleet database: the registry, cross-host links and
//! messages, name conflicts and claims, the lock order under concurrent
//! sends, `store import` and the operator's commands.

use super::support::{sql, store};
use crate::migrate::Migration;
use crate::testkit::Cluster;
use crate::{FileState, Import, NameConflict, PgStore, SettingsChange};
use memoryd_core::fleet::{FleetMap, FleetPeer};
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::paths::Paths;
use memoryd_core::peers::{DeliveryState, Draft, Limits};
use memoryd_core::presence::Revoker;
use memoryd_core::store::{FileStore, PeerStore, PresenceStore, StateStore, StoreError};
use memoryd_proto::ErrorKind;
use memoryd_proto::status::SweepStatus;
use std::time::{Duration, SystemTime};

fn fleet(names: &[&str]) -> FleetMap {
    FleetMap {
        updated_at: "2026-12-01T10:00:00Z".into(),
        peers: names
            .iter()
            .map(|n| FleetPeer {
                personality: (*n).into(),
                cwd: format!("/p/{n}").into(),
                default_runtime: Some("claude".into()),
                runtimes: vec!["claude".into()],
                description: format!("{n} here"),
            })
            .collect(),
    }
}

fn limits() -> Limits {
    Limits { capacity: 1000, send_rate: 1000, history_max: 1000, history_age: Duration::from_secs(86400) }
}

fn kind<T: std::fmt::Debug>(r: Result<T, StoreError>) -> ErrorKind {
    match r {
        Err(StoreError::Refused(r)) => r.kind,
        other => panic!("not a refusal: {other:?}"),
    }
}

/// Two hosts on one schema: host-a runs ada, host-b runs bob.
fn two_hosts(cluster: &Cluster) -> (PgStore, PgStore) {
    let schema = cluster.fresh_schema();
    let a = store(cluster, &schema, "host-a");
    let b = store(cluster, &schema, "host-b");
    a.publish(&fleet(&["ada"])).unwrap();
    b.publish(&fleet(&["bob"])).unwrap();
    (a, b)
}

/// The events of the log as (event, host), oldest first.
fn events(store: &PgStore) -> Vec<(String, String, serde_json::Value)> {
    sql(store, "SELECT event, host_id, body FROM events ORDER BY seq")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn a_peer_of_one_host_links_with_and_messages_a_peer_of_another() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = two_hosts(&cluster);
    let registry = a.registry(&fleet(&["ada"])).unwrap();
    assert_eq!(registry.names(), ["ada", "bob"]);
    assert_eq!(registry.peer("ada").unwrap().cwd.to_str(), Some("/p/ada"), "its own peer as its map has it");
    let bob = registry.peer("bob").unwrap();
    assert_eq!((bob.cwd.as_os_str().is_empty(), bob.description.as_str()), (true, "bob here"), "another host's");
    // The caller's map is not what a link is checked against.
    assert!(a.link(&fleet(&["ada"]), "ada", "bob").unwrap());
    assert!(!b.link(&fleet(&["bob"]), "bob", "ada").unwrap(), "one link, seen from both hosts");
    let now = SystemTime::now();
    let sent = a.send(&fleet(&["ada"]), &Draft::plain("ada", "bob", "hello from a"), &limits(), now).unwrap();
    assert_eq!(b.waiting().unwrap().get("bob"), Some(&1));
    let leased = b.lease("bob", false, now).unwrap();
    assert_eq!((leased.len(), leased[0].text.as_str()), (1, "hello from a"));
    assert_eq!(b.ack("bob", std::slice::from_ref(&sent.id), &limits(), now).unwrap(), 1);
    let rows = a.outbox("ada", None).unwrap();
    assert_eq!(rows[0].deliveries[0].state, DeliveryState::Delivered);
    let log: Vec<(String, String)> = events(&a).into_iter().map(|(e, h, _)| (e, h)).collect();
    assert_eq!(
        log,
        [
            ("peer.message_queued".to_owned(), "host-a".to_owned()),
            ("peer.message_delivered".to_owned(), "host-b".to_owned())
        ]
    );
    // A peer that left its host's map is kept, not present: no longer linkable.
    a.publish(&fleet(&["ada", "cyd"])).unwrap();
    assert!(a.link(&fleet(&[]), "cyd", "bob").unwrap());
    a.publish(&fleet(&["ada"])).unwrap();
    assert_eq!(kind(b.link(&fleet(&["bob"]), "ada", "cyd")), ErrorKind::PeerMissing);
    let cyd = sql(&a, "SELECT present FROM peers WHERE personality = 'cyd'");
    assert!(!cyd[0].get::<_, bool>(0), "never deleted");
    assert!(b.unlink(None, "bob", "cyd").unwrap(), "its links may still be removed");
}

#[test]
fn the_cached_registry_is_read_again_after_a_change_and_never_kept_from_before_it() {
    use crate::registry::{Cache, Row};
    let cache = Cache::default();
    let hour = Duration::from_secs(3600);
    let rows = |names: &[&str]| {
        std::sync::Arc::new(
            names
                .iter()
                .map(|n| Row {
                    personality: (*n).into(),
                    host_id: "host-b".into(),
                    runtimes: Vec::new(),
                    description: String::new(),
                })
                .collect::<Vec<_>>(),
        )
    };
    assert!(cache.fresh(hour).is_none(), "nothing read yet");
    cache.store(cache.generation(), rows(&["bob"]));
    assert_eq!(cache.fresh(hour), Some(rows(&["bob"])));
    // A peer hint or a resync while a read was under way: that read is
    // not kept.
    let generation = cache.generation();
    cache.invalidate();
    assert!(cache.fresh(hour).is_none());
    cache.store(generation, rows(&["bob"]));
    assert!(cache.fresh(hour).is_none(), "read before the change");
    cache.store(cache.generation(), rows(&["bob", "cyd"]));
    assert_eq!(cache.fresh(hour), Some(rows(&["bob", "cyd"])));
    assert!(cache.fresh(Duration::ZERO).is_none(), "older than resync_every");
}

#[test]
fn a_lease_taken_on_one_host_holds_on_another_whose_clock_differs() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = two_hosts(&cluster);
    a.link(&fleet(&[]), "ada", "bob").unwrap();
    // host-a's clock is 300 s ahead of the database's, host-b's 300 s behind.
    a.db.set_skew_ms(300_000);
    b.db.set_skew_ms(-300_000);
    let real = SystemTime::now();
    let (a_now, b_now) = (real + Duration::from_secs(300), real - Duration::from_secs(300));
    let sent = a.send(&fleet(&[]), &Draft::plain("ada", "bob", "hi"), &limits(), a_now).unwrap();
    let leased = b.lease("bob", false, b_now).unwrap();
    assert_eq!(leased.len(), 1);
    let age = b_now.duration_since(leased[0].ts.time()).unwrap_or_default();
    assert!(age < Duration::from_secs(5), "shown on host-b's clock: {age:?}");
    assert!(a.inbox("bob", a_now + Duration::from_secs(29)).unwrap().is_empty(), "leased for 30 s, seen from host-a");
    assert_eq!(a.inbox("bob", a_now + Duration::from_secs(31)).unwrap().len(), 1, "and not longer");
    let stored = sql(&a, "SELECT body->>'ts' FROM mail WHERE box = 'waiting'")[0].get::<_, String>(0);
    let stored = memoryd_proto::event::rfc3339::parse(&stored).unwrap();
    assert!(stored.duration_since(real).unwrap_or_default() < Duration::from_secs(5), "stored on the database's clock");
    assert_eq!(b.ack("bob", std::slice::from_ref(&sent.id), &limits(), b_now).unwrap(), 1);
    assert_eq!(a.outbox("ada", None).unwrap()[0].deliveries[0].state, DeliveryState::Delivered);
}

#[test]
fn a_present_name_of_another_host_is_a_conflict_until_released_then_it_moves() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = two_hosts(&cluster);
    a.link(&fleet(&[]), "ada", "bob").unwrap();
    b.send(&fleet(&[]), &Draft::plain("bob", "ada", "for ada"), &limits(), SystemTime::now()).unwrap();
    // host-b's map gets an ada too.
    b.publish(&fleet(&["ada", "bob"])).unwrap();
    assert_eq!(b.name_conflicts(), [("ada".to_owned(), "host-a".to_owned())]);
    assert!(a.name_conflicts().is_empty());
    let owner = sql(&a, "SELECT host_id FROM peers WHERE personality = 'ada'");
    assert_eq!(owner[0].get::<_, String>(0), "host-a", "a present name is never taken by itself");
    let registry = b.registry(&fleet(&["ada", "bob"])).unwrap();
    assert!(registry.peer("ada").unwrap().cwd.as_os_str().is_empty(), "host-a's ada, not b's local one");
    // The operator releases it; host-b's next publish claims it.
    assert!(a.release("ada").unwrap());
    assert!(!a.release("ada").unwrap(), "already released");
    assert_eq!(kind(a.release("zed")), ErrorKind::PeerMissing);
    b.publish(&fleet(&["ada", "bob"])).unwrap();
    assert!(b.name_conflicts().is_empty());
    let moved: Vec<serde_json::Value> =
        events(&a).into_iter().filter(|(e, _, _)| e == "peer.claim_moved").map(|(_, _, body)| body).collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(
        (&moved[0]["personality"], &moved[0]["from"], &moved[0]["to"]),
        (&"ada".into(), &"host-a".into(), &"host-b".into())
    );
    // Its link and its inbox followed it.
    assert!(b.links().unwrap().linked("ada", "bob"));
    assert_eq!(b.lease("ada", false, SystemTime::now()).unwrap()[0].text, "for ada");
    // host-a still has ada in its map: now it is host-a's conflict.
    a.publish(&fleet(&["ada"])).unwrap();
    assert_eq!(a.name_conflicts(), [("ada".to_owned(), "host-b".to_owned())]);
}

#[test]
fn sends_in_opposite_directions_from_many_threads_never_deadlock() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = two_hosts(&cluster);
    a.publish(&fleet(&["ada", "cyd"])).unwrap();
    for (x, y) in [("ada", "bob"), ("ada", "cyd"), ("bob", "cyd")] {
        a.link(&fleet(&[]), x, y).unwrap();
    }
    const EACH: usize = 25;
    let start = std::time::Instant::now();
    let send = |store: &PgStore, from: &'static str, to: &'static [&'static str]| {
        for n in 0..EACH {
            let mut d = Draft::plain(from, to[0], &format!("{from} {n}"));
            d.to = to.iter().map(|t| (*t).to_owned()).collect();
            store.send(&fleet(&[]), &d, &limits(), SystemTime::now()).unwrap();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| send(&a, "ada", &["bob", "cyd"]));
        s.spawn(|| send(&b, "bob", &["ada", "cyd"]));
        s.spawn(|| send(&a, "cyd", &["bob", "ada"]));
        // Receipts and acks lock two mailboxes too.
        s.spawn(|| {
            for _ in 0..EACH {
                let got = b.lease("bob", false, SystemTime::now()).unwrap();
                let ids: Vec<String> = got.into_iter().map(|m| m.id).collect();
                b.ack("bob", &ids, &limits(), SystemTime::now()).unwrap();
            }
        });
    });
    let waiting = a.waiting().unwrap();
    assert_eq!((waiting.get("ada"), waiting.get("cyd")), (Some(&(2 * EACH)), Some(&(2 * EACH))));
    let delivered =
        sql(&a, "SELECT count(*) FROM mail WHERE personality = 'bob' AND box = 'received'")[0].get::<_, i64>(0);
    let left = waiting.get("bob").copied().unwrap_or(0);
    assert_eq!(usize::try_from(delivered).unwrap() + left, 2 * EACH, "every message to bob once");
    let log = std::fs::read_to_string(cluster.dir().join("server.log")).unwrap();
    assert!(!log.contains("deadlock detected"), "a deadlock (retried by the store, but there): {log}");
    eprintln!("{} sends and {EACH} lease+ack rounds in {:?}", 3 * EACH, start.elapsed());
}

#[test]
fn store_import_copies_links_mailboxes_and_revocations_once_and_names_conflicts() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = two_hosts(&cluster);
    b.publish(&fleet(&["bob", "cyd"])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = FileStore::open(&Paths::new(dir.path().to_path_buf()), &FileGuard::live()).unwrap();
    let map = fleet(&["ada", "cyd", "dan"]);
    file.link(&map, "ada", "dan").unwrap();
    file.link(&map, "ada", "cyd").unwrap();
    let now = SystemTime::now();
    for text in ["one", "two", "three"] {
        file.send(&map, &Draft::plain("ada", "dan", text), &limits(), now).unwrap();
    }
    file.send(&map, &Draft::plain("ada", "cyd", "to cyd"), &limits(), now).unwrap();
    file.revoke("claude-zed", Revoker::Core, Some("gone"), now).unwrap();
    let state = FileState::read(&file).unwrap();
    let dry = a.import(&state, false).unwrap();
    assert!(!dry.applied);
    assert_eq!(dry.conflicts, [NameConflict { personality: "cyd".into(), host: "host-b".into() }]);
    assert_eq!((dry.links, dry.mailboxes, dry.waiting, dry.revocations), (1, 2, 3, 1), "{dry:?}");
    assert_eq!(dry.peers_added, ["dan"]);
    assert!(a.waiting().unwrap().is_empty() && a.links().unwrap().pairs.is_empty(), "a dry run writes nothing");
    let done = a.import(&state, true).unwrap();
    assert_eq!(Import { applied: false, ..done.clone() }, dry);
    let texts: Vec<String> = a.inbox("dan", now).unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["one", "two", "three"], "in order");
    assert!(a.links().unwrap().linked("ada", "dan"));
    assert_eq!(a.mailbox("ada").unwrap().sent.len(), 4, "the sender's history too");
    let revoked = sql(&a, "SELECT node_id, revoked_by, reason FROM revocations");
    assert_eq!(
        (revoked[0].get::<_, String>(0), revoked[0].get::<_, String>(1), revoked[0].get::<_, Option<String>>(2)),
        ("claude-zed".into(), "core".into(), Some("gone".into()))
    );
    let again = a.import(&state, true).unwrap();
    assert_eq!((again.links, again.waiting, again.revocations), (0, 0, 0), "nothing twice");
    assert_eq!(a.inbox("dan", now).unwrap().len(), 3);
    assert!(b.inbox("cyd", now).unwrap().is_empty(), "host-b's cyd got nothing of host-a's");
}

#[test]
fn the_operator_lists_hosts_changes_settings_and_contracts_the_schema() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = two_hosts(&cluster);
    let hosts = a.fleet_hosts().unwrap();
    assert_eq!(
        hosts.iter().map(|h| (h.host.as_str(), h.up, h.peers.clone())).collect::<Vec<_>>(),
        [("host-a", true, vec!["ada".to_owned()]), ("host-b", true, vec!["bob".to_owned()])]
    );
    assert!(hosts[0].last_seen_ms < 10_000, "{hosts:?}");
    // Settings.
    let change = SettingsChange {
        min_client_version: Some("2.1".into()),
        degraded_after: Some(Duration::from_secs(2)),
        offline_after: Some(Duration::from_secs(4)),
        inbox_capacity: Some(7),
        ..SettingsChange::default()
    };
    a.update_settings(&change).unwrap();
    let row = &sql(&a, "SELECT min_client_version, inbox_capacity, offline_after::text FROM fleet_settings")[0];
    assert_eq!((row.get::<_, Option<String>>(0), row.get::<_, i32>(1)), (Some("2.1".into()), 7));
    let bad = SettingsChange { offline_after: Some(Duration::from_secs(1)), ..SettingsChange::default() };
    let refused = a.update_settings(&bad).unwrap_err().to_string();
    assert!(refused.contains("must be longer than degraded_after"), "{refused}");
    assert_eq!(
        kind(
            a.update_settings(&SettingsChange { min_client_version: Some("2.01".into()), ..SettingsChange::default() })
        ),
        ErrorKind::RequestInvalid
    );
    a.update_settings(&SettingsChange { no_floor: true, ..SettingsChange::default() }).unwrap();
    assert_eq!(sql(&a, "SELECT min_client_version FROM fleet_settings")[0].get::<_, Option<String>>(0), None);
    // The sweep record is per host.
    let sweep = SweepStatus { at: "2026-12-01T10:00:00Z".into(), ok: 3, failed: 1 };
    assert_eq!(a.last_sweep().unwrap(), None);
    a.record_sweep(&sweep).unwrap();
    assert_eq!(a.last_sweep().unwrap(), Some(sweep));
    assert_eq!(b.last_sweep().unwrap(), None);
    let check = a.check().unwrap();
    assert!(check.starts_with("schema 1 (floor 1); 2 host(s), 2 peer(s) (2 present)"), "{check}");
    // A contract step while host-b (schema 1) runs: refused, naming it.
    let step = Migration {
        version: 2,
        name: "contract-test",
        sql: "ALTER TABLE hosts ADD COLUMN contract_test INTEGER",
        compat_floor: 2,
    };
    sql(&a, "UPDATE hosts SET schema_version = 2 WHERE host_id = 'host-a'");
    let refused = a.migrate_contract(&[step]).unwrap_err();
    assert!(refused.to_string().contains("host-b (schema 1)"), "{refused}");
    assert_eq!(kind::<()>(Err(refused)), ErrorKind::StoreIncompatible);
    // Gone (its row stale): applied.
    sql(&a, "UPDATE hosts SET last_seen_at = now() - interval '1 hour' WHERE host_id = 'host-b'");
    assert!(!a.fleet_hosts().unwrap()[1].up);
    let schema = a.migrate_contract(&[step]).unwrap();
    assert_eq!(schema.applied, [2]);
    assert_eq!(sql(&a, "SELECT max(compat_floor) FROM schema_migrations")[0].get::<_, i32>(0), 2);
    // Leaving releases every personality of the host (no session here).
    let (released, events) = b.leave(SystemTime::now()).unwrap();
    assert_eq!((released, events.len()), (vec!["bob".to_owned()], 0));
    assert_eq!(a.registry(&fleet(&["ada"])).unwrap().names(), ["ada"]);
}

#[test]
fn every_change_tells_the_other_hosts_what_it_changed() {
    use futures_util::StreamExt;
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (client, mut connection) = rt.block_on(tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)).unwrap();
    let (heard, mut hints) = tokio::sync::mpsc::unbounded_channel();
    rt.spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = heard.send(serde_json::from_str::<serde_json::Value>(n.payload()).unwrap());
            }
        }
    });
    rt.block_on(client.batch_execute(&format!("LISTEN \"{schema}_fleet\""))).unwrap();
    let a = store(&cluster, &schema, "host-a");
    let b = store(&cluster, &schema, "host-b");
    a.publish(&fleet(&["ada"])).unwrap();
    b.publish(&fleet(&["bob"])).unwrap();
    b.publish(&fleet(&["bob"])).unwrap();
    a.link(&fleet(&[]), "ada", "bob").unwrap();
    let sent = a.send(&fleet(&[]), &Draft::plain("ada", "bob", "hi"), &limits(), SystemTime::now()).unwrap();
    b.lease("bob", false, SystemTime::now()).unwrap();
    b.ack("bob", &[sent.id], &limits(), SystemTime::now()).unwrap();
    a.update_settings(&SettingsChange { inbox_capacity: Some(9), ..SettingsChange::default() }).unwrap();
    let got = rt.block_on(async {
        let mut got = Vec::new();
        while got.len() < 6 {
            match tokio::time::timeout(Duration::from_secs(5), hints.recv()).await {
                Ok(Some(hint)) => got.push(hint),
                _ => break,
            }
        }
        got
    });
    assert_eq!(
        got,
        [
            serde_json::json!({"k": "peer", "p": "ada"}),
            serde_json::json!({"k": "peer", "p": "bob"}),
            serde_json::json!({"k": "link", "a": "ada", "b": "bob"}),
            serde_json::json!({"k": "inbox", "p": "bob"}),
            serde_json::json!({"k": "inbox", "p": "bob"}),
            serde_json::json!({"k": "settings"}),
        ],
        "an unchanged publish and a lease say nothing"
    );
}

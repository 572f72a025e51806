//! Presence on a real server: the domain suite's presence cases, several
//! hosts on one schema, the database going away and coming back, a taken
//! host id and a host whose clock is off.

use crate::testkit::Cluster;
use crate::{Options, PgStore, Seed, StoreState};
use memoryd_core::config::PostgresConfig;
use memoryd_core::presence::{AttachParams, Health, Rules, State};
use memoryd_core::store::{PresenceStore, StoreError, suite};
use memoryd_proto::ErrorKind;
use std::time::{Duration, Instant, SystemTime};

pub(super) fn options(cluster: &Cluster, schema: &str, host: &str, daemon: bool) -> Options {
    let settings = PostgresConfig {
        url: Some(cluster.url()),
        schema: schema.to_owned(),
        host_id: Some(host.to_owned()),
        ..PostgresConfig::default()
    };
    Options {
        settings,
        host_id: host.to_owned(),
        daemon_version: "0.1.0".into(),
        daemon,
        seed: Seed::default(),
        clock_offset_ms: 0,
        instance: None,
    }
}

pub(super) fn open_with(options: Options) -> PgStore {
    let store = PgStore::open(options).unwrap();
    let state = store.wait_connected(Duration::from_secs(15));
    assert!(matches!(state, StoreState::Up { .. }), "{state:?}");
    store
}

pub(super) fn open(cluster: &Cluster, schema: &str, host: &str) -> PgStore {
    open_with(options(cluster, schema, host, true))
}

/// Gives `personalities` to `host` in the fleet registry (what its
/// daemon's publish does).
pub(super) fn own(cluster: &Cluster, schema: &str, host: &str, personalities: &[&str]) {
    for p in personalities {
        cluster.psql(
            "memoryd_test",
            &format!(
                "INSERT INTO \"{schema}\".peers (personality, host_id, runtimes) VALUES ('{p}', '{host}', '{{claude,codex}}')
                 ON CONFLICT (personality) DO UPDATE SET host_id = EXCLUDED.host_id"
            ),
        );
    }
}

fn rules() -> Rules {
    Rules { degraded_after: Duration::from_secs(30), offline_after: Duration::from_secs(60), floor: None }
}

fn req(node: &str, session: &str) -> AttachParams {
    AttachParams {
        session_id: session.into(),
        node_id: node.into(),
        client_version: "1.0".into(),
        capabilities: serde_json::Map::new(),
        health_state: Health::Online,
        pid: None,
    }
}

fn none_run(_: i32) -> Option<String> {
    None
}

fn kind<T: std::fmt::Debug>(r: Result<T, StoreError>) -> ErrorKind {
    match r {
        Err(StoreError::Refused(r)) => r.kind,
        Err(StoreError::Unavailable { kind, .. }) => kind,
        other => panic!("not an error with a kind: {other:?}"),
    }
}

const PRESENCE_CASES: [(&str, suite::Case); 9] = [
    ("attach_registers_then_online", suite::attach_registers_then_online),
    ("heartbeats_and_the_sweep", suite::heartbeats_and_the_sweep),
    ("soft_heartbeats", suite::soft_heartbeats),
    ("a_live_pid_counts_as_a_heartbeat", suite::a_live_pid_counts_as_a_heartbeat),
    ("takeover_and_supersession", suite::takeover_and_supersession),
    ("revocation", suite::revocation),
    ("the_version_floor", suite::the_version_floor),
    ("capability_updates", suite::capability_updates),
    ("recent_then_follow", suite::recent_then_follow),
];

fn run_presence_cases(cluster: &Cluster, clock_offset_ms: i64) {
    for (name, case) in PRESENCE_CASES {
        let schema = cluster.fresh_schema();
        let store = open_with(Options { clock_offset_ms, ..options(cluster, &schema, "host-a", true) });
        own(cluster, &schema, "host-a", &["boris"]);
        eprintln!("case {name} (clock offset {clock_offset_ms} ms)");
        case(&store);
    }
}

#[test]
fn the_presence_cases_of_the_domain_suite() {
    let Some(cluster) = Cluster::start() else { return };
    run_presence_cases(&cluster, 0);
}

#[test]
fn the_presence_cases_with_the_host_clock_300_s_ahead() {
    let Some(cluster) = Cluster::start() else { return };
    run_presence_cases(&cluster, 300_000);
}

/// The active attachment rows of `node` in a store's copy.
fn active_rows(store: &PgStore, node: &str) -> usize {
    store.presence().unwrap().attachments.iter().filter(|a| a.node_id == node && a.state.is_active()).count()
}

/// One number read by SQL.
pub(super) fn sql_count(cluster: &Cluster, schema: &str, query: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute(&format!("SET search_path = \"{schema}\"")).await.unwrap();
        let n: i64 = client.query_one(query, &[]).await.unwrap().get(0);
        drop(client);
        let _ = driver.await;
        n
    })
}

#[test]
fn concurrent_attaches_from_two_hosts_leave_one_active_session() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let a = open(&cluster, &schema, "host-a");
    // An offline memoryctl on host-a: its own pool, no claim.
    let a_offline = open_with(options(&cluster, &schema, "host-a", false));
    let b = open(&cluster, &schema, "host-b");
    own(&cluster, &schema, "host-a", &["boris"]);
    let node = "claude-boris";
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..24 {
            let store: &PgStore = match t % 3 {
                0 => &a,
                1 => &a_offline,
                _ => &b,
            };
            let outcomes = &outcomes;
            s.spawn(move || {
                let r = store.attach(&req(node, &format!("s{t}")), true, &rules(), SystemTime::now(), &none_run);
                let outcome = match r {
                    Ok((attached, _)) => Ok(attached.state),
                    Err(e) => Err(kind::<()>(Err(e))),
                };
                outcomes.lock().unwrap().push((t % 3, outcome));
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let won: Vec<_> = outcomes.iter().filter(|(_, o)| o.is_ok()).collect();
    assert_eq!(won.len(), 1, "exactly one attach wins: {outcomes:?}");
    assert_ne!(won[0].0, 2, "host-b does not own boris");
    for (host, outcome) in &outcomes {
        match (host, outcome) {
            (_, Ok(state)) => assert_eq!(*state, State::Online),
            (2, Err(kind)) => assert_eq!(*kind, ErrorKind::PeerNameTaken),
            (_, Err(kind)) => assert_eq!(*kind, ErrorKind::RuntimenodeAttachConflict, "{outcomes:?}"),
        }
    }
    let stored = "SELECT count(*) FROM runtime_node_attachments WHERE state IN ('registering','online','degraded')";
    assert_eq!(sql_count(&cluster, &schema, stored), 1);
    assert_eq!(sql_count(&cluster, &schema, "SELECT count(*) FROM events WHERE event = 'runtime_node.online'"), 1);
    let refusal = b.attach(&req(node, "s-b"), true, &rules(), SystemTime::now(), &none_run).unwrap_err();
    assert!(refusal.to_string().contains("belongs to host host-a"), "{refusal}");
    // Every host's copy follows the attach through the notifications.
    for store in [&a, &a_offline, &b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while active_rows(store, node) != 1 {
            assert!(Instant::now() < deadline, "{} never saw the attach", store.host_id());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_database_stopped_and_started_again() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let store = open(&cluster, &schema, "host-a");
    own(&cluster, &schema, "host-a", &["boris"]);
    let node = "claude-boris";
    store.attach(&req(node, "s1"), true, &rules(), SystemTime::now(), &none_run).unwrap();
    // The test server commits without waiting for its WAL: written down
    // first, or the immediate stop loses the attach.
    cluster.psql("memoryd_test", "CHECKPOINT");
    cluster.stop();
    let call_timeout = PostgresConfig::default().call_timeout;
    let started = Instant::now();
    let r = store.attach(&req("claude-ada", "s2"), true, &rules(), SystemTime::now(), &none_run);
    assert_eq!(kind(r), ErrorKind::StoreUnavailable);
    assert!(started.elapsed() < call_timeout + Duration::from_millis(300), "{:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(store.state(), StoreState::Down { .. }) {
        assert!(Instant::now() < deadline, "never down: {:?}", store.state());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Down: refused at once, beats for a cached session kept in memory.
    let started = Instant::now();
    assert_eq!(kind(store.detach(node, None, SystemTime::now())), ErrorKind::StoreUnavailable);
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
    assert!(store.heartbeat(node, Some("s1"), Health::Online, SystemTime::now()).unwrap().is_empty());
    assert_eq!(store.roster(None).unwrap()[0].node_id, node, "the roster is served from the copy");
    cluster.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(store.state(), StoreState::Up { .. }) {
        assert!(Instant::now() < deadline, "never up again: {:?}", store.state());
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("up again after {:?}", started.elapsed());
    let beat = SystemTime::now();
    assert!(store.heartbeat(node, Some("s1"), Health::Online, beat).unwrap().is_empty());
    assert!(store.sweep(&rules(), SystemTime::now(), &none_run).unwrap().is_empty(), "the kept beat is flushed");
    let stored = "SELECT (extract(epoch FROM last_heartbeat_at) * 1000)::int8 FROM runtime_node_attachments";
    let beat_ms = beat.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(sql_count(&cluster, &schema, stored), i64::try_from(beat_ms).unwrap());
    store.detach(node, Some("s1"), SystemTime::now()).unwrap();
}

#[test]
fn a_host_id_held_by_a_live_boot_is_refused() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let first = open(&cluster, &schema, "host-a");
    let second = PgStore::open(options(&cluster, &schema, "host-a", true)).unwrap();
    let state = second.wait_connected(Duration::from_secs(15));
    assert!(matches!(&state, StoreState::Down { error, .. } if error.contains("host-a")), "{state:?}");
    let r = second.attach(&req("claude-boris", "s1"), true, &rules(), SystemTime::now(), &none_run);
    assert_eq!(kind(r), ErrorKind::StoreHostTaken);
    // A clean stop clears the claim: the next start is not refused.
    drop(second);
    drop(first);
    let _again = open(&cluster, &schema, "host-a");
}

#[test]
fn a_host_clock_300_s_ahead_ages_sessions_like_the_others() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let ahead = open_with(Options { clock_offset_ms: 300_000, ..options(&cluster, &schema, "host-a", true) });
    let on_time = open(&cluster, &schema, "host-b");
    let skew = ahead.clock_skew_ms();
    assert!((299_000..301_000).contains(&skew), "{skew}");
    assert_eq!(on_time.clock_skew_ms(), 0);
    own(&cluster, &schema, "host-a", &["boris"]);
    let node = "claude-boris";
    let now = SystemTime::now();
    ahead.attach(&req(node, "s1"), true, &rules(), now + Duration::from_secs(300), &none_run).unwrap();
    // host-b's sweep 20 s later: fresh; 31 s later: degraded.
    assert!(on_time.sweep(&rules(), now + Duration::from_secs(20), &none_run).unwrap().is_empty());
    let events = on_time.sweep(&rules(), now + Duration::from_secs(31), &none_run).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    // Each host reads the stored times in its own clock.
    let seen = |store: &PgStore| store.presence().unwrap().active(node).unwrap().last_heartbeat_at;
    let a_seen = seen(&ahead);
    let b_seen = seen(&on_time);
    let diff = a_seen.duration_since(b_seen).unwrap();
    assert!(diff.abs_diff(Duration::from_secs(300)) < Duration::from_secs(1), "{diff:?}");
}

#[test]
fn a_live_session_the_fleet_ended_during_an_outage_is_attached_again() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let a = open(&cluster, &schema, "host-a");
    let b = open(&cluster, &schema, "host-b");
    own(&cluster, &schema, "host-a", &["boris"]);
    let node = "claude-boris";
    let alive = |pid: i32| (pid == 100).then(|| "a".to_owned());
    let now = SystemTime::now();
    let mut params = req(node, "s1");
    params.pid = Some(100);
    a.attach(&params, true, &rules(), now, &alive).unwrap();
    let StoreState::Up { since: up_since } = a.state() else { panic!("{:?}", a.state()) };
    // host-a's connections are cut; it reconnects by itself.
    cluster.psql(
        "memoryd_test",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'memoryd/host-a'",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(a.state(), StoreState::Up { since } if since != up_since) {
        assert!(Instant::now() < deadline, "host-a never came back: {:?}", a.state());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Meanwhile host-b ended the silent session (it never probes host-a's pids).
    let ended = b.sweep(&rules(), now + Duration::from_secs(61), &alive).unwrap();
    assert_eq!(ended.len(), 1, "{ended:?}");
    // host-a's next sweep finds its process alive: attached again.
    let events = a.sweep(&rules(), now + Duration::from_secs(62), &alive).unwrap();
    assert!(events.iter().any(|e| e.new_state() == Some(State::Online)), "{events:?}");
    let active = a.presence().unwrap().active(node).cloned().unwrap();
    assert_eq!((active.session_id.as_str(), active.state), ("s1", State::Online));
    // Once: the next sweep has nothing to do.
    assert!(a.sweep(&rules(), now + Duration::from_secs(63), &alive).unwrap().is_empty());
}

#[test]
fn a_mass_demotion_is_one_sweep() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let a = open(&cluster, &schema, "host-a");
    let b = open(&cluster, &schema, "host-b");
    let n = 200;
    cluster.psql(
        "memoryd_test",
        &format!(
            "INSERT INTO \"{schema}\".peers (personality, host_id, runtimes)
             SELECT 'p' || i, 'host-a', '{{claude}}' FROM generate_series(1, {n}) i"
        ),
    );
    let now = SystemTime::now();
    for i in 1..=n {
        a.attach(&req(&format!("claude-p{i}"), "s1"), true, &rules(), now, &none_run).unwrap();
    }
    let mut hints = b.hints();
    let started = Instant::now();
    let degraded = b.sweep(&rules(), now + Duration::from_secs(31), &none_run).unwrap();
    let took = started.elapsed();
    eprintln!("{n} nodes demoted in {took:?}");
    assert_eq!(degraded.len(), n);
    assert!(degraded.iter().all(|e| e.new_state() == Some(State::Degraded)));
    let offline = b.sweep(&rules(), now + Duration::from_secs(61), &none_run).unwrap();
    assert_eq!(offline.len(), n);
    let one_event_each = "SELECT count(*) FROM events WHERE event = 'runtime_node.offline'";
    assert_eq!(sql_count(&cluster, &schema, one_event_each), i64::try_from(n).unwrap());
    // One roster hint per mass move, not one per node.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rosters = 0;
    while rosters < 2 {
        assert!(Instant::now() < deadline, "only {rosters} roster hints");
        match hints.try_recv() {
            Ok(crate::Hint::Roster) => rosters += 1,
            // (Late hints of the attaches may still arrive.)
            Ok(crate::Hint::Presence { node, state, .. }) if state != "online" => panic!("a hint for {node} alone"),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(a.roster(None).unwrap().iter().all(|r| r.state == State::Offline));
}

#[test]
fn soft_beats_are_kept_in_memory_while_the_copy_is_current() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let a = open(&cluster, &schema, "host-a");
    let b = open(&cluster, &schema, "host-b");
    own(&cluster, &schema, "host-a", &["boris"]);
    let node = "claude-boris";
    let now = SystemTime::now();
    let minute = Duration::from_secs(60);
    a.attach(&req(node, "s1"), true, &rules(), now, &none_run).unwrap();
    assert!(a.soft_heartbeat(node, Some("s1"), Health::Online, now, minute));
    assert!(a.soft_heartbeat(node, None, Health::Online, now, minute));
    // Refusals and state moves take the full path.
    assert!(!a.soft_heartbeat(node, Some("s0"), Health::Online, now, minute));
    assert!(!a.soft_heartbeat(node, None, Health::Degraded, now, minute));
    assert!(!a.soft_heartbeat("claude-ada", None, Health::Online, now, minute));
    // Another host ends the session: once its notification arrives the
    // beat is no longer kept in memory, and the full path refuses it.
    b.detach(node, Some("s1"), now).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.soft_heartbeat(node, Some("s1"), Health::Online, now, minute) {
        assert!(Instant::now() < deadline, "host-a never heard of the detach");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(kind(a.heartbeat(node, Some("s1"), Health::Online, now)), ErrorKind::RuntimenodeNotAttached);
}

#[test]
fn a_schema_changed_by_another_build_is_incompatible() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    drop(open(&cluster, &schema, "host-a"));
    cluster.psql("memoryd_test", &format!("UPDATE \"{schema}\".schema_migrations SET checksum = 'other'"));
    let store = PgStore::open(options(&cluster, &schema, "host-b", true)).unwrap();
    let state = store.wait_connected(Duration::from_secs(15));
    assert!(matches!(&state, StoreState::Incompatible { reason } if reason.contains("does not match")), "{state:?}");
    let r = store.attach(&req("claude-boris", "s1"), true, &rules(), SystemTime::now(), &none_run);
    assert_eq!(kind(r), ErrorKind::StoreIncompatible);
}

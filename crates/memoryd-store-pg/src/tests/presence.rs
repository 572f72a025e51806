//! Presence on a real server: the domain suite's presence cases, several
//! hosts on one schema, the database going away and coming back, a taken
//! host id and a host whose clock is off.

use crate::testkit::Cluster;
use crate::{Options, PgStore, Seed, StoreState};
use memoryd_core::config::PostgresConfig;
use memoryd_core::presence::{AttachParams, Health, Rules, State};
use memoryd_core::store::{StateStore, StoreError, suite};
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

//! Several hosts on one fleet database (spec 80), end to end: real daemons
//! as hosts (separate roots, distinct host ids, one schema, disjoint
//! personalities, short presence settings) on a throwaway PostgreSQL
//! cluster. Without a PostgreSQL server the tests skip, saying so
//! (`MEMORYD_PG_REQUIRED=1`, set by CI, makes that a failure).
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::fleet::{FleetHost, HostConfig, check_invariants};
use memoryd_e2e::*;
use memoryd_store_pg::testkit::Cluster;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The fleet's presence settings are seeded from the first host's config:
/// degraded at 2 s, offline at 4 s; each host sweeps every 500 ms.
const FAST: HostConfig = HostConfig {
    presence: "degraded_after = \"2s\"\noffline_after = \"4s\"\nsweep_every = \"500ms\"",
    postgres: "connect_timeout = \"1s\"",
    mcp_port: 0,
};

/// One host of the fleet and its daemon, when started.
struct Host {
    fleet: FleetHost,
    daemon: Option<Daemon>,
}

impl std::ops::Deref for Host {
    type Target = FleetHost;

    fn deref(&self) -> &FleetHost {
        &self.fleet
    }
}

impl Host {
    /// A host `id` with peers `names` on the fleet database at `url`,
    /// schema `schema`, its first peer provisioned (shims and surfaces).
    fn new(url: &str, schema: &str, id: &str, names: &[&str]) -> Host {
        let fleet = FleetHost::new(url, schema, id, names, &FAST);
        let cwd = fleet.dirs[0].to_str().unwrap();
        let out = fleet.root.ctl(&["provision-peer", "--cwd", cwd, "--runtime", "claude", "--personality", names[0]]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        Host { fleet, daemon: None }
    }

    fn start(&mut self) {
        self.start_with(|_| {});
    }

    fn start_with(&mut self, setup: impl FnOnce(&mut Command)) {
        self.daemon = Some(self.fleet.spawn(setup));
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let out = self.root.ctl(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}{}", stdout(&out), stderr(&out)))
    }

    fn store_state(&self) -> String {
        self.status()["store"]["state"].as_str().unwrap_or("").to_owned()
    }

    /// Waits until this host's store is `up`.
    fn wait_up(&self) {
        assert!(
            eventually_within(Duration::from_secs(20), || self.store_state() == "up"),
            "the store never came up: {}\n{}",
            self.status(),
            self.log()
        );
    }

    /// Runs this host's `hook` shim for its first peer, as Claude would;
    /// its stdout (the shim must exit 0).
    fn hook(&self, event: &str, session: &str) -> (String, Duration) {
        let started = Instant::now();
        let mut child = self
            .root
            .command(Path::new("/bin/sh"))
            .arg(self.shim(event))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(self.hook_input(0, session).as_bytes()).unwrap();
        let out = wait_within(&mut child, CHILD_LIMIT);
        assert_eq!(out.status.code(), Some(0), "a hook always exits 0: {}", stderr(&out));
        (stdout(&out), started.elapsed())
    }

    fn roster_row(&self, node: &str) -> Option<Value> {
        let out = self.root.ctl(&["peers", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["nodes"].as_array()?.iter().find(|r| r["nodeId"] == node).cloned()
    }

    fn visible(&self, personality: &str) -> Vec<String> {
        let out = self.root.ctl(&["peer", "visible", personality, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array().into_iter().flatten().filter_map(|r| r["personality"].as_str().map(str::to_owned)).collect()
    }

    /// The first peer's fragment as this host last rendered it.
    fn fragment(&self) -> String {
        std::fs::read_to_string(self.dirs[0].join(".iapeer/fragments/memoryd.md")).unwrap_or_default()
    }

    fn attach(&self, session: &str) -> std::process::Output {
        let node = format!("claude-{}", self.names[0]);
        self.root.ctl(&["attach", "--node", &node, "--session", session, "--client-version", "1.0"])
    }
}

/// A cluster and a fresh schema, or None (the test skips) without a server.
fn fleet_db() -> Option<(Cluster, String)> {
    let cluster = Cluster::start()?;
    let schema = cluster.fresh_schema();
    Some((cluster, schema))
}

fn error_kind(out: &std::process::Output) -> Option<String> {
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["error"]["kind"].as_str().map(str::to_owned)
}

/// (1) A peer of host A and a peer of host B, linked from host C, see each
/// other; A sends; B's prompt-submit hook prints the message and acks it.
#[test]
fn peers_of_two_hosts_link_from_a_third_see_each_other_and_message() {
    let Some((cluster, schema)) = fleet_db() else { return };
    let url = cluster.url();
    let mut hosts: Vec<Host> = [("host-a", "ada"), ("host-b", "bob"), ("host-c", "cyd")]
        .iter()
        .map(|(id, p)| Host::new(&url, &schema, id, &[p]))
        .collect();
    for host in &mut hosts {
        host.start();
    }
    for host in &hosts {
        host.wait_up();
    }
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    // The registry knows ada and bob once their hosts published.
    let linked =
        eventually_within(Duration::from_secs(10), || c.root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    assert!(linked, "{}\n{}", stderr(&c.root.ctl(&["peer", "link", "ada", "bob"])), c.log());
    assert!(eventually(|| a.visible("ada").contains(&"bob".to_owned())), "{:?}\n{}", a.visible("ada"), a.log());
    assert!(eventually(|| b.visible("bob").contains(&"ada".to_owned())), "{:?}\n{}", b.visible("bob"), b.log());
    // bob's fragment, rendered by host B, lists ada (on host A) once linked.
    assert!(eventually(|| b.fragment().contains("`ada`")), "{}\n{}", b.fragment(), b.log());
    let sent = a.root.ctl(&["peer", "send", "--from", "ada", "bob", "hello from host a"]);
    assert!(sent.status.success(), "{}{}", stderr(&sent), a.log());
    // Host B hears of the send (a notification) and re-renders the count.
    let waits = |text: &str| b.fragment().contains(text);
    assert!(eventually_within(Duration::from_secs(3), || waits("1 message waits")), "{}", b.fragment());
    let (printed, _) = b.hook("prompt-submit", "s1");
    assert!(printed.contains("hello from host a"), "{printed:?}\n{}", b.log());
    assert_eq!(b.hook("prompt-submit", "s1").0, "", "delivered once, then acknowledged");
    assert!(stdout(&b.root.ctl(&["peer", "inbox", "bob"])).contains("no message waits"));
    assert!(eventually_within(Duration::from_secs(3), || waits("None waiting.")), "{}", b.fragment());
    check_invariants(&cluster, &schema);
}

/// (2) Two hosts publishing one personality: the second host's sessions
/// are refused with peer.name_taken, and its verify warns.
#[test]
fn a_personality_published_by_two_hosts_is_the_first_ones() {
    let Some((cluster, schema)) = fleet_db() else { return };
    let url = cluster.url();
    let mut first = Host::new(&url, &schema, "host-a", &["ada"]);
    first.start();
    first.wait_up();
    let attached = first.attach("s1");
    assert!(attached.status.success(), "{}\n{}", stderr(&attached), first.log());
    let mut second = Host::new(&url, &schema, "host-b", &["ada"]);
    second.start();
    second.wait_up();
    let out =
        second.root.ctl(&["--json", "attach", "--node", "claude-ada", "--session", "s2", "--client-version", "1.0"]);
    assert!(!out.status.success());
    assert_eq!(error_kind(&out).as_deref(), Some("peer.name_taken"), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("host-a") || stderr(&out).contains("host-a"), "names the owner");
    let verify: Value = serde_json::from_slice(&second.root.ctl(&["verify", "--json"]).stdout).unwrap();
    let warned =
        verify["checks"].as_array().unwrap().iter().any(|c| {
            c["name"] == "store" && c["status"] == "warn" && c["detail"].as_str().unwrap_or("").contains("ada")
        });
    assert!(warned, "{verify}");
    check_invariants(&cluster, &schema);
}

/// (6) The database down at start: the daemons start and serve, the store
/// shows down, an attach answers store.unavailable at once and hooks exit
/// 0 in time; once the server starts, the store comes up. A restart
/// mid-life: back up, and a change made during the gap reaches the other
/// host after its resync.
#[test]
fn the_database_down_at_start_and_restarted_mid_life() {
    let Some((cluster, schema)) = fleet_db() else { return };
    let url = cluster.url();
    cluster.stop();
    let mut a = Host::new(&url, &schema, "host-a", &["ada"]);
    let mut b = Host::new(&url, &schema, "host-b", &["bob"]);
    a.start();
    b.start();
    let status = a.status();
    assert_eq!(status["store"]["backend"], "postgres", "{status}");
    assert!(eventually(|| ["down", "connecting"].contains(&a.store_state().as_str())), "{}", a.status());
    let asked = Instant::now();
    let out = a.root.ctl(&["--json", "attach", "--node", "claude-ada", "--session", "s1", "--client-version", "1.0"]);
    assert!(!out.status.success());
    assert_eq!(error_kind(&out).as_deref(), Some("store.unavailable"), "{}{}", stdout(&out), stderr(&out));
    assert!(asked.elapsed() < Duration::from_secs(2), "answered at once: {:?}", asked.elapsed());
    let (printed, took) = a.hook("prompt-submit", "s1");
    assert_eq!(printed, "");
    assert!(took < Duration::from_secs(3), "within the hook's budget: {took:?}");
    let (_, took) = a.hook("session-end", "s1");
    assert!(took < Duration::from_secs(2), "{took:?}");

    cluster.start_again();
    a.wait_up();
    b.wait_up();
    assert!(a.attach("s1").status.success(), "{}", a.log());

    cluster.restart();
    a.wait_up();
    let linked =
        eventually_within(Duration::from_secs(10), || a.root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    assert!(linked, "{}", a.log());
    b.wait_up();
    assert!(
        eventually_within(Duration::from_secs(20), || b.visible("bob").contains(&"ada".to_owned())),
        "{:?}\n{}",
        b.visible("bob"),
        b.log()
    );
    check_invariants(&cluster, &schema);
}

/// (8) A host whose clock is 300 s ahead changes no threshold: its
/// session is online at once, degraded after about 2 s and offline after
/// about 4 s, as the other host sees it.
#[test]
fn a_host_clock_300_s_ahead_changes_no_threshold() {
    let Some((cluster, schema)) = fleet_db() else { return };
    let url = cluster.url();
    let mut ahead = Host::new(&url, &schema, "host-a", &["ada"]);
    let mut other = Host::new(&url, &schema, "host-b", &["bob"]);
    ahead.start_with(|c| {
        c.env("MEMORYD_TEST_CLOCK_OFFSET_MS", "300000");
    });
    other.start();
    ahead.wait_up();
    other.wait_up();
    let skew = |host: &Host| host.status()["store"]["clockSkewMs"].as_i64().unwrap();
    assert!((299_000..301_000).contains(&skew(&ahead)), "{}", ahead.status());
    assert!(skew(&other).abs() < 1000, "{}", other.status());
    let verify: Value = serde_json::from_slice(&ahead.root.ctl(&["verify", "--json"]).stdout).unwrap();
    let warned =
        verify["checks"].as_array().unwrap().iter().any(|c| {
            c["name"] == "store" && c["status"] == "warn" && c["detail"].as_str().unwrap_or("").contains("clock")
        });
    assert!(warned, "{verify}");
    let attached = Instant::now();
    let out = ahead.attach("s1");
    assert!(out.status.success(), "{}\n{}", stderr(&out), ahead.log());
    let state = |host: &Host| host.roster_row("claude-ada").map(|r| r["state"].as_str().unwrap_or("").to_owned());
    assert!(
        eventually_within(Duration::from_secs(5), || state(&other).as_deref() == Some("online")),
        "{:?}\n{}",
        other.roster_row("claude-ada"),
        other.log()
    );
    let online_for = attached.elapsed();
    assert!(online_for < Duration::from_millis(1900), "online at once, not aged by 300 s: {online_for:?}");
    assert!(eventually_within(Duration::from_secs(10), || state(&other).as_deref() == Some("degraded")));
    let degraded = attached.elapsed();
    assert!(eventually_within(Duration::from_secs(10), || state(&other).as_deref() == Some("offline")));
    let offline = attached.elapsed();
    assert!(degraded >= Duration::from_millis(1500) && degraded < Duration::from_secs(8), "{degraded:?}");
    assert!(offline >= Duration::from_millis(3500) && offline < Duration::from_secs(12), "{offline:?}");
    assert_eq!(state(&ahead).as_deref(), Some("offline"), "both hosts agree");
    check_invariants(&cluster, &schema);
}

/// The operator's fleet commands need no daemon: hosts, settings shown and
/// changed, a release, a store import's dry run; a database that is down
/// is one sentence naming its URL.
#[test]
fn the_fleet_commands_work_without_a_daemon() {
    let Some((cluster, schema)) = fleet_db() else { return };
    let url = cluster.url();
    let mut a = Host::new(&url, &schema, "host-a", &["ada"]);
    a.start();
    a.wait_up();
    let verify: Value = serde_json::from_slice(&a.root.ctl(&["verify", "--json"]).stdout).unwrap();
    let store = verify["checks"].as_array().unwrap().iter().find(|c| c["name"] == "store").cloned().unwrap();
    assert_eq!(store["status"], "ok", "{verify}");
    assert!(store["detail"].as_str().unwrap().contains("127.0.0.1"), "{store}");
    // Host B has no daemon running: its memoryctl reaches the database itself.
    let b = Host::new(&url, &schema, "host-b", &["bob"]);
    let ok = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = b.root.ctl(&all);
        assert!(out.status.success(), "memoryctl {args:?}: {}{}", stdout(&out), stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let hosts = ok(&["fleet", "hosts"]);
    let host_a = hosts.as_array().unwrap().iter().find(|h| h["host"] == "host-a").cloned();
    let host_a = host_a.unwrap_or_else(|| panic!("{hosts}"));
    assert_eq!((host_a["up"].clone(), host_a["peers"].clone()), (json!(true), json!(["ada"])), "{hosts}");
    assert!(stdout(&b.root.ctl(&["fleet", "hosts"])).contains("host-a"));
    assert_eq!(ok(&["fleet", "settings"])["degradedAfter"], "2s");
    ok(&["fleet", "settings", "--inbox-capacity", "5"]);
    assert_eq!(ok(&["fleet", "settings"])["inboxCapacity"], 5);
    let import = ok(&["store", "import"]);
    assert_eq!(import["applied"], false, "{import}");
    let usage = b.root.ctl(&["fleet", "migrate"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert_eq!(ok(&["fleet", "release", "ada"])["wasPresent"], true);
    drop(a);
    cluster.stop();
    let down = b.root.ctl(&["fleet", "hosts"]);
    assert!(!down.status.success());
    let said = stderr(&down);
    assert!(said.contains("fleet database") && said.contains("127.0.0.1"), "{said}");
}

/// A host's own peers are in the registry as soon as its store is up:
/// a link made at once does not miss them (the map is published before
/// the registry is read, whatever the order of the reconnect's tasks).
#[test]
fn a_link_made_as_the_store_comes_up_finds_the_hosts_own_peers() {
    let Some((cluster, schema)) = fleet_db() else { return };
    let url = cluster.url();
    let mut old = Host::new(&url, &schema, "host-old", &["ada"]);
    let mut new = Host::new(&url, &schema, "host-new", &["bob"]);
    old.start();
    old.wait_up();
    new.start();
    new.wait_up();
    let out = new.root.ctl(&["peer", "link", "ada", "bob"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), new.log());
    // The other host's copy of the registry follows the notification; the
    // send is checked in its own transaction either way.
    let sent = old.root.ctl(&["peer", "send", "--from", "ada", "bob", "right away"]);
    assert!(sent.status.success(), "{}\n{}", stderr(&sent), old.log());
}

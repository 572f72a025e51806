//! Several hosts on one PostgreSQL database (spec 80), under crashes and
//! upgrades: a daemon killed inside the transaction of each kind of change
//! (scenario 4), killed at random while clients work across two hosts (the
//! crash loop), and a rolling upgrade with an expand and a contract step
//! (scenario 7). After each, the invariants of scenario 5 hold.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::fleet::{FleetHost, HostConfig, check_invariants};
use memoryd_e2e::*;
use memoryd_store_pg::testkit::{Cluster, Proxy, event_count, mailbox_ids};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn host(cluster: &Cluster, schema: &str, host_id: &str, names: &[&str]) -> FleetHost {
    // A generous call deadline: two cores run several test processes.
    host_at(&cluster.url(), schema, host_id, names, "3s", 0)
}

/// A host reaching the server at `url` (through a proxy, say). The first
/// host started seeds the fleet's settings: sessions degrade after 2 s of
/// silence and go offline after 4 s; limits that the crash loop's traffic
/// never reaches. `mcp_port` 0: no MCP endpoint.
fn host_at(url: &str, schema: &str, host_id: &str, names: &[&str], call_timeout: &str, mcp_port: u16) -> FleetHost {
    let presence = "inbox_capacity = 100000\npeer_send_rate = 100000\nhistory_max = 100000\nsweep_every = \"500ms\"\n\
                    degraded_after = \"2s\"\noffline_after = \"4s\"";
    let postgres = format!("call_timeout = {call_timeout:?}");
    FleetHost::new(url, schema, host_id, names, &HostConfig { presence, postgres: &postgres, mcp_port })
}

fn attach(session: &str, node: &str) -> Value {
    json!({"sessionId": session, "nodeId": node, "clientVersion": "1.0"})
}

/// Waits for the daemon's log to say it paused inside a transaction.
fn paused(daemon: &Daemon) -> bool {
    eventually_within(Duration::from_secs(10), || daemon.log().contains("paused inside the transaction"))
}

#[test]
fn a_daemon_killed_inside_each_kind_of_transaction_leaves_no_partial_change_and_no_lock() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let a = host(&cluster, &schema, "host-a", &["ada", "amy"]);
    let b = host(&cluster, &schema, "host-b", &["bob"]);
    let mut b_daemon = Some(b.start(&[]));
    {
        let _a = a.start(&[]);
        assert_eq!(a.request("peer.link", json!({"a": "ada", "b": "bob"}))["result"]["linked"], true, "seed link");
        let sent = a.request("peer.send", json!({"from": "ada", "to": "bob", "message": "before"}));
        assert_eq!(sent["result"]["queued"], true, "{sent}");
    }
    // Each op runs on a daemon paused inside its transaction (B's for the
    // ack: bob is B's peer and reads his inbox there), from a thread whose
    // answer never comes; the daemon is killed there.
    let ops = ["attach", "link", "send", "ack", "flush"];
    for op in ops {
        let on = if op == "ack" { &b } else { &a };
        if op == "ack" {
            drop(b_daemon.take());
        }
        let mut daemon = on.start(&[("MEMORYD_TEST_PAUSE_IN_TX", op)]);
        let (method, params) = match op {
            "attach" => ("runtimenode.attach", attach("s-paused", "claude-ada")),
            "link" => ("peer.link", json!({"a": "amy", "b": "bob"})),
            "send" => ("peer.send", json!({"from": "ada", "to": "bob", "message": "paused"})),
            "ack" => {
                let leased = b.request("peer.inbox", json!({"personality": "bob", "lease": true}));
                let ids: Vec<Value> = leased["result"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
                assert!(!ids.is_empty(), "{leased}");
                ("peer.ack", json!({"personality": "bob", "ids": ids}))
            }
            // The flush is the sweep's: an attached session's kept beats.
            _ => ("runtimenode.attach", attach("s-flush", "claude-amy")),
        };
        let socket = on.root.socket();
        std::thread::spawn(move || {
            if let Ok(mut conn) = Conn::open(&socket) {
                conn.hello();
                conn.request(method, params);
                if method == "runtimenode.attach" {
                    conn.request("runtimenode.heartbeat", json!({"nodeId": "claude-amy", "sessionId": "s-flush"}));
                }
            }
        });
        assert!(paused(&daemon), "{op}: the daemon never paused inside its transaction:\n{}", daemon.log());
        daemon.signal(Signal::SIGKILL);
        daemon.wait_exit(Duration::from_secs(5));
        // Nothing of the change is visible, and nothing it locked stays
        // locked: the same change by a fresh daemon goes through at once.
        let fresh = on.start(&[]);
        let took = Instant::now();
        match op {
            "attach" => {
                let roster = a.request("runtimenode.roster", json!({}));
                assert!(
                    !roster.to_string().contains("s-paused"),
                    "attach: the killed transaction's session is visible: {roster}"
                );
                let r = a.request("runtimenode.attach", attach("s-after", "claude-ada"));
                assert!(r.get("result").is_some(), "attach after the kill: {r}");
            }
            "link" => {
                let v = b.request("peer.visible", json!({"personality": "bob"}));
                assert!(!v.to_string().contains("\"amy\""), "link: the killed link is visible: {v}");
                let r = a.request("peer.link", json!({"a": "amy", "b": "bob"}));
                assert_eq!(r["result"]["linked"], true, "{r}");
            }
            "send" => {
                let inbox = b.request("peer.inbox", json!({"personality": "bob"}));
                assert!(!inbox.to_string().contains("\"paused\""), "send: the killed send is visible: {inbox}");
                let r = a.request("peer.send", json!({"from": "ada", "to": "bob", "message": "after"}));
                assert_eq!(r["result"]["queued"], true, "{r}");
            }
            "ack" => {
                // The lease lapses (30 s) but the message is still waiting,
                // never delivered: the ack did not commit.
                let outbox = a.request("peer.outbox", json!({"personality": "ada"}));
                assert!(!outbox.to_string().contains("delivered"), "ack: the killed ack is visible: {outbox}");
            }
            _ => {
                let r = a.request("runtimenode.heartbeat", json!({"nodeId": "claude-amy"}));
                assert!(r.get("result").is_some() || r.get("error").is_some(), "{r}");
            }
        }
        assert!(
            took.elapsed() < Duration::from_secs(3),
            "{op}: a lock outlived the killed daemon ({:?})",
            took.elapsed()
        );
        check_invariants(&cluster, &schema);
        if op == "ack" {
            b_daemon = Some(fresh);
        }
    }
}

#[test]
fn sigkill_at_random_while_two_hosts_link_send_lease_and_ack_loses_and_tears_nothing() {
    let Some(cluster) = Cluster::start() else { return };
    let iterations: usize = std::env::var("MEMORYD_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let schema = cluster.fresh_schema();
    let a = host(&cluster, &schema, "host-a", &["ada", "amy"]);
    let b = host(&cluster, &schema, "host-b", &["bob", "bea"]);
    let names = ["ada", "amy", "bob", "bea"];
    let _b_daemon = b.start(&[]);
    let mut rng = Rng::seeded();
    let seed = rng.0;
    // Every send a reply confirmed: (recipient, id).
    let mut acked: Vec<(String, String)> = Vec::new();
    for iteration in 0..iterations {
        let mut daemon = a.start(&[]);
        let stop = AtomicBool::new(false);
        let worker_seed = rng.next(u64::MAX) | 1;
        let new = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut rng = Rng(worker_seed);
                let mut acks = Vec::new();
                let (Ok(mut on_a), Ok(mut on_b)) = (Conn::open(&a.root.socket()), Conn::open(&b.root.socket())) else {
                    return acks;
                };
                on_a.hello();
                on_b.hello();
                let session = format!("s{iteration}");
                while !stop.load(Ordering::Relaxed) {
                    let (x, y) = (names[rng.next(4) as usize], names[rng.next(4) as usize]);
                    let reply = match rng.next(5) {
                        0 => on_a.request("peer.link", json!({"a": x, "b": y})),
                        1 => on_a.request("peer.unlink", json!({"a": x, "b": y})),
                        2 => {
                            let text = format!("i{iteration}-{}", rng.next(1 << 40));
                            let r = on_a.request("peer.send", json!({"from": x, "to": y, "message": text}));
                            if let Some(id) = r["result"]["id"].as_str() {
                                acks.push((y.to_owned(), id.to_owned()));
                            }
                            r
                        }
                        3 => on_a.request(
                            "runtimenode.attach",
                            attach(&session, &format!("claude-{}", names[rng.next(2) as usize])),
                        ),
                        _ => {
                            // B's peers read their inboxes on B.
                            let p = names[2 + rng.next(2) as usize];
                            let r = on_b.request("peer.inbox", json!({"personality": p, "lease": true}));
                            let ids: Vec<Value> =
                                r["result"].as_array().into_iter().flatten().map(|m| m["id"].clone()).collect();
                            if !ids.is_empty() {
                                on_b.request("peer.ack", json!({"personality": p, "ids": ids}));
                            }
                            r
                        }
                    };
                    if reply.is_null() {
                        break; // host A died
                    }
                }
                acks
            });
            std::thread::sleep(Duration::from_millis(50 + rng.next(400)));
            daemon.signal(Signal::SIGKILL);
            daemon.wait_exit(Duration::from_secs(5));
            stop.store(true, Ordering::Relaxed);
            worker.join().unwrap()
        });
        acked.extend(new);
        check_invariants(&cluster, &schema);
    }
    assert!(!acked.is_empty(), "the crash loop sent nothing (seed {seed})");
    // Every acknowledged send is waiting, delivered or dropped in its
    // recipient's mailbox.
    for p in names {
        let held: Vec<String> = mailbox_ids(&cluster.url(), &schema, p)
            .into_iter()
            .filter(|(b, _)| b == "waiting" || b == "received" || b == "dropped")
            .map(|(_, id)| id)
            .collect();
        for (_, id) in acked.iter().filter(|(to, _)| to == p) {
            assert!(held.contains(id), "seed {seed}: acknowledged message {id} to {p} was lost");
        }
    }
}

#[test]
fn a_rolling_upgrade_expands_while_old_hosts_run_and_contracts_once_they_are_gone() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let old = host(&cluster, &schema, "host-old", &["ada"]);
    let new = host(&cluster, &schema, "host-new", &["bob"]);
    let extra = [("MEMORYD_TEST_EXTRA_MIGRATIONS", "1")];
    let mut old_daemon = old.start(&[]);
    let _new_daemon = new.start(&extra);
    // Both work on the expanded schema, across hosts.
    let linked = new.request("peer.link", json!({"a": "ada", "b": "bob"}));
    let hosts = new.root.ctl(&["fleet", "hosts", "--json"]);
    assert_eq!(
        linked["result"]["linked"],
        true,
        "{linked}\n{}{}\n{}\n{}",
        stdout(&hosts),
        stderr(&hosts),
        new.request("peer.visible", json!({"personality": "bob"})),
        old.request("peer.visible", json!({"personality": "ada"}))
    );
    let sent = old.request("peer.send", json!({"from": "ada", "to": "bob", "message": "from the old host"}));
    assert_eq!(sent["result"]["queued"], true, "{sent}");
    let status = new.request("host.status", json!({}));
    assert_eq!(status["result"]["store"]["schema"], 2, "{status}");
    // The contract step is refused while the old host runs, naming it.
    let contract = |root: &Root| {
        output_within(
            root.command(&bins().memoryctl)
                .env("MEMORYD_TEST_EXTRA_MIGRATIONS", "1")
                .arg("--root")
                .arg(&root.paths.root)
                .args(["fleet", "migrate", "--contract"]),
            Duration::from_secs(30),
        )
    };
    let refused = contract(&new.root);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("host-old"), "the refusal names the old host: {}", stderr(&refused));
    // Once the old host is gone (a clean stop), it is applied.
    old_daemon.signal(Signal::SIGTERM);
    old_daemon.wait_exit(Duration::from_secs(20));
    let applied = contract(&new.root);
    assert!(applied.status.success(), "{}{}", stdout(&applied), stderr(&applied));
    // The old binary no longer uses the store: `incompatible`, and it
    // still serves what is per host.
    let mut back = old.root.spawn_daemon();
    back.wait_ready(&old.root);
    let incompatible = eventually_within(Duration::from_secs(20), || {
        old.request("host.status", json!({}))["result"]["store"]["state"] == "incompatible"
    });
    assert!(incompatible, "{}", back.log());
    check_invariants(&cluster, &schema);
}

/// What these tests do with a host: start its daemon, run its agents'
/// hooks, read its roster.
trait Host {
    fn start(&self, env: &[(&str, &str)]) -> Daemon;
    fn hook(&self, event: &str, i: usize, session: &str) -> (Option<i32>, Duration);
    fn state_of(&self, node: &str) -> String;
}

impl Host for FleetHost {
    /// A host's daemon, once its store is up and its map published.
    fn start(&self, env: &[(&str, &str)]) -> Daemon {
        let daemon = self.spawn(|cmd| {
            for (k, v) in env {
                cmd.env(k, v);
            }
        });
        let up = eventually_within(Duration::from_secs(20), || {
            self.request("host.status", json!({}))["result"]["store"]["state"] == "up"
        });
        assert!(up, "the store did not come up:\n{}", daemon.log());
        // Published: the registry has this host's peers.
        for name in &self.names {
            let published = eventually_within(Duration::from_secs(10), || {
                self.request("peer.visible", json!({"personality": name}))["result"].to_string().contains("\"self\"")
            });
            assert!(published, "{name} was not published:\n{}", daemon.log());
        }
        daemon
    }

    /// Runs a hook from an agent process (not a shell, which the hook
    /// would look past) that has exited by the time anyone probes the
    /// recorded pid: a session with no live process. The hook's exit code
    /// and time.
    fn hook(&self, event: &str, i: usize, session: &str) -> (Option<i32>, Duration) {
        let script = "import subprocess, sys\n\
                      sys.exit(subprocess.run(['/bin/sh', sys.argv[1]], input=sys.argv[2].encode(),\n\
                      stdout=subprocess.DEVNULL).returncode)\n";
        let started = Instant::now();
        let mut child = self
            .root
            .command(std::path::Path::new("/usr/bin/env"))
            .args(["python3", "-c", script])
            .arg(self.shim(event))
            .arg(self.hook_input(i, session))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = wait_within(&mut child, CHILD_LIMIT);
        (out.status.code(), started.elapsed())
    }

    /// The state of `node` in this host's roster of the fleet.
    fn state_of(&self, node: &str) -> String {
        let roster = self.request("runtimenode.roster", json!({}));
        roster["result"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["nodeId"] == node)
            .and_then(|r| r["state"].as_str())
            .unwrap_or("none")
            .to_owned()
    }
}

#[test]
fn a_partitioned_host_goes_degraded_then_offline_its_hooks_stay_quick_and_its_live_sessions_come_back() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let proxy = Proxy::start(cluster.port);
    let a = host(&cluster, &schema, "host-a", &["ada"]);
    // The default call deadline, which keeps a hook within its budget.
    let port = free_port();
    let b = host_at(&proxy.url(), &schema, "host-b", &["bob", "bea"], "800ms", port);
    let _a_daemon = a.start(&[]);
    let b_daemon = b.start(&[]);
    // bob's session runs in a live agent; bea's hook ran from a shell that
    // is gone.
    let _agent = fake_agent(&b.root, &b.shim("session-start"), &b.hook_input(0, "s-bob"));
    assert_eq!(b.hook("session-start", 1, "s-bea").0, Some(0));
    let (bob, bea) = ("claude-bob", "claude-bea");
    assert!(
        eventually(|| a.state_of(bob) == "online" && a.state_of(bea) == "online"),
        "host A sees B's sessions online: {} {}\n{}",
        a.state_of(bob),
        a.state_of(bea),
        b_daemon.log()
    );
    assert_eq!(a.request("peer.link", json!({"a": "ada", "b": "bob"}))["result"]["linked"], true);
    let peers_list = || {
        let (error, text) = mcp_tool(port, bob, "peers_list", json!({}));
        assert!(!error, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    assert!(eventually(|| peers_list()["peers"].to_string().contains("\"ada\"")), "{}", peers_list());
    proxy.pause();
    // Throughout the partition, B's hooks fail open within their budgets.
    for _ in 0..3 {
        let (code, took) = b.hook("prompt-submit", 1, "s-bea");
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(2), "prompt-submit took {took:?} during the partition");
        let (code, took) = b.hook("session-end", 1, "s-other");
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(1), "session-end took {took:?} during the partition");
    }
    // A's roster: B's nodes go offline, with one event. They pass through
    // degraded (one event) unless a transaction B had open when the link
    // froze held the node's row past offline_after: A's demotion skips a
    // locked row, and the server ends B's transaction only after
    // idle_in_transaction_session_timeout (10 s), by when the node is past
    // both thresholds and goes offline in one step (spec 80's "a cut holds
    // them until idle_in_transaction_session_timeout").
    for node in [bob, bea] {
        assert!(
            eventually_within(Duration::from_secs(20), || a.state_of(node) == "offline"),
            "{node} never went offline on A: {}",
            a.state_of(node)
        );
        assert_eq!(event_count(&cluster.url(), &schema, "runtime_node.offline", node), 1, "offline events of {node}");
        let degraded = event_count(&cluster.url(), &schema, "runtime_node.degraded", node);
        assert!(degraded <= 1, "{degraded} degraded events of {node}");
    }
    // bob's agent still sees its peers, from what B last read, marked so.
    let stale = peers_list();
    assert_eq!(stale["stale"], true, "{stale}");
    assert!(stale["peers"].to_string().contains("\"ada\""), "{stale}");
    proxy.resume();
    // bob's process lives: back online without a hook. bea's does not: it
    // stays offline until its next hook.
    assert!(
        eventually_within(Duration::from_secs(20), || a.state_of(bob) == "online"),
        "bob did not come back: {}\n{}",
        a.state_of(bob),
        b_daemon.log()
    );
    assert_eq!(a.state_of(bea), "offline");
    assert_eq!(b.hook("prompt-submit", 1, "s-bea").0, Some(0));
    assert!(eventually(|| a.state_of(bea) == "online"), "bea after its hook: {}", a.state_of(bea));
    check_invariants(&cluster, &schema);
}

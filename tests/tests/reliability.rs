//! The reliability and security suite (spec 70): crashes at any point,
//! concurrency storms, a hung daemon, hostile input, other users, a soak.
//! Bounded for CI; the environment variables below run the long versions
//! (docs/reliability.md).
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const FOREIGN_SETTINGS: &str =
    r#"{"model":"opus","hooks":{"SessionStart":[{"hooks":[{"type":"command","command":"mine.sh"}]}]},"env":{"A":"1"}}"#;
const FOREIGN_TOML: &str = "# team\nmodel = \"o4\"\n\n[mcp_servers.github]\ncommand = \"gh\"\n";

/// A peer: its name, folder and runtimes.
type Peer = (String, PathBuf, Vec<&'static str>);

/// `n` peers (alternating claude, codex, both), each with foreign content,
/// listed by a fake iapeer; the config names it.
fn fleet(root: &Root, n: usize, config: &str) -> (FakeIapeer, Vec<Peer>) {
    let iapeer = root.fake_iapeer();
    let peers: Vec<Peer> = (0..n)
        .map(|i| {
            let name = format!("p{i}");
            let dir = root.peer_dir(&name);
            std::fs::create_dir_all(dir.join(".claude")).unwrap();
            std::fs::write(dir.join(".claude/settings.json"), FOREIGN_SETTINGS).unwrap();
            std::fs::create_dir_all(dir.join(".codex")).unwrap();
            std::fs::write(dir.join(".codex/config.toml"), FOREIGN_TOML).unwrap();
            let runtimes = match i % 4 {
                0 | 1 => vec!["claude"],
                2 => vec!["codex"],
                _ => vec!["claude", "codex"],
            };
            (name, dir, runtimes)
        })
        .collect();
    let listing: Vec<(&str, &Path, &[&str])> =
        peers.iter().map(|(n, d, r)| (n.as_str(), d.as_path(), r.as_slice())).collect();
    iapeer.set_listing(&listing);
    root.write_config(&format!("mcp_port = 0\niapeer_bin = \"{}\"\n{config}", iapeer.bin.display()));
    (iapeer, peers)
}

/// Every surface file of every peer parses and keeps its foreign content;
/// returns how many files were checked.
fn check_files(peers: &[Peer]) -> usize {
    let mut checked = 0;
    for (name, dir, _) in peers {
        for rel in [".claude/settings.json", ".mcp.json", ".codex/hooks.json"] {
            let path = dir.join(rel);
            if let Ok(bytes) = std::fs::read(&path) {
                let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {rel} is torn: {e}"));
                if rel == ".claude/settings.json" {
                    assert_eq!(v["model"], "opus", "{name}: foreign key lost");
                    assert_eq!(v["env"]["A"], "1", "{name}: foreign key lost");
                    let start = hook_commands(&path, "SessionStart");
                    assert!(start.contains(&"mine.sh".to_owned()), "{name}: foreign hook lost");
                    assert!(start.iter().filter(|c| c.contains("/memoryd.")).count() <= 1, "{name}: duplicate hook");
                }
                checked += 1;
            }
        }
        let toml = std::fs::read_to_string(dir.join(".codex/config.toml")).unwrap();
        let doc: toml_edit::DocumentMut = toml.parse().unwrap_or_else(|e| panic!("{name}: config.toml is torn: {e}"));
        assert_eq!(doc["mcp_servers"]["github"]["command"].as_str(), Some("gh"), "{name}: foreign table lost");
        assert!(toml.starts_with("# team\nmodel = \"o4\""), "{name}: foreign comment lost");
        checked += 1;
    }
    checked
}

fn lock_is_free(root: &Root) -> bool {
    let Ok(file) = std::fs::File::open(&root.paths.provision_lock) else { return true };
    file.try_lock().is_ok()
}

#[test]
fn sigkill_of_the_daemon_during_sweeps_and_updates_never_tears_a_file() {
    let iterations = env_number("MEMORYD_CRASH_ITERATIONS", 8);
    let root = Root::bare();
    let (_iapeer, peers) = fleet(&root, 12, "sweep_interval = \"30ms\"\n");
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let (mut kills, mut files) = (0, 0);
    for i in 0..iterations {
        let mut daemon = root.spawn_daemon();
        daemon.wait_ready(&root);
        // The restarted daemon and one verify --repair recover from the
        // previous kill.
        let out = root.ctl(&["verify", "--repair"]);
        assert!(out.status.success(), "seed {seed}, after kill {kills}:\n{}{}", stdout(&out), stderr(&out));
        // An update (or a sweep) in flight, then SIGKILL at a random moment.
        let verb = if i % 2 == 0 { vec!["update", "--skip", "memoryd"] } else { vec!["sweep"] };
        let mut client = root
            .command(&bins().memoryctl)
            .arg("--root")
            .arg(&root.paths.root)
            .args(&verb)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.next(150)));
        daemon.signal(Signal::SIGKILL);
        daemon.wait_exit(Duration::from_secs(5));
        kills += 1;
        // The client of a killed daemon ends by itself (its connection
        // breaks); it is only waited on, never relied on.
        wait_within(&mut client, CHILD_LIMIT);
        files += check_files(&peers);
        assert!(lock_is_free(&root), "seed {seed}: the provision lock outlived its holder");
    }
    // A fresh daemon and one verify --repair bring everything back.
    let _daemon = root.start_daemon();
    let out = root.ctl(&["verify", "--repair"]);
    assert!(out.status.success(), "seed {seed}:\n{}{}", stdout(&out), stderr(&out));
    let out = root.ctl(&["verify"]);
    assert!(out.status.success(), "seed {seed}:\n{}", stdout(&out));
    files += check_files(&peers);
    eprintln!("daemon crash test: {kills} SIGKILLs, {files} surface files checked (seed {seed})");
}

#[test]
fn sigkill_of_an_offline_memoryctl_never_tears_a_file_or_keeps_the_lock() {
    let iterations = env_number("MEMORYD_CRASH_ITERATIONS", 8);
    let root = Root::bare();
    let (_iapeer, peers) = fleet(&root, 8, "");
    root.make_state_dir();
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let (mut kills, mut files) = (0, 0);
    for i in 0..iterations {
        let (name, dir, runtimes) = &peers[i as usize % peers.len()];
        let args: Vec<String> = if i % 2 == 0 {
            vec!["update".into(), "--local".into(), "--skip".into(), "memoryd".into()]
        } else {
            let cwd = dir.to_string_lossy().into_owned();
            let runtime = runtimes[0].to_owned();
            ["provision-peer", "--local", "--cwd", &cwd, "--runtime", &runtime, "--personality", name]
                .map(str::to_owned)
                .to_vec()
        };
        let mut child =
            root.command(&bins().memoryctl).arg("--root").arg(&root.paths.root).args(&args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.next(120)));
        let _ = child.kill();
        let _ = child.wait();
        kills += 1;
        files += check_files(&peers);
        assert!(lock_is_free(&root), "seed {seed}: a killed memoryctl left the lock held");
    }
    let out = root.ctl(&["update", "--local", "--skip", "memoryd"]);
    assert!(out.status.success(), "seed {seed}:\n{}", stdout(&out));
    files += check_files(&peers);
    eprintln!("offline crash test: {kills} SIGKILLs, {files} surface files checked (seed {seed})");
}

#[test]
fn a_storm_of_concurrent_verify_update_and_provision_calls_all_answer_and_lose_nothing() {
    let size = env_number("MEMORYD_STORM", 24) as usize;
    let root = Root::bare();
    let (_iapeer, peers) = fleet(&root, 6, "lock_timeout = \"120s\"\nsweep_interval = \"50ms\"\n");
    let _daemon = root.start_daemon();
    let outcomes: Vec<(Vec<String>, std::process::Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|i| {
                let (name, dir, runtimes) = &peers[i % peers.len()];
                let root = &root;
                s.spawn(move || {
                    let cwd = dir.to_string_lossy().into_owned();
                    let args: Vec<String> = match i % 5 {
                        0 => vec!["verify".into(), "--repair".into()],
                        1 => vec!["update".into(), "--skip".into(), "memoryd".into()],
                        2 => ["provision-peer", "--cwd", &cwd, "--runtime", runtimes[0], "--personality", name]
                            .map(str::to_owned)
                            .to_vec(),
                        3 => [
                            "provision-peer",
                            "--local",
                            "--cwd",
                            &cwd,
                            "--runtime",
                            runtimes[0],
                            "--personality",
                            name,
                        ]
                        .map(str::to_owned)
                        .to_vec(),
                        _ => vec!["update".into(), "--local".into(), "--skip".into(), "memoryd".into()],
                    };
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    (args.clone(), root.ctl(&refs))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (args, out) in &outcomes {
        let text = stdout(out);
        // Every call answers; warn rows (untrusted folders) are fine.
        assert!(out.status.success(), "{args:?} failed:\n{text}{}", stderr(out));
    }
    let files = check_files(&peers);
    for (_, dir, runtimes) in &peers {
        for event in ["SessionStart", "UserPromptSubmit", "PostToolUse", "SessionEnd", "Stop"] {
            if runtimes.contains(&"claude") {
                let ours = hook_commands(&dir.join(".claude/settings.json"), event)
                    .iter()
                    .filter(|c| c.contains("/memoryd."))
                    .count();
                assert_eq!(ours, 1, "{} {event}", dir.display());
            }
            if runtimes.contains(&"codex") {
                let ours = hook_commands(&dir.join(".codex/hooks.json"), event)
                    .iter()
                    .filter(|c| c.contains("/memoryd."))
                    .count();
                assert_eq!(ours, 1, "{} {event}", dir.display());
            }
        }
        let toml = std::fs::read_to_string(dir.join(".codex/config.toml")).unwrap();
        assert!(toml.matches("memoryd").count() <= 1, "{toml}");
    }
    eprintln!("storm: {size} concurrent calls, {files} files checked");
}

#[test]
fn a_hung_daemon_is_ended_by_verify_repair_and_its_successor_is_healthy() {
    let root = Root::bare();
    fleet(&root, 3, "heartbeat_interval = \"100ms\"\nheartbeat_stale_after = \"1s\"\n");
    let mut daemon = root.start_daemon();
    assert!(eventually(|| daemon.log().contains("sweep done why=\"start-up\"")));
    daemon.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1300));
    let out = root.ctl(&["verify", "--repair", "--connect-timeout", "300ms"]);
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("repaired memoryd-heartbeat")), "{text}");
    daemon.wait_exit(Duration::from_secs(10));
    let _fresh = root.start_daemon();
    assert!(eventually(|| root.ctl(&["status"]).status.success()), "the relaunched daemon is not healthy");
}

#[test]
fn hostile_clients_get_clear_errors_and_the_daemon_keeps_serving() {
    let root = Root::bare();
    root.write_config("mcp_port = 0\nmax_connections = 32\n");
    let daemon = root.start_daemon();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse::<u64>()
            .unwrap()
    };
    let before = rss();
    // Slow clients that never finish a line, past max_connections.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut conn = Conn::open(&root.socket()).unwrap();
        let _ = conn.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"host.st");
        slow.push(conn);
    }
    // A thousand connect/hang-up cycles, and malformed requests in between.
    for i in 0..1000 {
        let Ok(mut conn) = Conn::open(&root.socket()) else { continue };
        if i % 100 == 0 {
            let _ = conn.send_raw(b"{not json}\n");
        }
    }
    drop(slow);
    // Once the hung-up slots are freed, a new client is served.
    let mut served = None;
    assert!(eventually(|| {
        let Ok(mut conn) = Conn::open(&root.socket()) else { return false };
        let ok = conn.hello()["result"].is_object();
        served = Some(conn);
        ok
    }));
    let mut conn = served.unwrap();
    for (line, kind_wanted) in [
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"no.such\"}\n", "method.unknown"),
        ("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"peer.send\",\"params\":{\"from\":1}}\n", "request.invalid"),
        ("[1,2,3]\n", "request.invalid"),
    ] {
        conn.send_raw(line.as_bytes()).unwrap();
        let reply = conn.read_value();
        assert_eq!(kind(&reply), kind_wanted, "{line}: {reply}");
    }
    assert!(root.ctl(&["status"]).status.success(), "{}", daemon.log());
    let after = rss();
    assert!(after < before + 64 * 1024, "memory grew from {before} kB to {after} kB");
}

#[test]
fn another_user_is_refused_by_the_mcp_endpoint_and_the_canary_home_stays_empty() {
    let root = Root::bare();
    let port = free_port();
    let (_iapeer, peers) = fleet(&root, 2, "");
    let config = std::fs::read_to_string(&root.paths.default_config).unwrap();
    root.write_config(&config.replace("mcp_port = 0", &format!("mcp_port = {port}")));
    let _daemon = root.start_daemon();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
    .to_string();
    if nix::unistd::geteuid().is_root() {
        let script = format!(
            "import urllib.request, urllib.error\n\
             req = urllib.request.Request('http://127.0.0.1:{port}/mcp', data={init:?}.encode(), headers={{\
             'Content-Type': 'application/json', 'Accept': 'application/json, text/event-stream', 'X-IAPeer-Identity': 'claude-p0'}})\n\
             try:\n    print(urllib.request.urlopen(req).status)\n\
             except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n"
        );
        let out = output_within(
            root.command(Path::new("/usr/bin/setpriv")).args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/env",
                "python3",
                "-c",
                &script,
            ]),
            CHILD_LIMIT,
        );
        let text = stdout(&out);
        assert!(text.starts_with("403") && text.contains("another user"), "{text}{}", stderr(&out));
    } else {
        eprintln!("SKIPPED the other-uid half: needs root to run a client as nobody");
    }
    // The owner is served.
    let ok = mcp(port, "claude-p0", "tools/list", json!({}));
    assert!(ok["result"]["tools"].is_array());
    // Everything this suite's commands do leaves the canary home untouched.
    for args in [vec!["update", "--skip", "memoryd"], vec!["verify", "--repair"], vec!["sweep"]] {
        root.ctl(&args);
    }
    let (name, dir, _) = &peers[0];
    let shim = root.paths.hooks_dir.join("memoryd.claude.session-start.sh");
    let mut child = root.command(Path::new("/bin/sh")).arg(shim).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        json!({"session_id": "s", "cwd": dir}).to_string().as_bytes(),
    )
    .unwrap();
    wait_within(&mut child, CHILD_LIMIT);
    for guarded in [".iapeer", ".claude", ".codex", ".claude.json"] {
        assert!(!root.home.join(guarded).exists(), "{name}: something wrote {guarded} under the canary home");
    }
}

#[test]
fn a_soaking_daemon_with_a_thousand_peers_keeps_memory_and_descriptors_flat() {
    let secs = env_number("MEMORYD_SOAK_SECS", 12);
    let root = Root::bare();
    let names: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.peer_dir(n)).collect();
    let peers: Vec<(&str, &Path, &[&str])> =
        names.iter().zip(&dirs).map(|(n, d)| (n.as_str(), d.as_path(), &["claude"][..])).collect();
    root.write_fleet_map(&peers);
    root.write_config("mcp_port = 0\nsweep_interval = \"2s\"\n[presence]\nsweep_every = \"200ms\"\n");
    let daemon = root.start_daemon();
    assert!(
        eventually(|| daemon.log().contains("sweep done why=\"start-up\"")) || {
            // A thousand first-time provisions may take longer than 10 s here.
            std::thread::sleep(Duration::from_secs(20));
            daemon.log().contains("sweep done why=\"start-up\"")
        }
    );
    let sample = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        let rss: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid())).unwrap().count();
        (rss, fds)
    };
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    for name in names.iter().take(100) {
        let r = conn.request(
            "runtimenode.attach",
            json!({"sessionId": "s", "nodeId": format!("claude-{name}"), "clientVersion": "1.0"}),
        );
        assert!(r["result"].is_object(), "{r}");
    }
    // Warm up, then watch.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut beats = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        for name in names.iter().take(100) {
            conn.request("runtimenode.heartbeat", json!({"nodeId": format!("claude-{name}")}));
            beats += 1;
        }
        if started.elapsed() > Duration::from_secs(secs / 3) {
            samples.push(sample());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (first, last) = (samples[0], *samples.last().unwrap());
    let max_rss = samples.iter().map(|s| s.0).max().unwrap();
    assert!(last.1 <= first.1 + 4, "descriptors grew from {} to {}", first.1, last.1);
    assert!(max_rss < first.0 + 32 * 1024, "memory grew from {} kB to {max_rss} kB", first.0);
    assert!(daemon.log().matches("sweep done why=\"timer\"").count() >= 2, "sweeps ran during the soak");
    eprintln!(
        "soak: {secs}s, {beats} heartbeats, rss {} → {} kB (max {max_rss}), fds {} → {}",
        first.0, last.0, first.1, last.1
    );
}

#[test]
fn an_idle_daemon_reads_nothing_not_even_after_reading_its_own_files() {
    let root = Root::bare();
    let dirs: Vec<PathBuf> = ["ada", "bob"].iter().map(|n| root.peer_dir(n)).collect();
    root.write_fleet_map(&[("ada", &dirs[0], &["claude"]), ("bob", &dirs[1], &["codex"])]);
    let vault = root.dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    std::fs::write(vault.join("a.md"), "# A note\nwords\n").unwrap();
    let port = free_port();
    root.write_config(&format!("mcp_port = {port}\nvault = \"{}\"\n", vault.display()));
    let daemon = root.start_daemon();
    assert!(eventually(|| daemon.log().contains("vault indexed")), "{}", daemon.log());
    // Reading the map and a note (as the core and an agent would) is not a change.
    let _ = std::fs::read(root.paths.fleet_map.clone()).unwrap();
    let (failed, text) = mcp_tool(port, "claude-ada", "memory_read", json!({"path": "a.md"}));
    assert!(!failed, "{text}");
    std::thread::sleep(Duration::from_millis(700));
    let reads = || -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", daemon.pid())).unwrap();
        io.lines().find_map(|l| l.strip_prefix("syscr: ")).unwrap().trim().parse().unwrap()
    };
    let before = reads();
    std::thread::sleep(Duration::from_secs(2));
    // A presence sweep or a heartbeat may fall in the window; a watcher
    // woken by its own reads makes hundreds.
    let made = reads() - before;
    assert!(made < 40, "an idle daemon made {made} read calls in 2 s\n{}", daemon.log());
    assert_eq!(daemon.log().matches("vault indexed").count(), 1, "reads are not changes:\n{}", daemon.log());
}

//! Nothing memoryctl does waits for ever: a daemon that answers
//! `session.hello` and then goes silent (stopped, deadlocked, stuck on a
//! disk) costs each command at most its limit, and `daemon stop` still ends
//! it by the verified kill.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A stand-in daemon on the root's socket that answers hello like memoryd
/// (claiming `pid`) and then reads every request without ever answering,
/// holding each connection open.
fn silent_after_hello(root: &Root, pid: u32) {
    let listener = UnixListener::bind(root.socket()).unwrap();
    let hello_root = root.paths.root.display().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let hello_root = hello_root.clone();
            std::thread::spawn(move || answer_hello_then_nothing(stream, pid, &hello_root));
        }
    });
}

fn answer_hello_then_nothing(stream: UnixStream, pid: u32, root: &str) {
    let mut writer = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let Ok(request) = serde_json::from_str::<Value>(&line) else { continue };
        if request["method"] == "session.hello" {
            let result = json!({
                "protocol": memoryd_proto::PROTOCOL_VERSION,
                "version": memoryd_core::VERSION,
                "pid": pid,
                "root": root,
                "supervisor": null,
            });
            let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": result});
            let _ = writer.write_all(format!("{answer}\n").as_bytes());
        }
    }
}

/// A root with one wired peer (boris) whose socket is served by the silent
/// stand-in.
fn silent_root() -> (Root, String) {
    // Built before any clock starts: the limits measured are memoryctl's.
    bins();
    let root = Root::new();
    let fake = root.fake_iapeer();
    let boris = root.peer_dir("boris");
    fake.set_listing(&[("boris", &boris, &["claude"])]);
    root.write_config(&format!("mcp_port = 0\niapeer_bin = \"{}\"\n", fake.bin.display()));
    root.write_fleet_map(&[("boris", &boris, &["claude"])]);
    silent_after_hello(&root, std::process::id());
    (root, boris.display().to_string())
}

#[test]
fn every_command_gives_up_on_a_daemon_that_goes_silent_after_hello() {
    let (root, boris) = silent_root();
    let peer = ["--cwd", &boris, "--runtime", "claude", "--personality", "boris"];
    let node = ["--node", "claude-boris", "--session", "s1"];
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["shutdown"],
        vec!["reload"],
        vec!["update"],
        vec!["sweep"],
        vec!["peers"],
        [&["attach"][..], &node, &["--client-version", "1.0"]].concat(),
        [&["heartbeat"][..], &node].concat(),
        [&["detach"][..], &node].concat(),
        vec!["revoke", "claude-boris"],
        vec!["unrevoke", "claude-boris"],
        vec!["events"],
        vec!["events", "--follow"],
        vec!["peer", "link", "boris", "boris"],
        vec!["peer", "unlink", "boris", "boris"],
        vec!["peer", "visible", "boris"],
        vec!["peer", "send", "--from", "boris", "boris", "hi"],
        vec!["peer", "inbox", "boris"],
    ];
    // All at once: each waits out its own limit.
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = commands
            .iter()
            .map(|args| {
                let root = &root;
                scope.spawn(move || {
                    let started = Instant::now();
                    let out = root.ctl(&[&["--timeout", "1s"][..], args].concat());
                    (args.clone(), out, started.elapsed())
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (args, out, took) in outcomes {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}{err}", stdout(&out));
        assert!(err.contains("sent nothing for 1s"), "{args:?}: {err}");
        assert!(err.contains("daemon stop"), "{args:?} does not say what to do: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one sentence, not {err}");
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
    }
    // The commands with an offline path take it: the answer is still one
    // that was checked.
    let out = root.ctl(&["--timeout", "1s", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("sent nothing for 1s: running locally"), "{}", stderr(&out));
    let socket_row = stdout(&out).lines().find(|l| l.contains("memoryd-socket")).unwrap_or_default().to_owned();
    assert!(socket_row.starts_with("FAIL"), "{}", stdout(&out));
    for verb in ["provision-peer", "unprovision-peer"] {
        let out = root.ctl(&[&["--timeout", "1s", verb][..], &peer].concat());
        assert!(out.status.success(), "{verb}: {}{}", stdout(&out), stderr(&out));
        assert!(stderr(&out).contains("sent nothing for 1s: running locally"), "{verb}: {}", stderr(&out));
    }
    // init and uninstall went on after steps that already ran: the silent
    // daemon is reported and does not undo or hang them.
    let vault = root.dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let out = root.ctl(&["--timeout", "1s", "init", "--vault", vault.to_str().unwrap()]);
    assert!(stderr(&out).contains("the running memoryd did not reload"), "{}{}", stdout(&out), stderr(&out));
    let out = root.ctl(&["--timeout", "1s", "uninstall", "--yes"]);
    assert!(stderr(&out).contains("did not answer shutdown"), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn a_short_request_has_a_deadline_by_default() {
    let (root, _) = silent_root();
    let started = Instant::now();
    let out = root.ctl(&["peers"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("sent nothing for 10s"), "{}", stderr(&out));
    assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(30), "{took:?}");
}

/// A daemon started by `daemon start`, then SIGSTOPped; returns once the
/// stop has landed (state `T` in /proc), so no hello can slip in after.
fn stopped_detached_daemon() -> (Root, i32) {
    let root = Root::new();
    let out = root.ctl(&["daemon", "start"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = std::fs::read_to_string(&root.paths.pid_file).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    };
    assert!(eventually(stopped), "pid {pid} did not stop");
    (root, pid)
}

#[test]
fn daemon_stop_ends_a_daemon_that_goes_silent_after_hello_by_the_verified_kill() {
    let (root, pid) = stopped_detached_daemon();
    // The real daemon keeps its lock and pid file; what answers hello on
    // its socket path then never answers `host.shutdown`.
    std::fs::remove_file(root.socket()).unwrap();
    silent_after_hello(&root, pid as u32);
    let out = root.ctl(&["--timeout", "1s", "daemon", "stop"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains(&format!("memoryd (pid {pid}) did not answer shutdown")), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("memoryd (pid {pid}) did not answer; ended it with SIGTERM")),
        "{}",
        stdout(&out)
    );
    assert!(!memoryd_core::host::instance::lock_is_held(&root.paths.instance_lock).unwrap());
}

#[test]
fn verify_repair_ends_a_daemon_that_goes_silent_mid_request() {
    let (root, pid) = stopped_detached_daemon();
    std::fs::remove_file(root.socket()).unwrap();
    silent_after_hello(&root, pid as u32);
    let out = root.ctl(&["--timeout", "1s", "verify", "--repair"]);
    assert!(
        stderr(&out).contains(&format!("memoryd (pid {pid}) sent nothing for 1s: running locally")),
        "{}",
        stderr(&out)
    );
    let socket_row = stdout(&out).lines().find(|l| l.contains("memoryd-socket")).unwrap_or_default().to_owned();
    assert!(socket_row.starts_with("repaired") && socket_row.contains("ended it with SIGTERM"), "{}", stdout(&out));
    assert!(!memoryd_core::host::instance::lock_is_held(&root.paths.instance_lock).unwrap());
}

#[test]
fn daemon_stop_ends_a_stopped_daemon_by_the_verified_kill() {
    let (root, pid) = stopped_detached_daemon();
    let stop = root.ctl(&["--connect-timeout", "300ms", "daemon", "stop"]);
    assert!(stop.status.success(), "{}{}", stdout(&stop), stderr(&stop));
    assert!(
        stdout(&stop).contains(&format!("memoryd (pid {pid}) did not answer; ended it with SIGTERM")),
        "{}",
        stdout(&stop)
    );
    assert!(!memoryd_core::host::instance::lock_is_held(&root.paths.instance_lock).unwrap());
    root.start_daemon();
}

#[test]
fn a_followed_event_log_stays_open_while_quiet_and_ends_when_the_daemon_hangs() {
    let root = Root::new();
    let daemon = root.start_daemon();
    let mut follower = Reaped(
        root.command(&bins().memoryctl)
            .arg("--root")
            .arg(&root.paths.root)
            .args(["--timeout", "7s", "events", "--follow"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Quiet for longer than the limit: the daemon's beat keeps it open.
    std::thread::sleep(Duration::from_secs(12));
    assert!(follower.try_wait().unwrap().is_none(), "a quiet log ended the follower:\n{}", daemon.log());
    daemon.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let out = wait_within(&mut follower, Duration::from_secs(30));
    daemon.signal(Signal::SIGCONT);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("sent nothing for 7s"), "{}", stderr(&out));
    assert!(stopped.elapsed() < Duration::from_secs(20), "{:?}", stopped.elapsed());
}

#[test]
fn a_sweep_tells_its_client_after_every_batch() {
    let root = Root::new();
    let fake = root.fake_iapeer();
    let peers: Vec<_> = ["ada", "bob", "cyd"].iter().map(|n| (*n, root.peer_dir(n))).collect();
    let listing: Vec<(&str, &std::path::Path, &[&str])> =
        peers.iter().map(|(n, d)| (*n, d.as_path(), &["claude"][..])).collect();
    fake.set_listing(&listing);
    root.write_config(&format!("mcp_port = 0\niapeer_bin = \"{}\"\n", fake.bin.display()));
    root.write_fleet_map(&listing);
    let _daemon = root.start_daemon();
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    conn.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"host.sweep\"}\n").unwrap();
    let mut working = Vec::new();
    loop {
        let v = conn.read_value();
        assert!(!v.is_null(), "the connection closed before the answer");
        if v["id"] == 7 {
            assert_eq!(v["result"]["ok"], true, "{v}");
            break;
        }
        if v["method"] == "host.working" {
            working.push(v["params"].clone());
        }
    }
    assert!(!working.is_empty(), "no batch was reported");
    assert!(working.iter().all(|w| w["what"] == "sweep" && w["total"] == 3), "{working:?}");
    assert_eq!(working.last().unwrap()["done"], 3, "{working:?}");
}

#[test]
fn limits_past_the_clock_s_range_are_waits_without_end_not_panics() {
    let root = Root::new();
    let huge = format!("{}s", u64::MAX);
    let ask = |command: &str| root.ctl(&["--connect-timeout", &huge, "--timeout", &huge, command]);
    // No daemon: the offline answers.
    for command in ["status", "peers"] {
        let out = ask(command);
        assert!(!stderr(&out).contains("panicked"), "{command}: {}", stderr(&out));
        assert!(stderr(&out).contains("memoryd is not running"), "{command}: {}", stderr(&out));
    }
    let _daemon = root.start_daemon();
    for command in ["status", "peers"] {
        let out = ask(command);
        assert!(out.status.success(), "{command}: {}{}", stdout(&out), stderr(&out));
    }
}

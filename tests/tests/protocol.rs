//! The control socket protocol against the real daemon.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::json;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_10_mib_line_gets_request_too_large_and_others_are_served() {
    let root = Root::new();
    let _daemon = root.start_daemon();
    let mut big = Conn::open(&root.socket()).unwrap();
    big.hello();
    let mut writer = big.writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..160 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let answer = big.read_value();
    assert_eq!(kind(&answer), "request.too_large", "{answer}");
    assert_eq!(answer["error"]["code"], -32000);
    assert!(answer["error"]["message"].as_str().unwrap().contains("max_request_bytes"));
    sender.join().unwrap();
    assert!(big.is_closed());
    let mut other = Conn::open(&root.socket()).unwrap();
    assert!(other.hello()["result"]["pid"].is_number());
    assert_eq!(other.request("host.status", json!({}))["result"]["running"], true);
}

#[test]
fn malformed_lines_get_request_invalid_and_the_connection_goes_on() {
    let root = Root::new();
    let _daemon = root.start_daemon();
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.send_raw(b"this is not json\n").unwrap();
    let e = conn.read_value();
    assert_eq!(e["error"]["code"], -32700);
    assert_eq!(kind(&e), "request.invalid");
    assert!(e["error"]["message"].as_str().unwrap().contains("not JSON"));
    conn.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":9}\n").unwrap();
    let e = conn.read_value();
    assert_eq!(e["error"]["code"], -32600);
    assert_eq!(e["id"], 9);
    assert!(e["error"]["message"].as_str().unwrap().contains("`method`"), "{e}");
    // Before hello, nothing but hello.
    let e = conn.request("host.status", json!({}));
    assert_eq!(kind(&e), "request.invalid");
    assert!(e["error"]["message"].as_str().unwrap().contains("session.hello"), "{e}");
    let e = conn.request("session.hello", json!({"protocol": "one", "client": "e2e"}));
    assert_eq!(e["error"]["code"], -32602);
    assert!(e["error"]["message"].as_str().unwrap().contains("`protocol`"), "{e}");
    let hello = conn.hello();
    assert_eq!(hello["result"]["protocol"], 1);
    let e = conn.request("host.nosuch", json!({}));
    assert_eq!(e["error"]["code"], -32601);
    assert_eq!(kind(&e), "method.unknown");
    assert_eq!(conn.request("host.status", json!({}))["result"]["running"], true);
}

#[test]
fn a_protocol_mismatch_says_what_to_upgrade() {
    let root = Root::new();
    let _daemon = root.start_daemon();
    let mut conn = Conn::open(&root.socket()).unwrap();
    let e = conn.request("session.hello", json!({"protocol": 99, "client": "memoryctl 9.0.0"}));
    assert_eq!(kind(&e), "protocol.mismatch");
    assert!(e["error"]["message"].as_str().unwrap().contains("memoryctl update"), "{e}");
    assert_eq!(e["error"]["data"]["details"]["protocol"], 1);
}

#[test]
fn past_max_connections_a_new_client_gets_server_busy() {
    let root = Root::new();
    root.write_config("mcp_port = 0\nmax_connections = 2\n");
    let _daemon = root.start_daemon();
    // The readiness probe's connection may take a moment to be released.
    let mut pair = None;
    let served = eventually(|| {
        let mut a = Conn::open(&root.socket()).unwrap();
        let mut b = Conn::open(&root.socket()).unwrap();
        let both = a.hello()["result"].is_object() && b.hello()["result"].is_object();
        pair = both.then_some((a, b));
        both
    });
    assert!(served, "two clients never got served together");
    let (mut a, b) = pair.unwrap();
    let mut c = Conn::open(&root.socket()).unwrap();
    let busy = c.read_value();
    assert_eq!(kind(&busy), "server.busy", "{busy}");
    assert!(c.is_closed());
    // The others go on.
    assert_eq!(a.request("host.status", json!({}))["result"]["running"], true);
    drop(b);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut d = Conn::open(&root.socket()).unwrap();
    assert!(d.hello()["result"].is_object());
}

#[test]
fn another_uid_is_refused_by_the_peer_credential_check() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to run a client as nobody");
        return;
    }
    let root = Root::new();
    let _daemon = root.start_daemon();
    // Open the modes on purpose, so only the credential check stands.
    for dir in root
        .paths
        .state
        .ancestors()
        .take_while(|d| d.starts_with(root.dir.path().parent().unwrap()) && *d != root.dir.path().parent().unwrap())
    {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(root.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = root.command(std::path::Path::new("/usr/bin/setpriv"));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bins().memoryctl)
        .arg("--root")
        .arg(&root.paths.root)
        .args(["status", "--json"]);
    let out = output_within(&mut cmd, CHILD_LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("memoryd serves only uid 0; this connection comes from uid 65534"),
        "{}",
        stderr(&out)
    );
    // The daemon refused before reading and goes on serving its own user.
    let log = std::fs::read_to_string(&_daemon.log).unwrap();
    assert!(log.contains("refused a connection from another user") && log.contains("uid=65534"), "{log}");
    assert!(root.ctl(&["status"]).status.success());
}

//! The end-to-end harness: real `memoryd` and `memoryctl` binaries, a temp
//! root per test, the sandbox armed, `HOME` pointed at a canary dir.
// Tests build fixtures and drive real processes directly.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use memoryd_core::host::paths::Paths;

pub mod fleet;

/// The freshly built binaries (built once per test process, so a single
/// test never runs a stale binary).
pub struct Bins {
    pub memoryd: PathBuf,
    pub memoryctl: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "memoryd", "-p", "memoryctl"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        // target/<profile>/deps/<test binary> → target/<profile>
        let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
        let bins = Bins { memoryd: dir.join("memoryd"), memoryctl: dir.join("memoryctl") };
        assert!(bins.memoryd.is_file() && bins.memoryctl.is_file(), "binaries missing in {}", dir.display());
        bins
    })
}

/// A temp root for one test.
pub struct Root {
    pub dir: tempfile::TempDir,
    pub paths: Paths,
    pub home: PathBuf,
}

impl Root {
    /// A root whose config turns the MCP endpoint off, so parallel tests
    /// never race for a port (those that want MCP pick a free one).
    pub fn new() -> Root {
        let root = Root::bare();
        root.write_config("mcp_port = 0\n");
        root
    }

    /// A root with no config file.
    pub fn bare() -> Root {
        let dir = tempfile::Builder::new().prefix("md").tempdir().unwrap();
        let paths = Paths::new(dir.path().join("r"));
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Root { dir, paths, home }
    }

    pub fn write_config(&self, text: &str) {
        std::fs::create_dir_all(&self.paths.plugin_dir).unwrap();
        std::fs::write(&self.paths.default_config, text).unwrap();
    }

    pub fn socket(&self) -> PathBuf {
        self.paths.default_socket.clone()
    }

    /// A command with the sandbox armed and nothing of the host's memoryd
    /// environment leaking in.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("MEMORYD_TEST_SANDBOX", "1")
            .env("HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("FORCE_COLOR")
            .env_remove("MEMORYD_ROOT")
            .env_remove("IAPEER_ROOT")
            .env_remove("MEMORYD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("INVOCATION_ID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `memoryctl --root R <args>` to completion (killed, with what
    /// it printed, past [`CHILD_LIMIT`]).
    pub fn ctl(&self, args: &[&str]) -> Output {
        output_within(self.command(&bins().memoryctl).arg("--root").arg(&self.paths.root).args(args), CHILD_LIMIT)
    }

    /// Starts `memoryd --root R` in the foreground, its stderr in a file.
    pub fn spawn_daemon(&self) -> Daemon {
        self.spawn_daemon_with(|_| {})
    }

    pub fn spawn_daemon_with(&self, setup: impl FnOnce(&mut Command)) -> Daemon {
        let log = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        let (log_file, log_path) = log.keep().unwrap();
        let mut cmd = self.command(&bins().memoryd);
        cmd.arg("--root").arg(&self.paths.root).stdout(Stdio::null()).stderr(log_file);
        setup(&mut cmd);
        let child = cmd.spawn().unwrap();
        Daemon { child, log: log_path }
    }

    /// Starts a daemon and waits until it answers `session.hello`.
    pub fn start_daemon(&self) -> Daemon {
        let mut daemon = self.spawn_daemon();
        daemon.wait_ready(self);
        daemon
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

/// A daemon a test started detached (`memoryctl daemon start`) dies with
/// the test's root, whether the test passed or failed: it must not outlive
/// the temp dir it serves. Only a process that holds this root's lock and
/// names this root on its command line is killed.
impl Drop for Root {
    fn drop(&mut self) {
        if !memoryd_core::host::instance::lock_is_held(&self.paths.instance_lock).unwrap_or(false) {
            return;
        }
        let Some(pid) = memoryd_core::host::instance::read_pid(&self.paths.pid_file) else { return };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let root = self.paths.root.as_os_str().as_encoded_bytes();
        if cmdline.split(|b| *b == 0).any(|arg| arg == root) {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// How long a test waits for any child it runs to completion.
pub const CHILD_LIMIT: Duration = Duration::from_secs(90);

/// Runs `cmd` with piped output, as [`wait_within`].
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_within(&mut child, limit)
}

/// Waits for `child` and collects its output; past `limit` it is killed and
/// the test fails showing what it wrote. Output pipes a grandchild still
/// holds open are given up on a moment after the child's exit.
pub fn wait_within(child: &mut Child, limit: Duration) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = tx.send(bytes);
        });
        rx
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let (stdout, stderr) = (collect(out), collect(err));
    let Some(status) = status else {
        panic!(
            "child {} still ran after {limit:?} and was killed\nstdout:\n{}\nstderr:\n{}",
            child.id(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output { status, stdout, stderr }
}

/// A child that is killed when dropped, so a failed test leaves none behind.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Lines of a child's output, each awaited for a bounded time.
pub struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    /// Reads `pipe` on its own thread.
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line; panics naming `what` when none comes within `limit`
    /// or the pipe closed.
    pub fn next_within(&self, limit: Duration, what: &str) -> String {
        self.0.recv_timeout(limit).unwrap_or_else(|e| panic!("no line of {what} within {limit:?}: {e}"))
    }
}

/// A running `memoryd` child; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the socket answers hello (panics with the log if the
    /// daemon exits or 20 s pass).
    pub fn wait_ready(&mut self, root: &Root) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("memoryd exited with {status} before answering:\n{}", self.log());
            }
            if let Ok(mut conn) = Conn::open(&root.socket())
                && conn.hello().get("result").is_some()
            {
                return;
            }
            assert!(Instant::now() < deadline, "memoryd did not answer within 20 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the exit, panicking after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "memoryd did not exit within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw protocol connection, for tests that speak the wire themselves.
pub struct Conn {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
    next_id: u64,
}

impl Conn {
    pub fn open(socket: &Path) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn { reader: BufReader::new(stream.try_clone()?), writer: stream, next_id: 1 })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// The next line as JSON; Null at end of stream.
    pub fn read_value(&mut self) -> Value {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => Value::Null,
            Ok(_) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")),
        }
    }

    /// Whether the daemon closed the connection (EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        // A refused connection may be closed before the request is
        // written; the refusal is still there to be read.
        let _ = self.send_raw(format!("{line}\n").as_bytes());
        loop {
            let v = self.read_value();
            if v.get("id") == Some(&json!(id)) || v.is_null() || v.get("id") == Some(&Value::Null) {
                return v;
            }
        }
    }

    pub fn hello(&mut self) -> Value {
        self.request("session.hello", json!({"protocol": memoryd_proto::PROTOCOL_VERSION, "client": "e2e"}))
    }
}

/// A small deterministic generator (xorshift) for the crash and storm
/// tests: seeded per run, the seed printed with a failure to replay it.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock.
    pub fn seeded() -> Rng {
        Rng(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Waits until `probe` holds, for up to 10 s; false if it never does.
pub fn eventually(probe: impl FnMut() -> bool) -> bool {
    eventually_within(Duration::from_secs(10), probe)
}

/// Waits until `probe` holds, for up to `limit`; false if it never does.
pub fn eventually_within(limit: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `error.data.kind` of a response.
pub fn kind(response: &Value) -> &str {
    response["error"]["data"]["kind"].as_str().unwrap_or("")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A stand-in for the iapeer core: `list --json` prints the listing file,
/// `trust-hooks PATH [--check]` logs its call and says `trusted`.
pub struct FakeIapeer {
    pub bin: PathBuf,
    pub listing: PathBuf,
    /// One line per `trust-hooks` call.
    pub trust_log: PathBuf,
    /// Each `send` call: its arguments, then its stdin.
    pub send_log: PathBuf,
    /// While this file exists, `trust-hooks` refuses (exit 1) and records
    /// nothing.
    pub untrusted: PathBuf,
}

impl FakeIapeer {
    /// Writes what `iapeer list --json` prints: peers as `(name, cwd,
    /// runtimes)`, with a human without a cwd among them.
    pub fn set_listing(&self, peers: &[(&str, &Path, &[&str])]) {
        let mut rows: Vec<Value> = peers
            .iter()
            .map(|(name, cwd, runtimes)| {
                json!({
                    "personality": name, "intelligence": "artificial", "cwd": cwd,
                    "default_runtime": runtimes.first(),
                    "runtimes": runtimes.iter().map(|r| json!({"runtime": r, "status": "asleep"})).collect::<Vec<_>>(),
                })
            })
            .collect();
        rows.push(json!({"personality": "ana", "intelligence": "natural", "cwd": "", "runtimes": []}));
        std::fs::write(&self.listing, serde_json::to_vec(&rows).unwrap()).unwrap();
    }

    pub fn trust_calls(&self) -> usize {
        std::fs::read_to_string(&self.trust_log).map(|t| t.lines().count()).unwrap_or(0)
    }
}

/// The fake core's `trust-hooks <hooks.json>`: records in `~/.codex/config.toml`
/// a `[hooks.state."<key>"]` table with the `trusted_hash` of every hook of
/// the file, as Codex 0.171.0 keys and hashes them and as its own
/// `upsert_hook_trusted_hashes` writes them (other fields of a table stay).
/// Written apart from memoryd's code, in Python, so the end-to-end tests
/// check memoryd's reading against a second implementation.
/// (`scripts/demo.sh` runs the same script for its fake core.)
const FAKE_TRUST_HOOKS: &str = include_str!("../fake_trust_hooks.py");

impl Root {
    /// Installs a fake `iapeer` in the test's temp dir (an empty fleet).
    pub fn fake_iapeer(&self) -> FakeIapeer {
        let dir = self.dir.path().join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        let fake = FakeIapeer {
            bin: dir.join("iapeer"),
            listing: dir.join("listing.json"),
            trust_log: dir.join("trust.log"),
            send_log: dir.join("send.log"),
            untrusted: dir.join("untrusted"),
        };
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n  list) cat '{listing}' ;;\n  \
             trust-hooks) echo \"$*\" >> '{log}'\n    \
             if [ -e '{untrusted}' ]; then echo \"the core refuses to trust $2\" >&2; exit 1; fi\n    \
             python3 - \"$2\" <<'PY'\n{trust}PY\n    ;;\n  \
             send) echo \"$*\" >> '{send}'; cat >> '{send}'; echo >> '{send}' ;;\n  *) exit 2 ;;\nesac\n",
            listing = fake.listing.display(),
            log = fake.trust_log.display(),
            untrusted = fake.untrusted.display(),
            trust = FAKE_TRUST_HOOKS,
            send = fake.send_log.display(),
        );
        std::fs::write(&fake.bin, script).unwrap();
        std::fs::set_permissions(&fake.bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        fake.set_listing(&[]);
        fake
    }

    /// A peer folder in the test's temp dir (inside the sandbox roots).
    pub fn peer_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("peers").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    /// A folder per peer of `names` (claude) and the fleet map listing
    /// them; the folders, in order.
    pub fn claude_fleet(&self, names: &[&str]) -> Vec<PathBuf> {
        let dirs: Vec<PathBuf> = names.iter().map(|n| self.peer_dir(n)).collect();
        let peers: Vec<(&str, &Path, &[&str])> =
            names.iter().zip(&dirs).map(|(n, d)| (*n, d.as_path(), &["claude"][..])).collect();
        self.write_fleet_map(&peers);
        dirs
    }

    /// Creates the state dir `S` as the daemon would (0700).
    pub fn make_state_dir(&self) {
        std::fs::create_dir_all(&self.paths.state).unwrap();
        std::fs::set_permissions(&self.paths.state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }

    /// Writes `S/fleet.json` as the core's refresh would (tmp + rename).
    pub fn write_fleet_map(&self, peers: &[(&str, &Path, &[&str])]) {
        let peers: Vec<Value> = peers
            .iter()
            .map(|(name, cwd, runtimes)| {
                json!({"personality": name, "cwd": cwd, "defaultRuntime": runtimes.first(), "runtimes": runtimes})
            })
            .collect();
        let map = json!({"updatedAt": "2026-11-23T10:00:00Z", "peers": peers});
        self.make_state_dir();
        let tmp = self.paths.state.join(".fleet.json.test.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&map).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.paths.fleet_map).unwrap();
    }
}

/// A root whose fleet has `boris` (claude) wired by provision-peer.
pub fn wired_root(config: &str) -> (Root, PathBuf) {
    let root = Root::bare();
    root.write_config(&format!("mcp_port = 0\n{config}"));
    let boris = root.peer_dir("boris");
    root.write_fleet_map(&[("boris", &boris, &["claude", "codex"])]);
    let out = root.ctl(&[
        "provision-peer",
        "--cwd",
        boris.to_str().unwrap(),
        "--runtime",
        "claude",
        "--personality",
        "boris",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    (root, boris)
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every file and dir under `dir` with its mtime.
pub fn mtimes(dir: &Path) -> std::collections::BTreeMap<PathBuf, std::time::SystemTime> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.insert(entry.path(), meta.modified().unwrap());
        }
    }
    out
}

/// The hook commands of one event in a settings or hooks.json file.
pub fn hook_commands(file: &Path, event: &str) -> Vec<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    v["hooks"][event]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["hooks"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h["command"].as_str().map(str::to_owned))
        .collect()
}

/// An HTTP answer.
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// POSTs `body` to `http://127.0.0.1:<port><path>` (HTTP/1.1, closed after
/// the answer) with these headers added to the defaults.
pub fn http_post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> HttpAnswer {
    http(port, "POST", path, headers, body)
}

pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpAnswer {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    HttpAnswer { status, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// One MCP JSON-RPC call as `identity`, as Claude Code would send it.
pub fn mcp(port: u16, identity: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let answer = http_post(
        port,
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2025-06-18"),
            ("X-IAPeer-Identity", identity),
        ],
        &body,
    );
    assert_eq!(answer.status, 200, "{method} as {identity}: {}", answer.body);
    // A JSON body, or an event stream whose data lines carry it.
    let json = answer.body.lines().find_map(|l| l.strip_prefix("data:")).map_or(answer.body.as_str(), str::trim);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body))
}

/// Calls one MCP tool; (isError, the text of its content).
pub fn mcp_tool(port: u16, identity: &str, tool: &str, arguments: Value) -> (bool, String) {
    let v = mcp(port, identity, "tools/call", json!({"name": tool, "arguments": arguments}));
    let result = &v["result"];
    assert!(result.is_object(), "{tool}: {v}");
    (result["isError"] == true, result["content"][0]["text"].as_str().unwrap_or("").to_owned())
}

/// A fake agent: a non-shell process that runs a session-start `shim`
/// with `input` on stdin the way Claude Code does, then stays alive (its
/// pid is the one the hook records); killed when dropped.
pub fn fake_agent(root: &Root, shim: &Path, input: &str) -> Reaped {
    let script = "import subprocess, sys, time\n\
                  subprocess.run(['/bin/sh', sys.argv[1]], input=sys.argv[2].encode(), stdout=subprocess.DEVNULL)\n\
                  print('hooked', flush=True)\n\
                  time.sleep(300)\n";
    let mut child = Reaped(
        root.command(Path::new("/usr/bin/env"))
            .args(["python3", "-c", script])
            .arg(shim)
            .arg(input)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::new(child.stdout.take().unwrap());
    assert_eq!(lines.next_within(CHILD_LIMIT, "the fake agent"), "hooked");
    child
}

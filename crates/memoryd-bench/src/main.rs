//! memoryd-bench: every figure of spec 70, each next to a floor measured
//! side by side in the same run, written into the tables and charts of
//! BENCHMARKS.md. Run it with `scripts/bench.sh` (release build).
//!
//! Everything happens in a temp dir with the test sandbox armed: synthetic
//! fleets (half claude, a quarter codex, a quarter both; every fifth peer
//! pre-seeded with foreign settings, MCP servers and TOML comments), a fake
//! `iapeer`, and the real `memoryd` / `memoryctl` built next to this binary.
// A harness: it lays out fleets and drives processes directly.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

mod chart;
mod daemon;
mod fleet;
mod hybrid;
mod messages;
mod quality;
mod report;
mod store;

use report::{Report, Stats, ms, per_second, ratio, ratio_of, us};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The fleet sizes of the sweep figures.
const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
/// Repeats of the quick figures; their median is reported.
const REPEATS: usize = 5;

/// One fleet size's sweep figures, for the growth chart.
struct Growth {
    peers: usize,
    pairs: usize,
    first: Duration,
    write_floor: Duration,
    noop: Duration,
    read_floor: Duration,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, flag, dir] if flag == "--quality-tune" => {
            quality::tune(&quality::cranfield(std::path::Path::new(dir))?);
            return Ok(());
        }
        [_, flag, dir, out, rest @ ..] if flag == "--quality-run" => {
            let extra = match rest {
                [flag, config] if flag == "--config" => config.as_str(),
                [] => "",
                _ => anyhow::bail!("usage: memoryd-bench --quality-run COLLECTION_DIR OUT.json [--config TOML_LINES]"),
            };
            sandbox();
            let collection = quality::cranfield(std::path::Path::new(dir))?;
            let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
            let vault = daemon::Vault::Collection(&collection);
            let live =
                daemon::Live::start_with(tmp.path(), 10, Some(vault), extra, &daemon::Bins::next_to_this_binary()?)?;
            let run = live.quality_run(&collection)?;
            std::fs::write(out, serde_json::to_string(&run)?)?;
            let s = quality::Scores::of(&collection, &run);
            eprintln!(
                "memoryd over MCP: nDCG@10 {:.4} R@10 {:.4} R@50 {:.4} MRR {:.4}",
                s.ndcg10, s.recall10, s.recall50, s.mrr
            );
            return Ok(());
        }
        [_, flag, secs] if flag == "--floor-idle" => {
            std::thread::sleep(Duration::from_secs(secs.parse()?));
            return Ok(());
        }
        _ => {}
    }
    let out =
        args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).map_or("BENCHMARKS.md", String::as_str);
    let idle_secs: u64 = std::env::var("MEMORYD_BENCH_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let sizes: Vec<usize> = match std::env::var("MEMORYD_BENCH_MAX_PEERS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(max) => SIZES.iter().copied().filter(|n| *n <= max).collect(),
        None => SIZES.to_vec(),
    };
    sandbox();
    // MEMORYD_BENCH_ONLY: a comma list of parts (sweeps, daemon,
    // heartbeats, search, hybrid, messages, store) for a quick look at some
    // figures.
    // `--store postgres` (spec 80's name for it) is the store part alone.
    let store_only = args.windows(2).any(|w| w[0] == "--store" && w[1] == "postgres");
    let only = if store_only { Some("store".to_owned()) } else { std::env::var("MEMORYD_BENCH_ONLY").ok() };
    let part = |name: &str| only.as_deref().is_none_or(|only| only.split(',').any(|p| p.trim() == name));
    let repeats: usize = std::env::var("MEMORYD_BENCH_REPEATS").ok().and_then(|v| v.parse().ok()).unwrap_or(REPEATS);
    let bins = daemon::Bins::next_to_this_binary()?;
    let mut report = Report::default();
    let started = Instant::now();

    eprintln!("== sweeps");
    let mut growth = Vec::new();
    for &n in sizes.iter().filter(|_| part("sweeps")) {
        let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
        let fleet = fleet::Fleet::generate(tmp.path(), n, &bins)?;
        let first = fleet.sweep()?;
        let write_floor = fleet.write_floor(&tmp.path().join("floor"))?;
        let pairs = fleet.pairs();
        let per_pair = |d: Duration| us(d / pairs as u32);
        // The daemon sweeps every sweep_interval (10 min by default): its
        // no-op sweeps never see files written within the racy window (a
        // small fleet's first provision ends less than that before these
        // sweeps), which are read again until they are older than it.
        std::thread::sleep(Duration::from_nanos(memoryd_core::host::stamp::RACY_WINDOW_NS.unsigned_abs()));
        let noop = Stats::of((0..repeats).map(|_| fleet.sweep().unwrap()).collect());
        let floor = Stats::of((0..repeats).map(|_| fleet.read_surfaces()).collect());
        eprintln!(
            "   {n} peers: first {first:?} (floor {write_floor:?}), no-op {:?} (floor {:?})",
            noop.median, floor.median
        );
        growth.push(Growth { peers: n, pairs, first, write_floor, noop: noop.median, read_floor: floor.median });
        report.row(
            "first",
            vec![
                n.to_string(),
                pairs.to_string(),
                ms(first),
                per_pair(first),
                per_pair(write_floor),
                ratio(first, write_floor),
            ],
        );
        report.row(
            "noop",
            vec![
                n.to_string(),
                ms(noop.median),
                per_pair(noop.median),
                per_pair(floor.median),
                ratio(noop.median, floor.median),
            ],
        );
        if n >= 100 {
            let drift = fleet.drift_and_repair(10)?;
            let drift_floor = fleet.drift_floor(10)?;
            report.row(
                "drift",
                vec![n.to_string(), (n / 10).to_string(), ms(drift), ms(drift_floor), ratio(drift, drift_floor)],
            );
        }
    }
    if !growth.is_empty() {
        sweep_chart(&growth)?;
    }

    let echo = daemon::Echo::start()?;
    if part("daemon") {
        daemon_figures(&mut report, &bins, &echo)?;
    }
    if part("heartbeats") {
        heartbeat_figures(&mut report, &bins, &echo, idle_secs)?;
    }
    if part("search") {
        search_figures(&mut report, &bins)?;
    }
    if part("hybrid") {
        eprintln!("== hybrid memory_search");
        hybrid::run(&bins, &mut report)?;
    }
    if part("messages") {
        let mix_secs: u64 = std::env::var("MEMORYD_BENCH_MIX_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
        eprintln!("== peer messages: {mix_secs} s mix");
        let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
        messages::run(tmp.path(), &bins, Duration::from_secs(mix_secs), &mut report)?;
    }
    if part("store") {
        eprintln!("== the file store and the PostgreSQL store");
        store::run(&mut report)?;
    }
    report.machine(started.elapsed());
    report.write(&PathBuf::from(out))?;
    eprintln!("== done in {:?}; tables written into {out}", started.elapsed());
    Ok(())
}

/// Births, socket round trips and whole `memoryctl` processes, against a
/// daemon with 100 peers.
fn daemon_figures(report: &mut Report, bins: &daemon::Bins, echo: &daemon::Echo) -> anyhow::Result<()> {
    eprintln!("== a running daemon with 100 peers: births, socket round trips, memoryctl processes");
    let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
    let live = daemon::Live::start(tmp.path(), 100, None, bins)?;
    let births = Stats::of(live.births(100)?);
    let birth_floor = Stats::of(live.birth_floor(100)?);
    for (name, s) in [("a newborn peer wired", &births), ("floor: watcher event, then its files written", &birth_floor)]
    {
        report.row("births", vec![name.into(), ms(s.p50), ms(s.p99), ms(s.max), ratio(s.p50, birth_floor.p50)]);
    }
    let [hello, status, floor] = live.round_trips(echo, 2000)?.map(Stats::of);
    for (name, s) in [("session.hello", &hello), ("host.status", &status), ("floor: raw socket echo", &floor)] {
        report.row("socket", vec![name.into(), us(s.p50), us(s.p99), ratio(s.p50, floor.p50)]);
    }
    let window = Duration::from_secs(3);
    let (throughput, echo_throughput) = (live.throughput(16, window)?, echo.throughput(16, window)?.rate);
    report.row(
        "throughput",
        vec!["host.status".into(), "16".into(), per_second(throughput), ratio_of(throughput, echo_throughput)],
    );
    report.row(
        "throughput",
        vec!["floor: raw socket echo".into(), "16".into(), per_second(echo_throughput), "1.0×".into()],
    );
    // Interleaved, so that a burst of load elsewhere on the machine falls
    // on every row alike.
    let hooks = ["session-start", "prompt-submit", "post-tool"];
    let (mut status, mut peers, mut floor_client, mut process) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut hook_times = vec![Vec::new(); hooks.len()];
    for _ in 0..30 {
        status.push(live.time_ctl(&["status"], None, &[0, 1])?);
        peers.push(live.time_ctl(&["peers"], None, &[0])?);
        for (event, times) in hooks.iter().zip(&mut hook_times) {
            times.extend(live.time_hook(event, 1)?);
        }
        floor_client.push(live.time_floor_client(bins)?);
        process.push(daemon::time_true()?);
    }
    let (floor_client, process) = (Stats::of(floor_client).median, Stats::of(process).median);
    let mut row = |name: String, took: Duration| {
        report.row("process", vec![name, ms(took), ratio(took, floor_client), ratio(took, process)]);
    };
    row("memoryctl status".into(), Stats::of(status).median);
    row("memoryctl peers".into(), Stats::of(peers).median);
    for (event, times) in hooks.iter().zip(hook_times) {
        row(format!("memoryctl hook {event}"), Stats::of(times).median);
    }
    row("floor: connect, hello, read one line".into(), floor_client);
    row("floor of any command: /bin/true".into(), process);
    match daemon::pueue_status(tmp.path()) {
        Ok((pueue, pueue_floor)) => {
            row("pueue status (against pueued)".into(), pueue);
            eprintln!("   pueue status {pueue:?} (its own floor: the binary's --version, {pueue_floor:?})");
        }
        Err(e) => {
            eprintln!("   pueue: {e:#}");
            report.row(
                "process",
                vec!["pueue status (against pueued)".into(), format!("not measured: {e}"), "—".into(), "—".into()],
            );
        }
    }
    Ok(())
}

/// The idle daemon and heartbeat ingest, with 1,000 peers.
fn heartbeat_figures(
    report: &mut Report,
    bins: &daemon::Bins,
    echo: &daemon::Echo,
    idle_secs: u64,
) -> anyhow::Result<()> {
    eprintln!("== a running daemon with 1,000 peers: idle cost, then heartbeat ingest");
    let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
    let big = daemon::Live::start(tmp.path(), 1_000, None, bins)?;
    let idle_window = Duration::from_secs(idle_secs);
    // Both over the same window, side by side (and one window less to wait).
    let ((cpu, rss), (floor_cpu, floor_rss)) = std::thread::scope(|scope| {
        let floor = scope.spawn(|| daemon::idle_floor(bins, idle_window));
        let daemon = big.idle(idle_window);
        let floor = floor.join().map_err(|_| anyhow::anyhow!("the idle floor panicked"))?;
        anyhow::Ok((daemon?, floor?))
    })?;
    for (name, cpu, rss) in
        [("memoryd, 1,000 peers, no session", cpu, rss), ("floor: a Rust process asleep", floor_cpu, floor_rss)]
    {
        report.row(
            "idle",
            vec![
                name.into(),
                format!("{idle_secs} s"),
                format!("{cpu:.2} s"),
                format!("{:.2} %", cpu * 100.0 / idle_secs as f64),
                format!("{:.1} MiB", rss as f64 / 1024.0),
                format!("{:.1}×", rss as f64 / floor_rss as f64),
            ],
        );
    }
    let beats = big.heartbeat_ingest(1_000, 8, Duration::from_secs(5))?;
    let floor = echo.throughput(8, Duration::from_secs(5))?;
    for (name, load) in [("runtimenode.heartbeat, 1,000 nodes", &beats), ("floor: raw socket echo", &floor)] {
        report.row(
            "heartbeats",
            vec![
                name.into(),
                "8".into(),
                per_second(load.rate),
                us(load.latency.p50),
                us(load.latency.p99),
                ratio_of(load.rate, floor.rate),
            ],
        );
    }
    Ok(())
}

/// Arms the test sandbox for every process this harness starts.
fn sandbox() {
    #[allow(unsafe_code)]
    // SAFETY: called first, single-threaded; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("MEMORYD_TEST_SANDBOX", "1");
    }
}

/// The search figures: latency over MCP against the index in process,
/// edit to searchable, and quality on the vendored Cranfield collection.
fn search_figures(report: &mut Report, bins: &daemon::Bins) -> anyhow::Result<()> {
    eprintln!("== MCP memory_search");
    let mut search_growth = Vec::new();
    for notes in [1_000usize, 10_000, 50_000] {
        let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
        let live = daemon::Live::start(tmp.path(), 10, Some(daemon::Vault::Synthetic(notes)), bins)?;
        let (over_http, in_process) = live.search(200)?;
        let (http, floor) = (Stats::of(over_http), Stats::of(in_process));
        search_growth.push((notes, http.p50, floor.p50));
        let (took, round_trip) = live.edit_to_searchable(50)?;
        let (took, round_trip) = (Stats::of(took), Stats::of(round_trip));
        report.row(
            "edit",
            vec![notes.to_string(), ms(took.p50), ms(took.p99), ms(round_trip.p50), ratio(took.p50, round_trip.p50)],
        );
        report.row(
            "search",
            vec![
                notes.to_string(),
                ms(http.p50),
                ms(http.p99),
                us(floor.p50),
                us(floor.p99),
                us(floor.p50 * 1000 / notes as u32),
                ratio(http.p50, floor.p50),
            ],
        );
    }
    chart::growth(
        "docs/bench-search.svg",
        "memory_search: µs per query per 1,000 notes",
        &[
            (
                "over MCP (HTTP)",
                search_growth.iter().map(|g| (g.0 as f64, g.1.as_secs_f64() * 1e6 / (g.0 as f64 / 1000.0))).collect(),
            ),
            (
                "floor: the index in process",
                search_growth.iter().map(|g| (g.0 as f64, g.2.as_secs_f64() * 1e6 / (g.0 as f64 / 1000.0))).collect(),
            ),
        ],
        "notes",
    )?;

    eprintln!("== search quality (Cranfield, over MCP)");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("collections/cranfield");
    let collection = quality::cranfield(&dir)?;
    let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
    let live = daemon::Live::start(tmp.path(), 10, Some(daemon::Vault::Collection(&collection)), bins)?;
    let s = quality::Scores::of(&collection, &live.quality_run(&collection)?);
    report.row(
        "quality",
        vec![
            format!("Cranfield 1400 ({} judged queries)", s.queries),
            "memoryd lexical, over MCP".into(),
            format!("{:.3}", s.ndcg10),
            format!("{:.3}", s.recall10),
            format!("{:.3}", s.recall50),
            format!("{:.3}", s.mrr),
        ],
    );
    Ok(())
}

/// Time per peer-runtime against the fleet size: a flat line is linear.
fn sweep_chart(growth: &[Growth]) -> anyhow::Result<()> {
    let per_pair = |pick: fn(&Growth) -> Duration| {
        growth.iter().map(|g| (g.peers as f64, pick(g).as_secs_f64() * 1e6 / g.pairs as f64)).collect::<Vec<_>>()
    };
    chart::growth(
        "docs/bench-sweep.svg",
        "Sweep: µs per peer-runtime against fleet size",
        &[
            ("first provision", per_pair(|g| g.first)),
            ("floor: writing the same files", per_pair(|g| g.write_floor)),
            ("no-op sweep", per_pair(|g| g.noop)),
            ("floor: reading the files", per_pair(|g| g.read_floor)),
        ],
        "peers",
    )?;
    Ok(())
}

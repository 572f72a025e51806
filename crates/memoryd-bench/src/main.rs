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
mod report;

use report::{Report, Stats, ms, us};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The fleet sizes of the sweep figures.
const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
/// Repeats of the quick figures; their median is reported.
const REPEATS: usize = 5;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, socket] = args.as_slice()
        && flag == "--floor-client"
    {
        return daemon::floor_client(socket);
    }
    let out =
        args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).map_or("BENCHMARKS.md", String::as_str);
    let idle_secs: u64 = std::env::var("MEMORYD_BENCH_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let sizes: Vec<usize> = match std::env::var("MEMORYD_BENCH_MAX_PEERS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(max) => SIZES.iter().copied().filter(|n| *n <= max).collect(),
        None => SIZES.to_vec(),
    };
    // SAFETY of the sandbox: set before any thread starts.
    #[allow(unsafe_code)]
    // SAFETY: single-threaded at this point; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("MEMORYD_TEST_SANDBOX", "1");
    }
    let repeats: usize = std::env::var("MEMORYD_BENCH_REPEATS").ok().and_then(|v| v.parse().ok()).unwrap_or(REPEATS);
    let bins = daemon::Bins::next_to_this_binary()?;
    let mut report = Report::default();
    let started = Instant::now();

    eprintln!("== sweeps");
    let mut growth = Vec::new();
    for &n in &sizes {
        let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
        let fleet = fleet::Fleet::generate(tmp.path(), n, &bins)?;
        let first = fleet.sweep()?;
        let pairs = fleet.pairs();
        let noop = Stats::of((0..repeats).map(|_| fleet.sweep().unwrap()).collect());
        let floor = Stats::of((0..repeats).map(|_| fleet.read_surfaces()).collect());
        let drift = if n >= 100 { Some(fleet.drift_and_repair(10)?) } else { None };
        eprintln!("   {n} peers: first {first:?}, no-op {:?}, floor {:?}", noop.median, floor.median);
        growth.push((n, pairs, first, noop.median, floor.median));
        report.row(
            "sweep",
            vec![
                n.to_string(),
                pairs.to_string(),
                ms(first),
                us(first / pairs as u32),
                ms(noop.median),
                us(noop.median / pairs as u32),
                us(floor.median / pairs as u32),
                format!("{:.1}×", noop.median.as_secs_f64() / floor.median.as_secs_f64()),
                drift.map_or("—".to_owned(), ms),
            ],
        );
    }
    chart::growth(
        "docs/bench-sweep.svg",
        "Sweep: µs per peer-runtime against fleet size",
        &[
            ("first provision", growth.iter().map(|g| (g.0 as f64, g.2.as_secs_f64() * 1e6 / g.1 as f64)).collect()),
            ("no-op sweep", growth.iter().map(|g| (g.0 as f64, g.3.as_secs_f64() * 1e6 / g.1 as f64)).collect()),
            (
                "floor: reading the files",
                growth.iter().map(|g| (g.0 as f64, g.4.as_secs_f64() * 1e6 / g.1 as f64)).collect(),
            ),
        ],
        "peers",
    )?;

    if std::env::var("MEMORYD_BENCH_ONLY").is_ok_and(|v| v == "sweeps") {
        report.machine(started.elapsed());
        return report.write(&PathBuf::from(out));
    }

    eprintln!("== a running daemon with 100 peers: births, socket round trips, memoryctl status");
    let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
    let live = daemon::Live::start(tmp.path(), 100, None, &bins)?;
    let births = Stats::of(live.births(100)?);
    report.row("births", vec!["100".into(), ms(births.p50), ms(births.p99), ms(births.max)]);
    let (status, hello) = (live.round_trips("host.status", 2000)?, live.round_trips("session.hello", 2000)?);
    let floor = Stats::of(daemon::echo_floor(2000)?);
    for (name, s) in [("session.hello", &hello), ("host.status", &status), ("floor: raw socket echo", &floor)] {
        report.row(
            "socket",
            vec![name.into(), us(s.p50), us(s.p99), format!("{:.1}×", s.p50.as_secs_f64() / floor.p50.as_secs_f64())],
        );
    }
    let throughput = live.throughput(16, Duration::from_secs(3))?;
    report.row("throughput", vec!["16".into(), format!("{throughput:.0}")]);
    let ctl = Stats::of((0..30).map(|_| live.time_status().unwrap()).collect());
    let floor_client = Stats::of((0..30).map(|_| live.time_floor_client(&bins).unwrap()).collect());
    report.row(
        "process",
        vec![
            "memoryctl status".into(),
            ms(ctl.median),
            format!("{:.1}×", ctl.median.as_secs_f64() / floor_client.median.as_secs_f64()),
        ],
    );
    report.row("process", vec!["floor: connect, hello, read one line".into(), ms(floor_client.median), "1.0×".into()]);
    match daemon::pueue_status(tmp.path()) {
        Ok((pueue, pueue_floor)) => {
            report.row(
                "process",
                vec![
                    "pueue status (against pueued)".into(),
                    ms(pueue),
                    format!("{:.1}×", pueue.as_secs_f64() / floor_client.median.as_secs_f64()),
                ],
            );
            eprintln!("   pueue status {pueue:?} (its own floor: the binary's --version, {pueue_floor:?})");
        }
        Err(e) => {
            eprintln!("   pueue: {e:#}");
            report
                .row("process", vec!["pueue status (against pueued)".into(), format!("not measured: {e}"), "—".into()]);
        }
    }
    drop(live);

    eprintln!("== a running daemon with 1,000 peers: heartbeat ingest, idle cost");
    let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
    let big = daemon::Live::start(tmp.path(), 1_000, None, &bins)?;
    let rate = big.heartbeat_ingest(1_000, 8, Duration::from_secs(5))?;
    report.row("heartbeats", vec!["1,000".into(), "8".into(), format!("{rate:.0}")]);
    let (cpu, rss) = big.idle(Duration::from_secs(idle_secs))?;
    report.row(
        "idle",
        vec![
            "1,000".into(),
            format!("{idle_secs} s"),
            format!("{cpu:.3} s"),
            format!("{:.1} MiB", rss as f64 / 1024.0),
        ],
    );
    drop(big);

    eprintln!("== MCP memory_search");
    let mut search_growth = Vec::new();
    for notes in [1_000, 10_000] {
        let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
        let live = daemon::Live::start(tmp.path(), 10, Some(notes), &bins)?;
        let (over_http, in_process) = live.search(200)?;
        let (http, floor) = (Stats::of(over_http), Stats::of(in_process));
        search_growth.push((notes, http.p50, floor.p50));
        report.row("search", vec![notes.to_string(), ms(http.p50), ms(http.p99), us(floor.p50), us(floor.p99)]);
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

    report.machine(started.elapsed());
    report.write(&PathBuf::from(out))?;
    eprintln!("== done in {:?}; tables written into {out}", started.elapsed());
    Ok(())
}

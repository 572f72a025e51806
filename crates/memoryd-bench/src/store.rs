//! The store figures of spec 80: the same trait calls on the file store
//! and on the PostgreSQL store, side by side in one run, against a
//! throwaway local cluster (testkit): the heartbeat flush, the demotion,
//! `peer.send`, lease then ack, the roster, and one cross-host figure (a
//! send on host A until host B's listener hears of it).

use crate::report::{Report, Stats, ms};
use memoryd_core::fleet::{FleetMap, FleetPeer};
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::paths::Paths;
use memoryd_core::peers::{Draft, Limits};
use memoryd_core::presence::{AttachParams, Health, Rules};
use memoryd_core::store::{FileStore, PeerStore, StateStore};
use memoryd_store_pg::testkit::Cluster;
use memoryd_store_pg::{Hint, Options, PgStore};
use serde_json::Map;
use std::time::{Duration, Instant, SystemTime};

/// Fleet sizes of the flush figure.
const NODES: [usize; 2] = [1_000, 5_000];
/// Sends, and lease + ack pairs, timed per backend.
const SENDS: usize = 400;

fn fleet(n: usize) -> FleetMap {
    FleetMap {
        updated_at: "bench".into(),
        peers: (0..n)
            .map(|i| FleetPeer {
                personality: format!("p{i:05}"),
                cwd: format!("/bench/p{i:05}").into(),
                default_runtime: Some("claude".into()),
                runtimes: vec!["claude".into()],
                description: String::new(),
            })
            .collect(),
    }
}

fn node(i: usize) -> String {
    format!("claude-p{i:05}")
}

fn rules() -> Rules {
    Rules { degraded_after: Duration::from_secs(30), offline_after: Duration::from_secs(60), floor: None }
}

fn limits() -> Limits {
    Limits { capacity: 10_000, send_rate: 1_000_000, history_max: 1000, history_age: Duration::from_secs(86_400) }
}

fn no_pid(_: i32) -> Option<String> {
    None
}

/// One backend's figures.
#[derive(Default)]
struct Figures {
    flush: Vec<Duration>,
    demotion: Duration,
    send: Option<Stats>,
    lease_ack: Option<Stats>,
    /// Sends between two peers whose mailboxes hold a full history.
    send_full: Option<Stats>,
    roster: Duration,
}

/// Attaches `n` nodes at `t0`, then: the flush of one kept beat per node
/// (median of 3), the demotion of a quarter of them, `SENDS` sends and
/// lease + ack pairs between linked pairs, and the roster.
fn measure(store: &dyn StateStore, n: usize, t0: SystemTime, figures: &mut Figures) -> anyhow::Result<()> {
    let map = fleet(n);
    store.publish(&map)?;
    for i in 0..n {
        let req = AttachParams {
            session_id: format!("s{i}"),
            node_id: node(i),
            client_version: "1.0".into(),
            capabilities: Map::new(),
            health_state: Health::Online,
            pid: None,
        };
        store.attach(&req, true, &rules(), t0, &no_pid)?;
    }
    let mut flushes = Vec::new();
    for round in 1..=3u64 {
        let at = t0 + Duration::from_secs(round);
        for i in 0..n {
            store.heartbeat(&node(i), Some(&format!("s{i}")), Health::Online, at)?;
        }
        let start = Instant::now();
        store.sweep(&rules(), at, &no_pid)?;
        flushes.push(start.elapsed());
    }
    figures.flush.push(Stats::of(flushes).median);
    if n == *NODES.last().unwrap_or(&n) {
        // Three quarters beat at +25 s (written by a sweep then, which
        // demotes nothing); at +40 s the timed sweep demotes the rest.
        let beat = t0 + Duration::from_secs(25);
        for i in (0..n).filter(|i| i % 4 != 0) {
            store.heartbeat(&node(i), Some(&format!("s{i}")), Health::Online, beat)?;
        }
        store.sweep(&rules(), beat, &no_pid)?;
        let at = t0 + Duration::from_secs(40);
        let start = Instant::now();
        let moved = store.sweep(&rules(), at, &no_pid)?;
        figures.demotion = start.elapsed();
        anyhow::ensure!(moved.len() == n / 4, "the demotion moved {} nodes, not {}", moved.len(), n / 4);
        let start = Instant::now();
        let rows = store.roster(None)?;
        figures.roster = start.elapsed();
        anyhow::ensure!(rows.len() == n, "the roster has {} rows, not {n}", rows.len());
        let (mut sends, mut pairs) = (Vec::new(), Vec::new());
        for pair in 0..SENDS.min(n / 2) {
            store.link(&map, &map.peers[2 * pair].personality, &map.peers[2 * pair + 1].personality)?;
        }
        for k in 0..SENDS {
            let pair = k % SENDS.min(n / 2);
            let (from, to) = (&map.peers[2 * pair].personality, &map.peers[2 * pair + 1].personality);
            let draft = Draft::plain(from, to, "a message of a few words, as agents send them");
            let start = Instant::now();
            store.send(&map, &draft, &limits(), at)?;
            sends.push(start.elapsed());
        }
        for k in 0..SENDS.min(n / 2) {
            let to = &map.peers[2 * k + 1].personality;
            let start = Instant::now();
            let leased = store.lease(to, false, at)?;
            let ids: Vec<String> = leased.iter().map(|m| m.id.clone()).collect();
            store.ack(to, &ids, &limits(), at)?;
            pairs.push(start.elapsed());
        }
        figures.send = Some(Stats::of(sends));
        figures.lease_ack = Some(Stats::of(pairs));
        figures.send_full = Some(full_history(store, &map, at)?);
    }
    Ok(())
}

/// How many messages a full history holds each way (`presence.history_max`'s
/// default).
const HISTORY: usize = 1_000;

/// Sends from the first peer to the second once each has a full history:
/// `HISTORY` messages delivered to the second (received, and sent by the
/// first), then `HISTORY` the other way; then `SENDS / 4` timed sends.
fn full_history(store: &dyn StateStore, map: &FleetMap, at: SystemTime) -> anyhow::Result<Stats> {
    let (a, b) = (&map.peers[0].personality, &map.peers[1].personality);
    for (from, to) in [(a, b), (b, a)] {
        for k in 0..HISTORY {
            let draft = Draft::plain(from, to, &format!("history {k}: a message of a few words, as agents send them"));
            store.send(map, &draft, &limits(), at)?;
            if k % 100 == 99 {
                let ids: Vec<String> = store.lease(to, false, at)?.into_iter().map(|m| m.id).collect();
                store.ack(to, &ids, &limits(), at)?;
            }
        }
    }
    let mailbox = store.mailbox(b)?;
    anyhow::ensure!(
        mailbox.received.len() >= HISTORY && mailbox.sent.len() >= HISTORY,
        "{b}'s history holds {} received and {} sent, not {HISTORY} each",
        mailbox.received.len(),
        mailbox.sent.len()
    );
    let mut sends = Vec::new();
    for _ in 0..SENDS / 4 {
        let start = Instant::now();
        store.send(map, &Draft::plain(a, b, "a message into a full history"), &limits(), at)?;
        sends.push(start.elapsed());
    }
    Ok(Stats::of(sends))
}

fn pg_store(cluster: &Cluster, schema: &str, host: &str) -> anyhow::Result<PgStore> {
    let mut settings = memoryd_core::config::PostgresConfig { url: Some(cluster.url()), ..Default::default() };
    settings.schema = schema.to_owned();
    settings.call_timeout = Duration::from_secs(10);
    let store = PgStore::open(Options {
        settings,
        host_id: host.into(),
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        daemon: true,
        seed: Default::default(),
        clock_offset_ms: 0,
        instance: None,
    })?;
    let state = store.wait_connected(Duration::from_secs(20));
    anyhow::ensure!(state.name() == "up", "the PostgreSQL store did not come up: {state:?}");
    Ok(store)
}

/// A send on host A until host B's listener hears of it (the `inbox` hint
/// that makes B re-render its fragment).
fn cross_host(cluster: &Cluster) -> anyhow::Result<Stats> {
    let schema = cluster.fresh_schema();
    let (a, b) = (pg_store(cluster, &schema, "host-a")?, pg_store(cluster, &schema, "host-b")?);
    let (map_a, map_b) = (fleet(1), FleetMap { updated_at: "bench".into(), peers: vec![fleet(2).peers[1].clone()] });
    a.publish(&map_a)?;
    b.publish(&map_b)?;
    let registry = a.registry(&map_a)?;
    a.link(&registry, "p00000", "p00001")?;
    let mut hints = b.hints();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut samples = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        a.send(&registry, &Draft::plain("p00000", "p00001", "across hosts"), &limits(), SystemTime::now())?;
        rt.block_on(async {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), hints.recv()).await {
                    Ok(Ok(Hint::Inbox { personality })) if personality == "p00001" => return Ok(()),
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    Ok(Err(e)) => return Err(anyhow::anyhow!("the listener ended: {e}")),
                    Err(_) => return Err(anyhow::anyhow!("no inbox hint within 5 s")),
                }
            }
        })?;
        samples.push(start.elapsed());
    }
    Ok(Stats::of(samples))
}

pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start_durable() else {
        anyhow::bail!("no PostgreSQL server here for the store figures (install postgresql or set MEMORYD_PG_BIN)")
    };
    let t0 = SystemTime::now();
    let (mut file, mut pg) = (Figures::default(), Figures::default());
    for &n in &NODES {
        eprintln!("   {n} nodes: file store");
        let tmp = tempfile::Builder::new().prefix("mdbench").tempdir()?;
        let store = FileStore::open(&Paths::new(tmp.path().to_path_buf()), &FileGuard::live())?;
        measure(&store, n, t0, &mut file)?;
        eprintln!("   {n} nodes: postgres");
        let store = pg_store(&cluster, &cluster.fresh_schema(), "bench")?;
        measure(&store, n, t0, &mut pg)?;
    }
    let cross = cross_host(&cluster)?;
    for (i, n) in NODES.iter().enumerate() {
        let target = if *n <= 1_000 { "≤ 20 ms" } else { "≤ 100 ms" };
        report.row(
            "store",
            vec![format!("heartbeat flush, {n} nodes (one sweep)"), ms(file.flush[i]), ms(pg.flush[i]), target.into()],
        );
    }
    let stats = |s: &Option<Stats>| s.as_ref().map_or(("-".into(), "-".into()), |s| (ms(s.p50), ms(s.p99)));
    let n = NODES[NODES.len() - 1];
    report.row(
        "store",
        vec![format!("demotion, {n} nodes, {} moving", n / 4), ms(file.demotion), ms(pg.demotion), "≤ 100 ms".into()],
    );
    let (fs, ps) = (stats(&file.send), stats(&pg.send));
    report.row("store", vec!["peer.send p50".into(), fs.0, ps.0, "≤ 10 ms".into()]);
    report.row("store", vec!["peer.send p99".into(), fs.1, ps.1, "≤ 50 ms".into()]);
    let (ff, pf) = (stats(&file.send_full), stats(&pg.send_full));
    report.row(
        "store",
        vec![format!("peer.send p50, both mailboxes at {HISTORY} received + {HISTORY} sent"), ff.0, pf.0, "".into()],
    );
    report.row(
        "store",
        vec![format!("peer.send p99, both mailboxes at {HISTORY} received + {HISTORY} sent"), ff.1, pf.1, "".into()],
    );
    let (fl, pl) = (stats(&file.lease_ack), stats(&pg.lease_ack));
    report.row("store", vec!["lease then ack p50".into(), fl.0, pl.0, "≤ 20 ms".into()]);
    report.row("store", vec!["lease then ack p99".into(), fl.1, pl.1, "".into()]);
    report.row("store", vec![format!("roster, {n} rows"), ms(file.roster), ms(pg.roster), "≤ 50 ms".into()]);
    report.row(
        "store",
        vec![
            "cross-host: send on A → B's listener hears it, p50 / p99".into(),
            "-".into(),
            format!("{} / {}", ms(cross.p50), ms(cross.p99)),
            "".into(),
        ],
    );
    Ok(())
}

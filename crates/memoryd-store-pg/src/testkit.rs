//! A throwaway PostgreSQL cluster for tests (spec 80's commands): one per
//! test process, started from a template data directory that `initdb`
//! makes once per machine and user (under a lock), so a test pays about a
//! copy and a start, not an `initdb`. The server refuses to run as root:
//! as root, every server command runs as the `postgres` user.
//!
//! Without a server on the machine a test skips, saying so on stderr;
//! with `MEMORYD_PG_REQUIRED=1` (set by `.ci/run`) it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test support

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The newest `/usr/lib/postgresql/*/bin`, or `MEMORYD_PG_BIN`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MEMORYD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `cmd` (as `postgres` when we are root), killed past `deadline`.
fn run(bin: &Path, program: &str, args: &[&str], deadline: Duration) -> Result<(), String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    };
    let mut child = cmd
        .args(args)
        .env_remove("PGDATA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{program} {args:?} failed ({status}): {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ))
                };
            }
            Ok(None) if start.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} {args:?} did not finish within {deadline:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn chown_postgres(path: &Path) {
    if is_root() {
        let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status();
        assert!(out.is_ok_and(|s| s.success()), "cannot chown {} to postgres", path.display());
    }
}

/// The template data directory, made once by `initdb`.
fn template(bin: &Path) -> PathBuf {
    let uid = nix::unistd::geteuid();
    let version = bin.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("x").to_owned();
    let base = std::env::temp_dir().join(format!("memoryd-pg-template-{version}-{uid}"));
    let data = base.join("data");
    let lock_path = std::env::temp_dir().join(format!("memoryd-pg-template-{version}-{uid}.lock"));
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    if !base.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        chown_postgres(&base);
        run(
            bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "memoryd",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            Duration::from_secs(60),
        )
        .unwrap();
        std::fs::write(base.join("ready"), "").unwrap();
    }
    drop(lock);
    data
}

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

/// A running throwaway cluster, stopped (immediately) and removed on drop.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    /// Commits wait for the disk (fsync on), as a real server's do; the
    /// tests run without, the benchmark with.
    durable: bool,
}

impl Cluster {
    /// Starts a cluster, or None (said on stderr) when the machine has no
    /// PostgreSQL and `MEMORYD_PG_REQUIRED` is not set.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(false)
    }

    /// A cluster whose commits are durable (fsync, synchronous commit,
    /// full page writes: the server's defaults), for figures that must
    /// include the disk.
    pub fn start_durable() -> Option<Cluster> {
        Cluster::start_with(true)
    }

    fn start_with(durable: bool) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("MEMORYD_PG_REQUIRED").is_none_or(|v| v != "1"),
                "MEMORYD_PG_REQUIRED=1 but no PostgreSQL server is installed (install Debian's postgresql, or set MEMORYD_PG_BIN)"
            );
            eprintln!("skipped: no PostgreSQL server here (set MEMORYD_PG_BIN or install postgresql)");
            return None;
        };
        let template = template(&bin);
        let dir = tempfile::Builder::new().prefix("memoryd-pg.").tempdir().unwrap();
        let data = dir.path().join("data");
        let status = Command::new("cp").arg("-a").arg(&template).arg(&data).status().unwrap();
        assert!(status.success(), "cannot copy the template cluster");
        chown_postgres(dir.path());
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let port = free_port();
        let cluster = Cluster { bin, dir, port, durable };
        cluster.pg_ctl_start();
        cluster.psql("postgres", "CREATE DATABASE memoryd_test");
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The socket directory; also where the server log is.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100{}",
            self.port,
            self.dir.path().display(),
            if self.durable { "" } else { " -c fsync=off -c synchronous_commit=off -c full_page_writes=off" }
        );
        let log = self.dir.path().join("server.log");
        run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "start",
            ],
            Duration::from_secs(40),
        )
        .unwrap();
    }

    /// Runs one SQL text with psql against `db`.
    pub fn psql(&self, db: &str, sql: &str) {
        let conn = format!("host={} port={} user=memoryd dbname={db}", self.dir.path().display(), self.port);
        run(&self.bin, "psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", &conn, "-c", sql], Duration::from_secs(30))
            .unwrap();
    }

    /// The test database's URL over loopback TCP.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=memoryd dbname=memoryd_test", self.port)
    }

    /// A schema name no other test of this process uses.
    pub fn fresh_schema(&self) -> String {
        format!("t_{}_{}", std::process::id(), SCHEMAS.fetch_add(1, Ordering::Relaxed))
    }

    /// Stops the server at once (`-m immediate`): clients see their
    /// connections drop.
    pub fn stop(&self) {
        run(
            &self.bin,
            "pg_ctl",
            &["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"],
            Duration::from_secs(30),
        )
        .unwrap();
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart(&self) {
        run(
            &self.bin,
            "pg_ctl",
            &["-D", self.data().to_str().unwrap(), "-m", "fast", "-w", "stop"],
            Duration::from_secs(30),
        )
        .unwrap();
        self.pg_ctl_start();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(
            &self.bin,
            "pg_ctl",
            &["-D", self.data().to_str().unwrap_or(""), "-m", "immediate", "-w", "stop"],
            Duration::from_secs(30),
        );
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `f` on a fresh connection to `url` (a check's own, beside the
/// stores under test), the whole of it within 30 s.
fn on_db<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let run = async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            f(&client).await
        };
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("the test database did not answer within 30 s")
    })
}

/// The invariants of spec 80's scenario 5, checked after every scenario:
/// by SQL on `schema` (no link row with `a >= b`, at most one active
/// attachment per node) and on the event log (exactly one event per state
/// transition: each session's state events chain, every one moving from
/// the state the previous one reached). Every violation, in words.
pub fn invariants(url: &str, schema: &str) -> Vec<String> {
    on_db(url, async |client| {
        let mut broken = Vec::new();
        let q = |sql: &str| format!("SET search_path = \"{schema}\"; {sql}");
        let one_sided: i64 = client
            .simple_query(&q("SELECT count(*) FROM links WHERE a >= b"))
            .await
            .unwrap()
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .unwrap_or(0);
        if one_sided > 0 {
            broken.push(format!("{one_sided} link rows with a >= b"));
        }
        let doubles = client
            .query(
                &format!(
                    "SELECT node_id, count(*) FROM \"{schema}\".runtime_node_attachments
                      WHERE state IN ('registering','online','degraded') GROUP BY node_id HAVING count(*) > 1"
                ),
                &[],
            )
            .await
            .unwrap();
        for row in doubles {
            broken.push(format!("node {} has {} active attachments", row.get::<_, String>(0), row.get::<_, i64>(1)));
        }
        let events = client.query(&format!("SELECT body FROM \"{schema}\".events ORDER BY seq"), &[]).await.unwrap();
        let mut last: std::collections::HashMap<(String, String), String> = std::collections::HashMap::new();
        for row in events {
            let body: serde_json::Value = row.get(0);
            let (Some(node), Some(session), Some(new)) =
                (body["nodeId"].as_str(), body["sessionId"].as_str(), body["newState"].as_str())
            else {
                continue;
            };
            let key = (node.to_owned(), session.to_owned());
            if let Some(previous) = body["previousState"].as_str() {
                if previous == new {
                    broken.push(format!("event {} of {node}/{session} moves {previous} to itself", body["event"]));
                }
                if let Some(seen) = last.get(&key)
                    && seen != previous
                {
                    broken.push(format!(
                        "event {} of {node}/{session} moves from {previous}, but the session was {seen} (a transition recorded twice or missed)",
                        body["event"]
                    ));
                }
            }
            last.insert(key, new.to_owned());
        }
        broken
    })
}

/// The ids of every item of `personality`'s mailbox on `schema`, by box
/// (`waiting`, `received`, `sent`, `dropped`): what a test's ledger of
/// acknowledged sends is checked against.
pub fn mailbox_ids(url: &str, schema: &str, personality: &str) -> Vec<(String, String)> {
    on_db(url, async |client| {
        client
            .query(
                &format!("SELECT box, id FROM \"{schema}\".mail WHERE personality = $1 ORDER BY seq"),
                &[&personality],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    })
}

/// How many events named `event` (`runtime_node.degraded`, …) node `node`
/// has on `schema`.
pub fn event_count(url: &str, schema: &str, event: &str, node: &str) -> i64 {
    on_db(url, async |client| {
        client
            .query_one(
                &format!("SELECT count(*) FROM \"{schema}\".events WHERE event = $1 AND node_id = $2"),
                &[&event, &node],
            )
            .await
            .unwrap()
            .get(0)
    })
}

/// A TCP proxy between one host and the server that can `pause` (stop
/// forwarding, keep every socket open: a half-open partition) and
/// `resume`. Stopped when dropped.
pub struct Proxy {
    pub port: u16,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (paused.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                        let _ = client.set_nonblocking(false);
                        for (from, to) in [(client.try_clone(), server.try_clone()), (Ok(server), Ok(client))] {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let (p, s) = (p.clone(), s.clone());
                                std::thread::spawn(move || pump(from, to, &p, &s));
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy { port, paused, stop }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// The server's URL through this proxy.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=memoryd dbname=memoryd_test", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` while not paused; while paused nothing is read,
/// so the peer's bytes wait in the kernel and its answers never come.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    paused: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

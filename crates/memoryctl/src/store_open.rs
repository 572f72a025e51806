//! The configured store, opened by memoryctl itself: when no daemon
//! answers, and for the fleet commands, which need none. With the fleet
//! database this process connects as an offline client (it does not hold
//! the host's row) and gives up, saying why, when the database is not up.

use anyhow::Context as _;
use memoryd_core::config::{Backend, Config};
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::paths::Paths;
use memoryd_core::store::{FileStore, StateStore};
use memoryd_store_pg::{Options, PgStore, StoreState};
use std::time::Duration;

/// How the store is opened: to change it, or only to read it; or for a
/// provisioning run, whose work is per host and goes on (fragments kept
/// as they are) when the fleet database is not up.
pub enum Access<'a> {
    Write(&'a FileGuard),
    Read,
    Provision(&'a FileGuard),
}

/// The store the config names.
pub fn open(paths: &Paths, config: &Config, access: Access<'_>) -> anyhow::Result<Box<dyn StateStore>> {
    match (config.store.backend, access) {
        (Backend::File, Access::Write(files) | Access::Provision(files)) => {
            Ok(Box::new(FileStore::open(paths, files)?))
        }
        (Backend::File, Access::Read) => Ok(Box::new(FileStore::read_only(paths))),
        (Backend::Postgres, Access::Provision(_)) => {
            let (store, state) = connect(config)?;
            if let Err(e) = up(config, state) {
                eprintln!("memoryctl: {e:#}; per-host work goes on, fragments keep their last content");
            }
            Ok(Box::new(store))
        }
        (Backend::Postgres, _) => Ok(Box::new(open_fleet(config)?)),
    }
}

/// The fleet database, connected: refused in one sentence (naming the
/// URL, never a password) when it is not up within the connect timeout.
pub fn open_fleet(config: &Config) -> anyhow::Result<PgStore> {
    if config.store.backend != Backend::Postgres {
        anyhow::bail!("this host has no fleet database: store.backend is \"file\" (see README, \"Several hosts\")");
    }
    let (store, state) = connect(config)?;
    up(config, state)?;
    Ok(store)
}

/// Opens the fleet database and waits (bounded) for its first connection.
fn connect(config: &Config) -> anyhow::Result<(PgStore, StoreState)> {
    let wait = config.store.postgres.connect_timeout + Duration::from_secs(1);
    let options = Options::from_config(config, false);
    let store = PgStore::open(options).with_context(|| format!("cannot open the fleet database {}", url(config)))?;
    let state = off_runtime(|| store.wait_connected(wait));
    Ok((store, state))
}

fn url(config: &Config) -> String {
    memoryd_store_pg::redacted(config.store.postgres.url.as_deref().unwrap_or(""))
}

/// The state as a refusal, unless up.
fn up(config: &Config, state: StoreState) -> anyhow::Result<()> {
    let url = url(config);
    match state {
        StoreState::Up { .. } => Ok(()),
        StoreState::Connecting => anyhow::bail!("the fleet database {url} did not answer in time"),
        StoreState::Down { error, .. } => anyhow::bail!("the fleet database {url} is down: {error}"),
        StoreState::Incompatible { reason } => anyhow::bail!("the fleet database {url} cannot be used: {reason}"),
    }
}

/// Runs `f` on a thread of its own: the fleet database's calls block on
/// the store's runtime, which a thread that drives memoryctl's own
/// runtime must not do.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

//! The connection side of the fleet database: the settings every
//! connection carries (spec 80), the pool, the store's state
//! (`connecting`, `up`, `down`, `incompatible`) and the one way a store
//! call reaches the database: [`Db::call`], bounded by its deadline as a
//! whole (pool wait, transaction, commit).

use memoryd_core::config::PostgresConfig;
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// The session options of every connection: a statement, a lock wait and
/// an idle transaction are each bounded, so a stuck peer or a cut link
/// cannot hold rows for long.
const SESSION_OPTIONS: &str = "-c statement_timeout=5s -c lock_timeout=2s -c idle_in_transaction_session_timeout=10s";

/// What the store is, as `status` and `verify` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    Connecting,
    Up {
        since: SystemTime,
    },
    Down {
        since: SystemTime,
        error: String,
    },
    /// The schema cannot be used by this binary (the sentence says why).
    Incompatible {
        reason: String,
    },
}

impl StoreState {
    pub fn name(&self) -> &'static str {
        match self {
            StoreState::Connecting => "connecting",
            StoreState::Up { .. } => "up",
            StoreState::Down { .. } => "down",
            StoreState::Incompatible { .. } => "incompatible",
        }
    }
}

/// Why a call failed, before it becomes a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("the fleet database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot get a connection to the fleet database: {0}")]
    Pool(String),
}

impl From<memoryd_core::presence::Refusal> for Failure {
    fn from(r: memoryd_core::presence::Refusal) -> Failure {
        Failure::Store(StoreError::Refused(r))
    }
}

impl Failure {
    /// A serialization failure or a deadlock: worth one retry.
    fn retryable(&self) -> bool {
        matches!(self, Failure::Db(e) if e.code().is_some_and(|c| {
            *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                || *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
        }))
    }

    /// Whether the failure says the connection or the server is gone (as
    /// opposed to a statement the server refused).
    fn lost(&self) -> bool {
        match self {
            Failure::Db(e) => {
                e.is_closed()
                    || e.code().is_none()
                    || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
            }
            Failure::Timeout(_) | Failure::Pool(_) => true,
            Failure::Store(_) => false,
        }
    }
}

/// Host clock minus database clock, in ms, as measured at a connect or
/// resync: maps times between the two clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew(pub i64);

impl Skew {
    /// A host time on the database's clock.
    pub fn to_db(self, host: SystemTime) -> SystemTime {
        shift(host, self.0.saturating_neg())
    }

    /// A database time on the host's clock.
    pub fn to_host(self, database: SystemTime) -> SystemTime {
        shift(database, self.0)
    }
}

/// `t` moved by `ms` (left as it is past the ends of `SystemTime`).
fn shift(t: SystemTime, ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 { t.checked_add(d) } else { t.checked_sub(d) }.unwrap_or(t)
}

/// The fleet database as this host sees it.
pub struct Db {
    pub pool: deadpool_postgres::Pool,
    pub config: tokio_postgres::Config,
    pub settings: PostgresConfig,
    pub host_id: String,
    state: Mutex<StoreState>,
    /// Woken when a call finds the connection lost: the supervisor
    /// reconnects.
    pub lost: Notify,
    /// Host clock minus database clock, in milliseconds, as last measured.
    skew_ms: std::sync::atomic::AtomicI64,
    /// Down because another live boot holds this host's row.
    host_taken: std::sync::atomic::AtomicBool,
}

/// The postgres URL with any password left out, for messages.
pub fn redacted(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            format!(
                "postgres://{}@{}:{}/{}",
                c.get_user().unwrap_or(""),
                hosts.join(","),
                c.get_ports().first().copied().unwrap_or(5432),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "(an unparsable postgres.url)".into(),
    }
}

/// Builds the connection config of spec 80 from the settings: refused when
/// the URL is missing or holds a password.
pub fn connection_config(settings: &PostgresConfig, host_id: &str) -> Result<tokio_postgres::Config, String> {
    let url = settings.url.as_deref().ok_or("postgres.url is not set; set it to the fleet database's URL")?;
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| format!("postgres.url {:?} does not parse: {e}", redacted(url)))?;
    if config.get_password().is_some() {
        return Err("postgres.url holds a password; remove it and put the password in postgres.password_file".into());
    }
    if let Some(file) = &settings.password_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read postgres.password_file {}: {e}", file.display()))?;
        config.password(text.trim_end_matches(['\n', '\r']));
    }
    config
        .application_name(format!("memoryd/{host_id}"))
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10))
        .options(format!("{SESSION_OPTIONS} -c search_path={}", settings.schema));
    Ok(config)
}

impl Db {
    pub fn new(settings: PostgresConfig, host_id: String) -> Result<Db, String> {
        let config = connection_config(&settings, &host_id)?;
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| format!("cannot build the connection pool: {e}"))?;
        Ok(Db {
            pool,
            config,
            settings,
            host_id,
            state: Mutex::new(StoreState::Connecting),
            lost: Notify::new(),
            skew_ms: Default::default(),
            host_taken: Default::default(),
        })
    }

    pub fn state(&self) -> StoreState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_state(&self, state: StoreState) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.name() != state.name() {
            tracing::info!(store = state.name(), "fleet database");
        }
        *s = state;
    }

    /// Marks the store down (once: the first failure's time and error are
    /// kept) and wakes the supervisor.
    pub fn mark_down(&self, error: String) {
        {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*s, StoreState::Up { .. } | StoreState::Connecting) {
                tracing::warn!(error = %error, "fleet database down");
                *s = StoreState::Down { since: SystemTime::now(), error };
            }
        }
        self.lost.notify_one();
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_skew_ms(&self, ms: i64) {
        self.skew_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The clock skew as last measured, to map several times with one
    /// value.
    pub fn skew(&self) -> Skew {
        Skew(self.skew_ms())
    }

    /// A host time mapped onto the database's clock.
    pub fn db_time(&self, host: SystemTime) -> SystemTime {
        self.skew().to_db(host)
    }

    /// A database time mapped onto the host's clock (the inverse of
    /// [`Db::db_time`]).
    pub fn host_time(&self, database: SystemTime) -> SystemTime {
        self.skew().to_host(database)
    }

    pub fn set_host_taken(&self, taken: bool) {
        self.host_taken.store(taken, std::sync::atomic::Ordering::Relaxed);
    }

    /// The answer for a call made while the store is not up: at once, with
    /// no connection attempt.
    pub fn unavailable(&self) -> StoreError {
        match self.state() {
            StoreState::Down { error, .. } if self.host_taken.load(std::sync::atomic::Ordering::Relaxed) => {
                StoreError::Unavailable { kind: ErrorKind::StoreHostTaken, message: error }
            }
            StoreState::Incompatible { reason } => {
                StoreError::Unavailable { kind: ErrorKind::StoreIncompatible, message: reason }
            }
            StoreState::Down { error, .. } => StoreError::Unavailable {
                kind: ErrorKind::StoreUnavailable,
                message: format!(
                    "the fleet database is down ({error}); memoryd reconnects by itself, `memoryctl status` shows the store"
                ),
            },
            _ => StoreError::Unavailable {
                kind: ErrorKind::StoreUnavailable,
                message: "the fleet database is not connected yet; try again in a moment".into(),
            },
        }
    }

    /// Runs `f` on a pooled connection, the whole of it (pool wait
    /// included) within `deadline`; a serialization failure or deadlock is
    /// retried once. A connection whose call timed out or failed is
    /// discarded, never returned to the pool; a lost connection turns the
    /// store down.
    pub async fn call<T>(
        &self,
        deadline: Duration,
        f: impl AsyncFn(&mut deadpool_postgres::ClientWrapper) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        if !matches!(self.state(), StoreState::Up { .. }) {
            return Err(self.unavailable());
        }
        let attempt = async || -> Result<T, Failure> {
            let mut client = Checked(Some(self.pool.get().await.map_err(|e| Failure::Pool(e.to_string()))?));
            let r = match client.0.as_deref_mut() {
                Some(c) => f(&mut *c).await,
                None => return Err(Failure::Pool("no connection".into())),
            };
            // A refusal left the connection clean (its transaction rolled
            // back when dropped): only a database error makes it suspect.
            if matches!(r, Ok(_) | Err(Failure::Store(_))) {
                client.keep();
            }
            r
        };
        let run = async || -> Result<T, Failure> {
            match attempt().await {
                Err(e) if e.retryable() => attempt().await,
                r => r,
            }
        };
        let result = match tokio::time::timeout(deadline, run()).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout(deadline)),
        };
        result.map_err(|e| self.answer(e))
    }

    /// The caller's error for a failure, turning the store down when the
    /// connection was lost.
    pub fn answer(&self, e: Failure) -> StoreError {
        match e {
            Failure::Store(e) => e,
            e if e.lost() => {
                let text = e.to_string();
                self.mark_down(text.clone());
                StoreError::Unavailable {
                    kind: ErrorKind::StoreUnavailable,
                    message: format!("the fleet database did not answer ({text}); try again once it is back"),
                }
            }
            e if e.retryable() => StoreError::Unavailable {
                kind: ErrorKind::StoreUnavailable,
                message: format!("the fleet database refused the change twice ({e}); try again"),
            },
            e => StoreError::Unavailable { kind: ErrorKind::Internal, message: format!("fleet database: {e}") },
        }
    }
}

/// A pooled connection that goes back to the pool only when its call
/// succeeded: one left in an unknown state (timed out, failed mid-way) is
/// closed instead.
struct Checked(Option<deadpool_postgres::Object>);

impl Checked {
    fn keep(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

/// A test build's pause inside a transaction (spec 80, scenario 4): with
/// the test sandbox armed and `MEMORYD_TEST_PAUSE_IN_TX` naming `op`
/// (`attach`, `send`, `ack`, `link`, `flush`), the change logs that it is
/// paused, after its writes and before its commit, and waits there (at
/// most a minute) for the harness to kill the process.
pub async fn pause_point(op: &str) {
    let armed = std::env::var_os("MEMORYD_TEST_SANDBOX").is_some_and(|v| v == "1");
    if armed && std::env::var("MEMORYD_TEST_PAUSE_IN_TX").is_ok_and(|v| v == op) {
        tracing::warn!(op, "test: paused inside the transaction");
        eprintln!("memoryd-test: paused inside the transaction of {op}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[cfg(test)]
mod skew_tests {
    use super::Skew;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_host_ahead_of_the_database_maps_its_times_back_and_forth() {
        let host = UNIX_EPOCH + Duration::from_secs(1_000);
        for ms in [300_000, -300_000, 0] {
            let skew = Skew(ms);
            let db = skew.to_db(host);
            assert_eq!(
                host.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 - ms,
                db.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
            );
            assert_eq!(skew.to_host(db), host);
        }
    }
}

//! The configuration (spec 00): TOML file, `MEMORYD_*` environment and
//! command-line flags, in that rising order of precedence. Unknown keys and
//! bad values are errors that name the key and where it was set.

use crate::fleet::names::is_personality;
use crate::host::paths::{Paths, SOCKET_PATH_MAX};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vault: Option<PathBuf>,
    pub mcp_port: u16,
    pub socket_path: Option<PathBuf>,
    pub iapeer_bin: Option<PathBuf>,
    pub registrant: Option<String>,
    pub memoryd_bin: Option<PathBuf>,
    pub memoryctl_bin: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    pub heartbeat_stale_after: Duration,
    pub sweep_interval: Duration,
    pub fleet_refresh_interval: Duration,
    pub lock_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub max_request_bytes: usize,
    pub log_max_bytes: usize,
    pub log_keep: usize,
    pub presence: PresenceConfig,
    pub search: SearchConfig,
    pub store: StoreConfig,
}

/// Where presence, links, inboxes and events last (spec 80).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// `S/store/` and `S/events.jsonl`: one host.
    #[default]
    File,
    /// One PostgreSQL database shared by every host of the fleet.
    Postgres,
}

/// The `[store]` and `[postgres]` tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreConfig {
    pub backend: Backend,
    pub postgres: PostgresConfig,
}

/// The `[postgres]` table: how this host reaches the fleet database.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// A libpq-style URL or key/value string, without a password.
    pub url: Option<String>,
    /// A 0600 file holding the password; else `PGPASSFILE` / `~/.pgpass`.
    pub password_file: Option<PathBuf>,
    /// This host's name in the fleet (`^[a-z][a-z0-9-]{0,31}$`).
    pub host_id: Option<String>,
    /// The schema holding every table.
    pub schema: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// The whole store call for requests that serve hooks and MCP.
    pub call_timeout: Duration,
    /// The same for operator commands.
    pub operator_timeout: Duration,
    /// Full reload of the caches, whatever the notifications said.
    pub resync_every: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            password_file: None,
            host_id: None,
            schema: "memoryd".into(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_millis(800),
            operator_timeout: Duration::from_secs(10),
            resync_every: Duration::from_secs(60),
        }
    }
}

/// The `[search]` table: optional embeddings for hybrid ranking. Without
/// `embeddings_url` search is lexical only.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// An OpenAI-compatible `/v1/embeddings` endpoint (`http://` only).
    pub embeddings_url: Option<String>,
    pub embeddings_model: Option<String>,
    /// A file (mode 0600) holding the API key; the key is never in this file.
    pub embeddings_key_file: Option<PathBuf>,
    /// The name of an environment variable holding the API key.
    pub embeddings_key_env: Option<String>,
    /// The longest one batch request may take.
    pub embeddings_timeout: Duration,
    /// How long a search waits for its query's embedding before it answers lexically.
    pub query_deadline: Duration,
    pub batch_size: usize,
    /// Batch requests in flight at once.
    pub concurrency: usize,
    pub query_prefix: String,
    pub passage_prefix: String,
    /// The k of reciprocal rank fusion: 1/(k + rank).
    pub rrf_k: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            embeddings_url: None,
            embeddings_model: None,
            embeddings_key_file: None,
            embeddings_key_env: None,
            embeddings_timeout: Duration::from_secs(30),
            query_deadline: Duration::from_millis(500),
            batch_size: 32,
            concurrency: 2,
            query_prefix: String::new(),
            passage_prefix: String::new(),
            rrf_k: 60,
        }
    }
}

/// The `[presence]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceConfig {
    pub degraded_after: Duration,
    pub offline_after: Duration,
    pub sweep_every: Duration,
    pub min_client_version: Option<ClientVersion>,
    pub inbox_capacity: usize,
    /// Most messages one peer may send per minute.
    pub peer_send_rate: usize,
    /// Most delivered (and most sent) messages kept per peer.
    pub history_max: usize,
    /// How long delivered and sent messages are kept.
    pub history_age: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vault: None,
            mcp_port: 8766,
            socket_path: None,
            iapeer_bin: None,
            registrant: None,
            memoryd_bin: None,
            memoryctl_bin: None,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_stale_after: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(600),
            fleet_refresh_interval: Duration::from_secs(300),
            lock_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(20),
            max_connections: 64,
            max_request_bytes: 1 << 20,
            log_max_bytes: 10 << 20,
            log_keep: 3,
            presence: PresenceConfig {
                degraded_after: Duration::from_secs(30),
                offline_after: Duration::from_secs(60),
                sweep_every: Duration::from_secs(5),
                min_client_version: None,
                inbox_capacity: 128,
                peer_send_rate: 120,
                history_max: 1000,
                history_age: Duration::from_secs(30 * 24 * 3600),
            },
            search: SearchConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Config {
    /// The control socket: `socket_path`, else `S/memoryd.sock`.
    pub fn socket(&self, paths: &Paths) -> PathBuf {
        self.socket_path.clone().unwrap_or_else(|| paths.default_socket.clone())
    }

    /// The control socket, refused when it is too long for a Unix socket address.
    pub fn checked_socket(&self, paths: &Paths) -> Result<PathBuf, SocketPathTooLong> {
        let socket = self.socket(paths);
        let len = socket.as_os_str().len();
        if len > SOCKET_PATH_MAX {
            return Err(SocketPathTooLong { path: socket, len });
        }
        Ok(socket)
    }
}

/// The control socket path does not fit a Unix socket address.
#[derive(Debug, thiserror::Error)]
#[error(
    "control socket path {path} is {len} bytes, over the {max}-byte limit of a Unix socket path; \
     set `socket_path` in memoryd.toml to a shorter path",
    max = SOCKET_PATH_MAX
)]
pub struct SocketPathTooLong {
    pub path: PathBuf,
    pub len: usize,
}

/// A `MAJOR.MINOR` client version; compares as numbers (`10.0` > `9.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientVersion {
    pub major: u32,
    pub minor: u32,
}

impl FromStr for ClientVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number = |part: &str| -> Option<u32> {
            let canonical = part == "0" || (!part.is_empty() && !part.starts_with('0'));
            if canonical && part.bytes().all(|b| b.is_ascii_digit()) { part.parse().ok() } else { None }
        };
        let (major, minor) = s.split_once('.').ok_or_else(|| format!("{s:?} is not MAJOR.MINOR"))?;
        match (number(major), number(minor)) {
            (Some(major), Some(minor)) => Ok(ClientVersion { major, minor }),
            _ => Err(format!("{s:?} is not MAJOR.MINOR (two numbers without leading zeros)")),
        }
    }
}

impl fmt::Display for ClientVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: PathBuf, line: usize },
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "config {} line {line}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A configuration that cannot be used; the old one stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config {path} line {line}: {message}")]
    Syntax { path: PathBuf, line: usize, message: String },
    #[error("{origin}: {message}")]
    Key { origin: Origin, key: String, message: String },
}

impl ConfigError {
    /// The key at fault, when one is.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Duration,
    Size,
    Port,
    Count,
    AbsPath,
    Personality,
    Version,
    /// An `http://` URL.
    Url,
    /// Any string, empty allowed.
    Text,
    /// `file` or `postgres`.
    Backend,
    /// A PostgreSQL URL or key/value string without a password.
    PgUrl,
    /// A fleet host name (`^[a-z][a-z0-9-]{0,31}$`).
    HostId,
    /// A PostgreSQL schema name (`^[a-z_][a-z0-9_]{0,62}$`).
    Schema,
}

/// Every key: its dotted name and kind.
const KEYS: &[(&str, Kind)] = &[
    ("vault", Kind::AbsPath),
    ("mcp_port", Kind::Port),
    ("socket_path", Kind::AbsPath),
    ("iapeer_bin", Kind::AbsPath),
    ("registrant", Kind::Personality),
    ("memoryd_bin", Kind::AbsPath),
    ("memoryctl_bin", Kind::AbsPath),
    ("heartbeat_interval", Kind::Duration),
    ("heartbeat_stale_after", Kind::Duration),
    ("sweep_interval", Kind::Duration),
    ("fleet_refresh_interval", Kind::Duration),
    ("lock_timeout", Kind::Duration),
    ("shutdown_grace", Kind::Duration),
    ("max_connections", Kind::Count),
    ("max_request_bytes", Kind::Size),
    ("log_max_bytes", Kind::Size),
    ("log_keep", Kind::Count),
    ("presence.degraded_after", Kind::Duration),
    ("presence.offline_after", Kind::Duration),
    ("presence.sweep_every", Kind::Duration),
    ("presence.min_client_version", Kind::Version),
    ("presence.inbox_capacity", Kind::Count),
    ("presence.peer_send_rate", Kind::Count),
    ("presence.history_max", Kind::Count),
    ("presence.history_age", Kind::Duration),
    ("search.embeddings_url", Kind::Url),
    ("search.embeddings_model", Kind::Text),
    ("search.embeddings_key_file", Kind::AbsPath),
    ("search.embeddings_key_env", Kind::Text),
    ("search.embeddings_timeout", Kind::Duration),
    ("search.query_deadline", Kind::Duration),
    ("search.batch_size", Kind::Count),
    ("search.concurrency", Kind::Count),
    ("search.query_prefix", Kind::Text),
    ("search.passage_prefix", Kind::Text),
    ("search.rrf_k", Kind::Count),
    ("store.backend", Kind::Backend),
    ("postgres.url", Kind::PgUrl),
    ("postgres.password_file", Kind::AbsPath),
    ("postgres.host_id", Kind::HostId),
    ("postgres.schema", Kind::Schema),
    ("postgres.pool_size", Kind::Count),
    ("postgres.connect_timeout", Kind::Duration),
    ("postgres.call_timeout", Kind::Duration),
    ("postgres.operator_timeout", Kind::Duration),
    ("postgres.resync_every", Kind::Duration),
];

/// Every key's dotted name, in documentation order.
pub fn key_names() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|(name, _)| *name)
}

/// The environment variable that sets `key`: `MEMORYD_<KEY>` with dots as
/// underscores (`presence.sweep_every` → `MEMORYD_PRESENCE_SWEEP_EVERY`).
pub fn env_var(key: &str) -> String {
    // Built by hand: every memoryctl start names each key's variable once.
    let mut name = String::with_capacity("MEMORYD_".len() + key.len());
    name.push_str("MEMORYD_");
    name.extend(key.chars().map(|c| if c == '.' { '_' } else { c.to_ascii_uppercase() }));
    name
}

/// A value as it arrived: TOML scalars keep their type, the environment and
/// flags give strings.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Str(&'a str),
    Int(i64),
    Other(&'a str),
}

enum Parsed {
    Duration(Duration),
    Number(usize),
    Port(u16),
    Path(PathBuf),
    Name(String),
    Version(ClientVersion),
    Text(String),
    Backend(Backend),
}

fn parse_value(kind: Kind, raw: Raw<'_>, from_text: bool) -> Result<Parsed, String> {
    let int = |raw: Raw<'_>| -> Result<i64, String> {
        match raw {
            Raw::Int(i) => Ok(i),
            Raw::Str(s) if from_text => s.trim().parse().map_err(|_| format!("{s:?} is not a whole number")),
            Raw::Str(s) => Err(format!("{s:?} is a string; write the number without quotes")),
            Raw::Other(t) => Err(format!("expected a whole number, found {t}")),
        }
    };
    let string = |raw: Raw<'_>, what: &str| -> Result<String, String> {
        match raw {
            Raw::Str(s) => Ok(s.to_owned()),
            Raw::Int(i) => Err(format!("expected {what} in quotes, found the number {i}")),
            Raw::Other(t) => Err(format!("expected {what} in quotes, found {t}")),
        }
    };
    match kind {
        Kind::Duration => {
            let s = string(raw, "a duration with a unit such as \"30s\"")?;
            let d = humantime::parse_duration(s.trim())
                .map_err(|e| format!("{s:?} is not a duration ({e}); use a number with a unit such as \"250ms\", \"30s\", \"5m\" or \"1h\""))?;
            if d.is_zero() {
                return Err(format!("{s:?} is zero; the duration must be positive"));
            }
            Ok(Parsed::Duration(d))
        }
        Kind::Size => {
            let bytes = match raw {
                Raw::Str(s) => parse_size(s.trim())?,
                other => u64::try_from(int(other)?).map_err(|_| "a size cannot be negative".to_owned())?,
            };
            if bytes < 1024 {
                return Err(format!("{bytes} bytes is too small; use at least 1024 (\"1KiB\")"));
            }
            Ok(Parsed::Number(usize::try_from(bytes).map_err(|_| format!("{bytes} bytes is too large"))?))
        }
        Kind::Port => {
            let n = int(raw)?;
            u16::try_from(n)
                .map(Parsed::Port)
                .map_err(|_| format!("{n} is not a port; use 0 to 65535 (0 turns the MCP endpoint off)"))
        }
        Kind::Count => {
            let n = int(raw)?;
            match usize::try_from(n) {
                Ok(n) if n >= 1 => Ok(Parsed::Number(n)),
                _ => Err(format!("{n} is not a positive whole number")),
            }
        }
        Kind::AbsPath => {
            let s = string(raw, "a path")?;
            let p = PathBuf::from(&s);
            if !p.is_absolute() {
                return Err(format!("{s:?} is not an absolute path"));
            }
            Ok(Parsed::Path(crate::host::paths::normalize(&p)))
        }
        Kind::Personality => {
            let s = string(raw, "a personality")?;
            if !is_personality(&s) {
                return Err(format!(
                    "{s:?} is not a personality (lower-case letters, digits and dashes, starting with a letter, at most 32)"
                ));
            }
            Ok(Parsed::Name(s))
        }
        Kind::Version => {
            let s = string(raw, "a MAJOR.MINOR version")?;
            s.trim().parse().map(Parsed::Version)
        }
        Kind::Url => {
            let s = string(raw, "a URL")?;
            crate::vault::embed::Endpoint::parse(s.trim()).map(|_| Parsed::Text(s.trim().to_owned()))
        }
        Kind::Text => string(raw, "a string").map(Parsed::Text),
        Kind::Backend => match string(raw, "\"file\" or \"postgres\"")?.trim() {
            "file" => Ok(Parsed::Backend(Backend::File)),
            "postgres" => Ok(Parsed::Backend(Backend::Postgres)),
            other => Err(format!("{other:?} is not a store backend; use \"file\" or \"postgres\"")),
        },
        Kind::PgUrl => {
            let s = string(raw, "a PostgreSQL URL")?;
            if has_password(&s) {
                return Err("the URL holds a password; remove it and put the password in postgres.password_file \
                     (or PGPASSFILE / ~/.pgpass)"
                    .to_owned());
            }
            Ok(Parsed::Text(s.trim().to_owned()))
        }
        Kind::HostId => {
            let s = string(raw, "a host name")?;
            if !is_personality(&s) {
                return Err(format!(
                    "{s:?} is not a host id (lower-case letters, digits and dashes, starting with a letter, at most 32)"
                ));
            }
            Ok(Parsed::Name(s))
        }
        Kind::Schema => {
            let s = string(raw, "a schema name")?;
            if !is_schema(&s) {
                return Err(format!(
                    "{s:?} is not a schema name (lower-case letters, digits and underscores, not starting with a digit, at most 63)"
                ));
            }
            Ok(Parsed::Name(s))
        }
    }
}

/// Whether a PostgreSQL URL (`postgres://user:pw@…`, `?password=`) or
/// key/value string (`password=…`) carries a password.
fn has_password(url: &str) -> bool {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("postgresql://").or_else(|| lower.strip_prefix("postgres://")) {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let userinfo_has_colon = authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'));
        let query = rest.split_once('?').map_or("", |(_, q)| q);
        return userinfo_has_colon || query.split('&').any(|kv| kv.trim_start().starts_with("password="));
    }
    // Key/value form: a `password` key, with or without spaces around `=`.
    lower.match_indices("password").any(|(at, word)| {
        let before = lower[..at].chars().next_back();
        let after = lower[at + word.len()..].trim_start();
        before.is_none_or(char::is_whitespace) && after.starts_with('=')
    })
}

/// `^[a-z_][a-z0-9_]{0,62}$`.
pub fn is_schema(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// This host's default name in the fleet: the hostname lower-cased, every
/// run of other characters turned into `-`, cut to 32 (and made to start
/// with a letter, as the name rule wants).
pub fn default_host_id(hostname: &str) -> String {
    let mut out = String::new();
    for c in hostname.to_ascii_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut id = out.trim_matches('-').to_owned();
    if !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        id = format!("h-{id}");
    }
    id.truncate(32);
    id.trim_end_matches('-').to_owned()
}

impl PostgresConfig {
    /// `postgres.host_id`, else the default made from `hostname`.
    pub fn host_id_or(&self, hostname: &str) -> String {
        self.host_id.clone().unwrap_or_else(|| default_host_id(hostname))
    }
}

/// `1048576`, `"1MiB"`, `"512KiB"`, `"2GB"` and the like.
fn parse_size(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size; use bytes or a unit such as \"1MiB\""))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!("{other:?} is not a size unit; use B, KiB, MiB, GiB, KB, MB or GB"));
        }
    };
    n.checked_mul(factor).ok_or_else(|| format!("{s:?} is too large"))
}

fn apply(config: &mut Config, key: &str, value: Parsed) {
    use Parsed::*;
    let p = &mut config.presence;
    match (key, value) {
        ("vault", Path(v)) => config.vault = Some(v),
        ("mcp_port", Port(v)) => config.mcp_port = v,
        ("socket_path", Path(v)) => config.socket_path = Some(v),
        ("iapeer_bin", Path(v)) => config.iapeer_bin = Some(v),
        ("registrant", Name(v)) => config.registrant = Some(v),
        ("memoryd_bin", Path(v)) => config.memoryd_bin = Some(v),
        ("memoryctl_bin", Path(v)) => config.memoryctl_bin = Some(v),
        ("heartbeat_interval", Duration(v)) => config.heartbeat_interval = v,
        ("heartbeat_stale_after", Duration(v)) => config.heartbeat_stale_after = v,
        ("sweep_interval", Duration(v)) => config.sweep_interval = v,
        ("fleet_refresh_interval", Duration(v)) => config.fleet_refresh_interval = v,
        ("lock_timeout", Duration(v)) => config.lock_timeout = v,
        ("shutdown_grace", Duration(v)) => config.shutdown_grace = v,
        ("max_connections", Number(v)) => config.max_connections = v,
        ("max_request_bytes", Number(v)) => config.max_request_bytes = v,
        ("log_max_bytes", Number(v)) => config.log_max_bytes = v,
        ("log_keep", Number(v)) => config.log_keep = v,
        ("presence.degraded_after", Duration(v)) => p.degraded_after = v,
        ("presence.offline_after", Duration(v)) => p.offline_after = v,
        ("presence.sweep_every", Duration(v)) => p.sweep_every = v,
        ("presence.min_client_version", Version(v)) => p.min_client_version = Some(v),
        ("presence.inbox_capacity", Number(v)) => p.inbox_capacity = v,
        ("presence.peer_send_rate", Number(v)) => p.peer_send_rate = v,
        ("presence.history_max", Number(v)) => p.history_max = v,
        ("presence.history_age", Duration(v)) => p.history_age = v,
        ("search.embeddings_url", Text(v)) => config.search.embeddings_url = Some(v),
        ("search.embeddings_model", Text(v)) => config.search.embeddings_model = Some(v),
        ("search.embeddings_key_file", Path(v)) => config.search.embeddings_key_file = Some(v),
        ("search.embeddings_key_env", Text(v)) => config.search.embeddings_key_env = Some(v),
        ("search.embeddings_timeout", Duration(v)) => config.search.embeddings_timeout = v,
        ("search.query_deadline", Duration(v)) => config.search.query_deadline = v,
        ("search.batch_size", Number(v)) => config.search.batch_size = v,
        ("search.concurrency", Number(v)) => config.search.concurrency = v,
        ("search.query_prefix", Text(v)) => config.search.query_prefix = v,
        ("search.passage_prefix", Text(v)) => config.search.passage_prefix = v,
        ("search.rrf_k", Number(v)) => config.search.rrf_k = v,
        ("store.backend", Backend(v)) => config.store.backend = v,
        ("postgres.url", Text(v)) => config.store.postgres.url = Some(v),
        ("postgres.password_file", Path(v)) => config.store.postgres.password_file = Some(v),
        ("postgres.host_id", Name(v)) => config.store.postgres.host_id = Some(v),
        ("postgres.schema", Name(v)) => config.store.postgres.schema = v,
        ("postgres.pool_size", Number(v)) => config.store.postgres.pool_size = v,
        ("postgres.connect_timeout", Duration(v)) => config.store.postgres.connect_timeout = v,
        ("postgres.call_timeout", Duration(v)) => config.store.postgres.call_timeout = v,
        ("postgres.operator_timeout", Duration(v)) => config.store.postgres.operator_timeout = v,
        ("postgres.resync_every", Duration(v)) => config.store.postgres.resync_every = v,
        // KEYS and this table name the same keys with the same kinds.
        (key, _) => debug_assert!(false, "config key {key} has no setter"),
    }
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: PathBuf,
    /// False when the file does not exist and only defaults, environment and
    /// flags apply.
    pub file_found: bool,
}

/// The layers above the file: `(key, value, origin)` from flags.
pub type FlagOverrides = Vec<(&'static str, String, String)>;

/// Loads the configuration: defaults, then the file (a missing default file
/// is fine; a missing `MEMORYD_CONFIG` file is not), then `MEMORYD_*`
/// variables, then flags.
pub fn load(
    file: &Path,
    file_required: bool,
    var: impl Fn(&str) -> Option<OsString>,
    flags: &FlagOverrides,
) -> Result<Loaded, ConfigError> {
    let mut config = Config::default();
    let mut origins: HashMap<&'static str, Origin> = HashMap::new();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !file_required => None,
        Err(error) => {
            return Err(ConfigError::Read { path: file.to_path_buf(), error });
        }
    };
    if let Some(text) = &text {
        apply_file(&mut config, &mut origins, file, text)?;
    }
    for (key, kind) in KEYS {
        let name = env_var(key);
        let Some(value) = var(&name) else { continue };
        let origin = Origin::Env(name);
        let value = value.into_string().map_err(|_| key_error(&origin, key, "the value is not UTF-8".to_owned()))?;
        set(&mut config, &mut origins, key, *kind, Raw::Str(&value), true, origin)?;
    }
    for (key, value, flag) in flags {
        let kind =
            kind_of(key).ok_or_else(|| key_error(&Origin::Flag(flag.clone()), key, format!("unknown key `{key}`")))?;
        set(&mut config, &mut origins, key, kind, Raw::Str(value), true, Origin::Flag(flag.clone()))?;
    }
    check_consistency(&config, &origins, file)?;
    Ok(Loaded { config, file: file.to_path_buf(), file_found: text.is_some() })
}

/// A value `init` writes into the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Text(String),
    Number(i64),
}

/// The config file's text with `settings` set, its comments, order and
/// other keys kept; refused (naming the key) if the result is not a valid
/// config.
pub fn with_settings(file: &Path, text: &str, settings: &[(&str, Setting)]) -> Result<String, ConfigError> {
    let mut doc = text.parse::<toml_edit::DocumentMut>().map_err(|e| ConfigError::Syntax {
        path: file.to_path_buf(),
        line: line_of(text, e.span().map_or(0, |s| s.start)),
        message: format!("not valid TOML: {}", e.message()),
    })?;
    for (key, value) in settings {
        let value = match value {
            Setting::Text(s) => toml_edit::value(s.as_str()),
            Setting::Number(n) => toml_edit::value(*n),
        };
        // `postgres.host_id` goes into the `[postgres]` table.
        match key.split_once('.') {
            Some((table, leaf)) => {
                if !doc.contains_table(table) {
                    doc[table] = toml_edit::table();
                }
                doc[table][leaf] = value;
            }
            None => doc[*key] = value,
        }
    }
    let text = doc.to_string();
    let mut config = Config::default();
    apply_file(&mut config, &mut HashMap::new(), file, &text)?;
    Ok(text)
}

fn kind_of(key: &str) -> Option<Kind> {
    KEYS.iter().find(|(name, _)| *name == key).map(|(_, kind)| *kind)
}

fn key_error(origin: &Origin, key: &str, message: String) -> ConfigError {
    ConfigError::Key { origin: origin.clone(), key: key.to_owned(), message }
}

fn set(
    config: &mut Config,
    origins: &mut HashMap<&'static str, Origin>,
    key: &str,
    kind: Kind,
    raw: Raw<'_>,
    from_text: bool,
    origin: Origin,
) -> Result<(), ConfigError> {
    let value = parse_value(kind, raw, from_text).map_err(|m| key_error(&origin, key, format!("`{key}`: {m}")))?;
    apply(config, key, value);
    if let Some((name, _)) = KEYS.iter().find(|(name, _)| *name == key) {
        origins.insert(name, origin);
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn apply_file(
    config: &mut Config,
    origins: &mut HashMap<&'static str, Origin>,
    path: &Path,
    text: &str,
) -> Result<(), ConfigError> {
    let doc = toml_edit::Document::parse(text.to_owned()).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: line_of(text, e.span().map_or(0, |s| s.start)),
        message: format!("not valid TOML: {}", e.message()),
    })?;
    let origin_at = |span: Option<std::ops::Range<usize>>| Origin::File {
        path: path.to_path_buf(),
        line: line_of(text, span.map_or(0, |s| s.start)),
    };
    let mut entries = Vec::new();
    collect(doc.as_table(), "", &mut entries);
    for (dotted, key_span, raw) in entries {
        let origin = origin_at(key_span);
        let Some(kind) = kind_of(&dotted) else {
            let hint = closest_key(&dotted).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
            return Err(key_error(&origin, &dotted, format!("unknown key `{dotted}`{hint}")));
        };
        set(config, origins, &dotted, kind, raw, false, origin)?;
    }
    Ok(())
}

type Span = Option<std::ops::Range<usize>>;

/// Flattens the document into `(dotted key, key span, value)`; a table is
/// descended into only where a section is expected (`presence`).
fn collect<'a>(table: &'a toml_edit::Table, prefix: &str, out: &mut Vec<(String, Span, Raw<'a>)>) {
    for (key, item) in table.iter() {
        let dotted = if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
        let span = table.key(key).and_then(|k| k.span());
        let is_section =
            KEYS.iter().any(|(name, _)| name.strip_prefix(dotted.as_str()).is_some_and(|rest| rest.starts_with('.')));
        match (item.as_table(), item.as_inline_table()) {
            (Some(sub), _) if is_section => collect(sub, &dotted, out),
            (_, Some(sub)) if is_section => {
                for (k, v) in sub.iter() {
                    out.push((format!("{dotted}.{k}"), sub.key(k).and_then(|k| k.span()), raw_of(v)));
                }
            }
            _ => out.push((dotted, span, item.as_value().map_or(Raw::Other(item.type_name()), raw_of))),
        }
    }
}

fn raw_of(value: &toml_edit::Value) -> Raw<'_> {
    match value {
        toml_edit::Value::String(s) => Raw::Str(s.value()),
        toml_edit::Value::Integer(i) => Raw::Int(*i.value()),
        other => Raw::Other(other.type_name()),
    }
}

fn closest_key(unknown: &str) -> Option<&'static str> {
    let distance = |a: &str, b: &str| -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    let leaf = |k: &str| k.rsplit('.').next().unwrap_or(k).to_owned();
    KEYS.iter()
        .map(|(name, _)| (distance(unknown, name).min(distance(&leaf(unknown), &leaf(name))), *name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, name)| name)
}

fn check_consistency(config: &Config, origins: &HashMap<&'static str, Origin>, file: &Path) -> Result<(), ConfigError> {
    let origin_of =
        |key: &str| origins.get(key).cloned().unwrap_or_else(|| Origin::File { path: file.to_path_buf(), line: 0 });
    let p = &config.presence;
    if p.offline_after <= p.degraded_after {
        let key = if origins.contains_key("presence.offline_after") {
            "presence.offline_after"
        } else {
            "presence.degraded_after"
        };
        return Err(key_error(
            &origin_of(key),
            key,
            format!(
                "`presence.offline_after` ({}) must be longer than `presence.degraded_after` ({})",
                humantime::format_duration(p.offline_after),
                humantime::format_duration(p.degraded_after)
            ),
        ));
    }
    let search = &config.search;
    if search.embeddings_url.is_some() != search.embeddings_model.is_some() {
        let key = if search.embeddings_url.is_some() { "search.embeddings_model" } else { "search.embeddings_url" };
        let set = if search.embeddings_url.is_some() { "search.embeddings_url" } else { "search.embeddings_model" };
        return Err(key_error(
            &origin_of(set),
            key,
            format!("`{set}` is set but `{key}` is not; set both to turn embeddings on, or neither"),
        ));
    }
    if config.store.backend == Backend::Postgres && config.store.postgres.url.is_none() {
        return Err(key_error(
            &origin_of("store.backend"),
            "postgres.url",
            "`store.backend` is \"postgres\" but `postgres.url` is not set; set it to the fleet database's URL"
                .to_owned(),
        ));
    }
    if config.heartbeat_stale_after <= config.heartbeat_interval {
        let key =
            if origins.contains_key("heartbeat_stale_after") { "heartbeat_stale_after" } else { "heartbeat_interval" };
        return Err(key_error(
            &origin_of(key),
            key,
            format!(
                "`heartbeat_stale_after` ({}) must be longer than `heartbeat_interval` ({})",
                humantime::format_duration(config.heartbeat_stale_after),
                humantime::format_duration(config.heartbeat_interval)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use std::io::Write;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn load_text(text: &str) -> Result<Loaded, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        load(f.path(), true, no_env, &Vec::new())
    }

    #[test]
    fn defaults_without_a_file() {
        let loaded = load(Path::new("/nonexistent/memoryd.toml"), false, no_env, &Vec::new()).unwrap();
        assert!(!loaded.file_found);
        assert_eq!(loaded.config, Config::default());
        assert!(load(Path::new("/nonexistent/memoryd.toml"), true, no_env, &Vec::new()).is_err());
    }

    #[test]
    fn reads_every_kind() {
        let c = load_text(
            "vault = \"/v\"\nmcp_port = 0\nheartbeat_interval = \"250ms\"\nmax_request_bytes = \"2MiB\"\nregistrant = \"boris\"\n\
             [presence]\nmin_client_version = \"10.2\"\ninbox_capacity = 7\n",
        )
        .unwrap()
        .config;
        assert_eq!(c.vault, Some(PathBuf::from("/v")));
        assert_eq!(c.mcp_port, 0);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.max_request_bytes, 2 << 20);
        assert_eq!(c.registrant.as_deref(), Some("boris"));
        assert_eq!(c.presence.min_client_version, Some(ClientVersion { major: 10, minor: 2 }));
        assert_eq!(c.presence.inbox_capacity, 7);
        let search = load_text(
            "[search]\nembeddings_url = \"http://127.0.0.1:11434/v1/embeddings\"\nembeddings_model = \"e5\"\n\
             query_prefix = \"query: \"\nrrf_k = 30\nquery_deadline = \"200ms\"\n",
        )
        .unwrap()
        .config
        .search;
        assert_eq!(search.embeddings_url.as_deref(), Some("http://127.0.0.1:11434/v1/embeddings"));
        assert_eq!((search.query_prefix.as_str(), search.rrf_k), ("query: ", 30));
        assert_eq!(search.query_deadline, Duration::from_millis(200));
        let e = load_text("[search]\nembeddings_url = \"http://127.0.0.1:1/v1/embeddings\"\n").unwrap_err();
        assert_eq!(e.key(), Some("search.embeddings_model"), "{e}");
        let e = load_text("[search]\nembeddings_url = \"ftp://x/v1\"\nembeddings_model = \"m\"\n").unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let inline = load_text("presence = { inbox_capacity = 9 }\n").unwrap().config;
        assert_eq!(inline.presence.inbox_capacity, 9);
    }

    #[test]
    fn errors_name_key_file_and_line() {
        let e = load_text("mcp_port = 1\n\nheartbeat_intervl = \"5s\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("line 3")
                && msg.contains("heartbeat_intervl")
                && msg.contains("did you mean `heartbeat_interval`"),
            "{msg}"
        );
        let e = load_text("[presence]\nsweep_every = \"5 parsecs\"\n").unwrap_err();
        assert_eq!(e.key(), Some("presence.sweep_every"));
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = load_text("mcp_port = \"8766\"\n").unwrap_err();
        assert!(e.to_string().contains("without quotes"), "{e}");
        let e = load_text("mcp_port = 70000\n").unwrap_err();
        assert!(e.to_string().contains("not a port"), "{e}");
        let e = load_text("vault = \"relative/dir\"\n").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = load_text("[other]\nx = 1\n").unwrap_err();
        assert_eq!(e.key(), Some("other"));
        let e = load_text("mcp_port = \n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 1, .. }), "{e}");
        let e = load_text("[presence]\ndegraded_after = \"2m\"\n").unwrap_err();
        assert!(e.to_string().contains("offline_after"), "{e}");
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"mcp_port = 1\nlock_timeout = \"1s\"\nsweep_interval = \"1m\"\n").unwrap();
        let env = |k: &str| match k {
            "MEMORYD_MCP_PORT" => Some(OsString::from("2")),
            "MEMORYD_LOCK_TIMEOUT" => Some(OsString::from("2s")),
            _ => None,
        };
        let flags = vec![("mcp_port", "3".to_owned(), "--mcp-port".to_owned())];
        let c = load(f.path(), true, env, &flags).unwrap().config;
        assert_eq!(c.mcp_port, 3);
        assert_eq!(c.lock_timeout, Duration::from_secs(2));
        assert_eq!(c.sweep_interval, Duration::from_secs(60));
        let bad = |k: &str| (k == "MEMORYD_PRESENCE_INBOX_CAPACITY").then(|| OsString::from("zero"));
        let e = load(f.path(), true, bad, &Vec::new()).unwrap_err();
        assert!(e.to_string().contains("MEMORYD_PRESENCE_INBOX_CAPACITY"), "{e}");
    }

    #[test]
    fn versions_compare_as_numbers() {
        let v = |s: &str| s.parse::<ClientVersion>().unwrap();
        assert!(v("10.0") > v("9.0"));
        assert!(v("1.10") > v("1.9"));
        for bad in ["1", "1.", "01.0", "1.02", "a.b", "1.0.0", "-1.0"] {
            assert!(bad.parse::<ClientVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_store_keys() {
        let c = load_text(
            "[store]\nbackend = \"postgres\"\n[postgres]\nurl = \"host=/run/postgresql dbname=fleet\"\n\
             host_id = \"box-1\"\nschema = \"t_1\"\ncall_timeout = \"300ms\"\npool_size = 2\n",
        )
        .unwrap()
        .config
        .store;
        assert_eq!(c.backend, Backend::Postgres);
        assert_eq!(c.postgres.url.as_deref(), Some("host=/run/postgresql dbname=fleet"));
        assert_eq!((c.postgres.host_id.as_deref(), c.postgres.schema.as_str()), (Some("box-1"), "t_1"));
        assert_eq!((c.postgres.call_timeout, c.postgres.pool_size), (Duration::from_millis(300), 2));
        let e = load_text("[store]\nbackend = \"postgres\"\n").unwrap_err();
        assert_eq!(e.key(), Some("postgres.url"), "{e}");
        for url in [
            "postgres://u:secret@db/fleet",
            "postgresql://db/fleet?sslmode=require&password=x",
            "host=db password=x",
            "host=db password = x",
        ] {
            let e = load_text(&format!("[postgres]\nurl = {url:?}\n")).unwrap_err();
            assert!(e.to_string().contains("password_file"), "{url}: {e}");
        }
        for url in ["postgres://u@db:5432/fleet", "host=db user=passwordless dbname=fleet"] {
            assert!(load_text(&format!("[postgres]\nurl = {url:?}\n")).is_ok(), "{url}");
        }
        for (key, bad) in [("host_id", "Box"), ("schema", "1x"), ("schema", "a-b")] {
            let e = load_text(&format!("[postgres]\n{key} = {bad:?}\n")).unwrap_err();
            assert_eq!(e.key(), Some(format!("postgres.{key}").as_str()), "{e}");
        }
        let e = load_text("[store]\nbackend = \"sqlite\"\n").unwrap_err();
        assert!(e.to_string().contains("postgres"), "{e}");
    }

    #[test]
    fn default_host_ids_follow_the_name_rule() {
        for (hostname, id) in [
            ("Build.Example.COM", "build-example-com"),
            ("web_01--a", "web-01-a"),
            ("9lives", "h-9lives"),
            ("", "h"),
            (&"x".repeat(40), &"x".repeat(32)),
        ] {
            assert_eq!(default_host_id(hostname), id);
            assert!(is_personality(&default_host_id(hostname)), "{hostname}");
        }
    }

    #[test]
    fn settings_go_into_their_table() {
        let path = Path::new("/r/memoryd.toml");
        let text = with_settings(
            path,
            "mcp_port = 0\n[store]\nbackend = \"file\"\n",
            &[("postgres.host_id", Setting::Text("box".into()))],
        )
        .unwrap();
        assert!(text.contains("[postgres]\nhost_id = \"box\""), "{text}");
    }

    #[test]
    fn socket_path_limit() {
        let paths = Paths::new(PathBuf::from(format!("/{}", "r".repeat(120))));
        let e = Config::default().checked_socket(&paths).unwrap_err();
        assert!(e.to_string().contains("socket_path"), "{e}");
    }
}

/// Every key with its effective value, in documentation order, for
/// `memoryctl config check`.
pub fn describe(config: &Config) -> Vec<(&'static str, String)> {
    let path = |p: &Option<PathBuf>| p.as_ref().map_or("unset".to_owned(), |p| p.display().to_string());
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    let unset = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".to_owned());
    let p = &config.presence;
    let s = &config.search;
    let pg = &config.store.postgres;
    vec![
        ("vault", path(&config.vault)),
        ("mcp_port", config.mcp_port.to_string()),
        ("socket_path", path(&config.socket_path)),
        ("iapeer_bin", path(&config.iapeer_bin)),
        ("registrant", config.registrant.clone().unwrap_or_else(|| "unset".to_owned())),
        ("memoryd_bin", path(&config.memoryd_bin)),
        ("memoryctl_bin", path(&config.memoryctl_bin)),
        ("heartbeat_interval", dur(config.heartbeat_interval)),
        ("heartbeat_stale_after", dur(config.heartbeat_stale_after)),
        ("sweep_interval", dur(config.sweep_interval)),
        ("fleet_refresh_interval", dur(config.fleet_refresh_interval)),
        ("lock_timeout", dur(config.lock_timeout)),
        ("shutdown_grace", dur(config.shutdown_grace)),
        ("max_connections", config.max_connections.to_string()),
        ("max_request_bytes", config.max_request_bytes.to_string()),
        ("log_max_bytes", config.log_max_bytes.to_string()),
        ("log_keep", config.log_keep.to_string()),
        ("presence.degraded_after", dur(p.degraded_after)),
        ("presence.offline_after", dur(p.offline_after)),
        ("presence.sweep_every", dur(p.sweep_every)),
        ("presence.min_client_version", p.min_client_version.map_or("unset".to_owned(), |v| v.to_string())),
        ("presence.inbox_capacity", p.inbox_capacity.to_string()),
        ("presence.peer_send_rate", p.peer_send_rate.to_string()),
        ("presence.history_max", p.history_max.to_string()),
        ("presence.history_age", dur(p.history_age)),
        ("search.embeddings_url", unset(&s.embeddings_url)),
        ("search.embeddings_model", unset(&s.embeddings_model)),
        ("search.embeddings_key_file", path(&s.embeddings_key_file)),
        ("search.embeddings_key_env", unset(&s.embeddings_key_env)),
        ("search.embeddings_timeout", dur(s.embeddings_timeout)),
        ("search.query_deadline", dur(s.query_deadline)),
        ("search.batch_size", s.batch_size.to_string()),
        ("search.concurrency", s.concurrency.to_string()),
        ("search.query_prefix", format!("{:?}", s.query_prefix)),
        ("search.passage_prefix", format!("{:?}", s.passage_prefix)),
        ("search.rrf_k", s.rrf_k.to_string()),
        (
            "store.backend",
            match config.store.backend {
                Backend::File => "file",
                Backend::Postgres => "postgres",
            }
            .to_owned(),
        ),
        // The URL never holds a password (refused when loading).
        ("postgres.url", unset(&pg.url)),
        ("postgres.password_file", path(&pg.password_file)),
        (
            "postgres.host_id",
            pg.host_id
                .clone()
                .unwrap_or_else(|| format!("unset (default {})", pg.host_id_or(&crate::host::heartbeat::hostname()))),
        ),
        ("postgres.schema", pg.schema.clone()),
        ("postgres.pool_size", pg.pool_size.to_string()),
        ("postgres.connect_timeout", dur(pg.connect_timeout)),
        ("postgres.call_timeout", dur(pg.call_timeout)),
        ("postgres.operator_timeout", dur(pg.operator_timeout)),
        ("postgres.resync_every", dur(pg.resync_every)),
    ]
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod describe_tests {
    use super::*;

    #[test]
    fn describes_every_key_in_order() {
        let names: Vec<_> = describe(&Config::default()).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, key_names().collect::<Vec<_>>());
    }

    /// config/memoryd.toml documents every key: each appears as `key =`
    /// (or commented out, `# key =`) in its table.
    #[test]
    fn the_shipped_file_documents_every_key() {
        let text = include_str!("../../../config/memoryd.toml");
        let mut table = String::new();
        let mut seen = Vec::new();
        for line in text.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = format!("{name}.");
            } else if let Some((key, _)) = line.split_once(" = ")
                && !key.contains(' ')
            {
                seen.push(format!("{table}{key}"));
            }
        }
        for key in key_names() {
            assert!(seen.iter().any(|k| k == key), "config/memoryd.toml does not document `{key}`");
        }
        // The shipped file as it is loads.
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        let config = load(file.path(), true, |_| None, &Vec::new()).unwrap().config;
        assert_eq!(config, Config::default());
    }
}

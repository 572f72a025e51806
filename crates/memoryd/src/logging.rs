//! Where memoryd's log lines go and how they look. Under journald (its
//! stderr is the stream `JOURNAL_STREAM` names) each line starts with its
//! syslog priority (`<3>` error … `<7>` debug) and carries no time of its
//! own, so `journalctl -p warning` filters it; on a terminal it is coloured
//! unless `NO_COLOR` is set; into a regular file (as `memoryctl daemon
//! start` redirects it) it is plain and the file is rotated by size.

use memoryd_core::config::Config;
use memoryd_core::host::files::{FileError, FileGuard};
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Where stderr goes, learned once at start-up (stderr is the process's).
static STDERR: OnceLock<Stderr> = OnceLock::new();

#[derive(Debug, Clone, PartialEq)]
enum Stderr {
    Journal,
    /// A regular file, by the path it had at start-up.
    File(PathBuf),
    Other,
}

fn stderr_kind() -> &'static Stderr {
    STDERR.get_or_init(|| {
        // The magic link names the open file itself, even once renamed.
        let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return Stderr::Other };
        let journal = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
            let (dev, ino) = v.split_once(':')?;
            Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
        });
        if journal == Some((meta.dev(), meta.ino())) {
            Stderr::Journal
        } else if meta.file_type().is_file() {
            std::fs::read_link("/proc/self/fd/2").map_or(Stderr::Other, Stderr::File)
        } else {
            Stderr::Other
        }
    })
}

/// Installs the subscriber; `verbose` makes debug the default level
/// (`RUST_LOG` still wins).
pub fn init(verbose: bool) {
    let default = if verbose { Level::DEBUG } else { Level::INFO };
    let mut filter = tracing_subscriber::EnvFilter::builder().with_default_directive(default.into()).from_env_lossy();
    // The MCP SDK logs every stateless request at info; keep its warnings.
    if std::env::var_os("RUST_LOG").is_none()
        && let Ok(quiet) = "rmcp=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let journal = *stderr_kind() == Stderr::Journal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(!journal && colour_allowed(std::io::stderr().is_terminal()))
        .with_env_filter(filter);
    if journal { builder.event_format(JournalLine).init() } else { builder.init() }
}

/// Colour only on a terminal, and never with `NO_COLOR` set to anything
/// (no-color.org).
pub fn colour_allowed(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Rotates memoryd's log file when stderr is one and it grew past
/// `log_max_bytes`, then points stderr at a fresh file of the same name.
/// Called at every heartbeat; true when it rotated.
pub fn rotate_if_large(files: &FileGuard, config: &Config) -> Result<bool, FileError> {
    let Stderr::File(path) = stderr_kind() else { return Ok(false) };
    if !files.rotate_log(path, config.log_max_bytes as u64, config.log_keep)? {
        return Ok(false);
    }
    let fresh = files.open_append(path)?;
    nix::unistd::dup2_stderr(&fresh).map_err(|e| FileError::Io {
        op: "redirect stderr to",
        path: path.clone(),
        error: std::io::Error::from(e),
    })?;
    tracing::info!(log = %path.display(), "log rotated");
    Ok(true)
}

/// `<priority>message fields`: journald reads the priority and stamps the
/// time itself.
struct JournalLine;

impl<S, N> FormatEvent<S, N> for JournalLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The syslog priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

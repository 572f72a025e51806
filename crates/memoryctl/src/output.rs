//! Text for people: aligned columns, colour only on a TTY or with
//! `FORCE_COLOR`, never with `NO_COLOR`.

use memoryd_proto::status::HostStatus;
use memoryd_proto::{Progress, ProgressStatus};
use std::io::IsTerminal;

#[derive(Debug, Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    /// The style of stdout.
    pub fn detect() -> Style {
        Style::for_stream(std::io::stdout().is_terminal())
    }

    /// Colour on a terminal or with `FORCE_COLOR`, never with `NO_COLOR`.
    pub fn for_stream(terminal: bool) -> Style {
        let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
        let color = if set("NO_COLOR") { false } else { set("FORCE_COLOR") || terminal };
        Style { color }
    }

    pub fn is_coloured(&self) -> bool {
        self.color
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }

    pub fn good(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn bad(&self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn warn(&self, text: &str) -> String {
        self.paint("33", text)
    }

    /// One `update` line: `<ok  |FAIL|skip>  <step padded to 18>  <detail>`,
    /// or, for a failed peer-runtime under a step (named
    /// `<personality>:<runtime>`), `      FAIL <peer>:<runtime> — <detail>`.
    pub fn update_line(&self, p: &Progress) -> String {
        if is_sub_line(p) {
            return format!("      {} {} — {}", self.bad("FAIL"), p.name, p.detail);
        }
        let mark = match p.status {
            ProgressStatus::Ok | ProgressStatus::Repaired => self.good("ok  "),
            ProgressStatus::Skip => "skip".to_owned(),
            ProgressStatus::Warn => self.warn("warn"),
            ProgressStatus::Fail => self.bad("FAIL"),
        };
        format!("{mark}  {:<18}  {}", p.name, p.detail).trim_end().to_owned()
    }

    /// One `verify` line (and any other streamed progress):
    /// `<mark, 8 wide> <name padded to 18>  <detail>`.
    pub fn progress(&self, p: &Progress) -> String {
        let mark = match p.status {
            ProgressStatus::Ok => self.good("ok      "),
            ProgressStatus::Repaired => self.good("repaired"),
            ProgressStatus::Skip => "skip    ".to_owned(),
            ProgressStatus::Warn => self.warn("warn    "),
            ProgressStatus::Fail => self.bad("FAIL    "),
        };
        format!("{mark} {:<18}  {}", p.name, p.detail).trim_end().to_owned()
    }
}

fn age(secs: Option<u64>) -> String {
    secs.map_or("never".to_owned(), |s| {
        format!("{} ago", humantime::format_duration(std::time::Duration::from_secs(s)))
    })
}

/// `status` as aligned lines, one per fact.
pub fn status_lines(s: &HostStatus, style: Style) -> Vec<String> {
    let mut rows: Vec<(&str, String)> = Vec::new();
    let running = match (s.running, s.pid) {
        (true, Some(pid)) => style.good(&format!(
            "running (pid {pid}{})",
            s.supervisor.as_ref().map(|v| format!(", under {v}")).unwrap_or_default()
        )),
        (false, Some(pid)) => style.bad(&format!("not answering (pid {pid} holds the lock)")),
        _ => style.bad("not running"),
    };
    rows.push(("memoryd", running));
    rows.push(("version", s.version.clone().unwrap_or_else(|| "unknown".to_owned())));
    if let Some(up) = s.uptime_secs {
        rows.push(("uptime", humantime::format_duration(std::time::Duration::from_secs(up)).to_string()));
    }
    rows.push(("root", s.root.clone()));
    rows.push((
        "heartbeat",
        match &s.watch {
            Some(w) => format!("{}, watch {w}", age(s.heartbeat_age_secs)),
            None => "none".to_owned(),
        },
    ));
    rows.push((
        "fleet",
        match s.fleet.peers {
            Some(n) => format!("{n} peers, checked {}", age(s.fleet.checked_age_secs)),
            None => "no map".to_owned(),
        },
    ));
    // Without a daemon the store's facts are as it last left them, and
    // what only a daemon knows is unknown, never a zero.
    let stored = if s.running { "" } else { " (as stored)" };
    rows.push((
        "last sweep",
        match (&s.last_sweep, s.running) {
            (Some(sw), _) => format!("{}: {} ok, {} failed{stored}", sw.at, sw.ok, sw.failed),
            (None, true) => "none yet".to_owned(),
            (None, false) => "none recorded".to_owned(),
        },
    ));
    rows.push(("provision lock", s.lock.holder.clone().map_or("free".to_owned(), |h| format!("held by {h}"))));
    rows.push((
        "presence",
        match &s.presence {
            Some(p) => format!("{} online, {} degraded, {} offline{stored}", p.online, p.degraded, p.offline),
            None => "unknown (the presence store does not load; see: memoryctl verify)".to_owned(),
        },
    ));
    rows.push((
        "messages",
        s.waiting_messages.map_or("unknown (the inboxes do not load)".to_owned(), |n| format!("{n} waiting")),
    ));
    if let Some(store) = &s.store {
        rows.push(("store", store_line(store, style)));
    }
    rows.push((
        "mcp",
        match s.mcp.port {
            0 => "off".to_owned(),
            port => match (s.mcp.listening, &s.mcp.error) {
                (Some(true), _) if s.mcp.uid_check == Some(false) => format!("port {port}, listening, uid check off"),
                (Some(true), _) => format!("port {port}, listening"),
                (Some(false), Some(error)) => format!("port {port}, not listening: {error}"),
                (Some(false), None) => format!("port {port}, not listening"),
                (None, _) => format!("port {port}, unknown (no daemon answered)"),
            },
        },
    ));
    rows.push((
        "vault",
        match (&s.vault.path, s.vault.notes) {
            (Some(p), Some(notes)) => {
                let watched = if s.vault.watching == Some(false) { ", not watched" } else { "" };
                format!("{p}, {notes} notes indexed{watched}")
            }
            (Some(p), None) => format!("{p}, index unknown (no daemon answered)"),
            (None, _) => "no vault configured".to_owned(),
        },
    ));
    if let Some(e) = &s.vault.embeddings {
        use memoryd_proto::status::EndpointHealth;
        let notes = s.vault.notes.unwrap_or(0);
        let health = match (e.health, &e.error) {
            (EndpointHealth::Down, Some(error)) => style.bad(&format!("down: {error}")),
            (EndpointHealth::Down, None) => style.bad("down"),
            (EndpointHealth::Up, _) => style.good("up"),
            (EndpointHealth::Unknown, _) => "not asked yet".to_owned(),
        };
        rows.push((
            "embeddings",
            format!("{} at {}, {}/{notes} notes embedded, {health}", e.model, e.endpoint, e.embedded),
        ));
    }
    rows.push(("healthy", if s.healthy { style.good("yes") } else { style.bad("no") }));
    for problem in &s.problems {
        rows.push(("problem", style.warn(problem)));
    }
    rows.into_iter().map(|(k, v)| format!("{k:<15} {v}")).collect()
}

/// The lines of one long command: printed as they come (text), kept for
/// `--json`.
pub struct Lines {
    json: bool,
    style: Style,
    /// `update` marks (4 wide) rather than `verify` marks (8 wide).
    update: bool,
    items: Vec<Progress>,
}

impl Lines {
    pub fn new(json: bool, style: Style, update: bool) -> Lines {
        Lines { json, style, update, items: Vec::new() }
    }

    pub fn push(&mut self, p: Progress) {
        if !self.json {
            println!("{}", if self.update { self.style.update_line(&p) } else { self.style.progress(&p) });
        }
        self.items.push(p);
    }

    pub fn add(&mut self, name: &str, status: ProgressStatus, detail: &str) {
        self.push(Progress { id: serde_json::Value::Null, name: name.to_owned(), status, detail: detail.to_owned() });
    }

    /// Lines reported `fail`, sub-lines of a failed step excluded.
    pub fn problems(&self) -> usize {
        self.items.iter().filter(|p| p.status == ProgressStatus::Fail && !is_sub_line(p)).count()
    }

    /// The lines as `host.verify` reports its checks.
    pub fn json(&self) -> Vec<memoryd_proto::host::Check> {
        self.items
            .iter()
            .map(|p| memoryd_proto::host::Check { name: p.name.clone(), status: p.status, detail: p.detail.clone() })
            .collect()
    }
}

/// A failed peer-runtime under an `update` step, named `<peer>:<runtime>`.
fn is_sub_line(p: &Progress) -> bool {
    p.name.contains(':') && !p.name.contains('[')
}

/// The store's row of `status`: `file, up`, or the fleet database's state
/// with its host, schema and clock skew.
fn store_line(store: &memoryd_proto::status::StoreStatus, style: Style) -> String {
    let since = store
        .since
        .as_ref()
        .and_then(|t| std::time::SystemTime::now().duration_since(t.time()).ok())
        .map(|d| format!(" for {}", humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))))
        .unwrap_or_default();
    let state = format!("{}{since}", store.state);
    let state = if store.state == "up" { style.good(&state) } else { style.bad(&state) };
    let mut line = format!("{}, {state}", store.backend);
    if let Some(host) = &store.host_id {
        line.push_str(&format!(", host {host}"));
    }
    if let Some(name) = &store.schema_name {
        line.push_str(&format!(", schema {name}"));
    }
    if let (Some(version), Some(floor)) = (store.schema, store.compat_floor) {
        line.push_str(&format!(" v{version} (floor {floor})"));
    }
    if let Some(skew) = store.clock_skew_ms.filter(|s| *s != 0) {
        line.push_str(&format!(", clock skew {skew} ms"));
    }
    if let Some(error) = &store.last_error {
        line.push_str(&format!(": {error}"));
    }
    line
}

//! The frame: the host in two lines, the nodes, the newest events and,
//! live, the keys. It fits 80×24 and draws into any buffer, so `--once`
//! prints the same frame as text.

use super::model::{Model, short_age};
use memoryd_proto::presence::{RosterRow, State};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table, Widget};
use serde_json::Value;
use std::time::{Duration, SystemTime};

const SUMMARY: u16 = 2;
/// A bordered block's top and bottom lines.
const BORDERS: u16 = 2;
/// The events block never shrinks below this many lines.
const EVENTS_MIN: u16 = 6;
/// The most events `--once` prints.
const EVENTS_ONCE: u16 = 10;

pub struct Look {
    pub colour: bool,
    /// The key line (live only).
    pub keys: bool,
}

/// The height `--once` needs to show every row and a few events.
pub fn height_for(model: &Model) -> u16 {
    let events = (model.events.len() as u16).clamp(1, EVENTS_ONCE);
    SUMMARY + table_height(model) + BORDERS + events
}

/// The table's lines: every visible row, its header and borders.
fn table_height(model: &Model) -> u16 {
    BORDERS + 1 + (model.visible().len() as u16).max(1)
}

pub fn render(model: &Model, now: SystemTime, look: &Look, area: Rect, buf: &mut Buffer) {
    let keys = u16::from(look.keys);
    let body = area.height.saturating_sub(SUMMARY + keys);
    let table = table_height(model).min(body.saturating_sub(EVENTS_MIN)).max(BORDERS + 2);
    let [summary, nodes, events, help] = Layout::vertical([
        Constraint::Length(SUMMARY),
        Constraint::Length(table),
        Constraint::Fill(1),
        Constraint::Length(keys),
    ])
    .areas(area);
    let paint = Paint(look.colour);
    Paragraph::new(summary_lines(model, now, paint)).render(summary, buf);
    render_nodes(model, now, paint, nodes, buf);
    let lines: Vec<Line> = model.events.iter().map(|e| Line::raw(event_line(e))).collect();
    Paragraph::new(lines).block(Block::bordered().title(" newest events ")).render(events, buf);
    if look.keys {
        let text =
            format!("q quit · s sort ({}) · f state ({}) · ↑↓ scroll", model.sort.as_str(), model.filter.as_str());
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED)).render(help, buf);
    }
}

/// Colour only when the operator's terminal should get it.
#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn fg(self, colour: Color) -> Style {
        if self.0 { Style::new().fg(colour) } else { Style::new() }
    }

    fn state(self, state: State) -> Style {
        self.fg(match state {
            State::Online => Color::Green,
            State::Degraded => Color::Yellow,
            State::Registering => Color::Cyan,
            State::Offline => Color::DarkGray,
            State::Revoked => Color::Red,
        })
    }
}

fn summary_lines(model: &Model, now: SystemTime, paint: Paint) -> Vec<Line<'static>> {
    let s = &model.status;
    let mut first = format!("memoryd {}", s.version.as_deref().unwrap_or("?"));
    if let Some(pid) = s.pid {
        first.push_str(&format!(" · pid {pid}"));
    }
    if let Some(up) = s.uptime_secs {
        first.push_str(&format!(" · up {}", short_age(now, now - Duration::from_secs(up))));
    }
    let health = match s.problems.first() {
        _ if s.healthy => Span::styled("healthy", paint.fg(Color::Green)),
        Some(problem) => Span::styled(format!("unhealthy: {problem}"), paint.fg(Color::Red)),
        None => Span::styled("unhealthy", paint.fg(Color::Red)),
    };
    let sweep = match &s.last_sweep {
        Some(sw) => {
            let at = sw
                .at
                .parse::<memoryd_proto::Timestamp>()
                .map_or_else(|_| sw.at.clone(), |t| format!("{} ago", short_age(now, t.time())));
            let failed = if sw.failed > 0 { paint.fg(Color::Red) } else { Style::new() };
            vec![
                Span::raw(format!("last sweep {at}: {} ok, ", sw.ok)),
                Span::styled(format!("{} failed", sw.failed), failed),
            ]
        }
        None => vec![Span::raw("no sweep yet")],
    };
    let waiting = match s.waiting_messages {
        Some(n) => format!(" · {n} messages waiting"),
        None => " · messages waiting: unknown".to_owned(),
    };
    let mut second = sweep;
    second.push(Span::raw(waiting));
    vec![Line::from(vec![Span::raw(format!("{first} · ")), health]), Line::from(second)]
}

fn render_nodes(model: &Model, now: SystemTime, paint: Paint, area: Rect, buf: &mut Buffer) {
    let rows = model.visible();
    // What fits below the header; the last page is kept full.
    let fits = usize::from(area.height.saturating_sub(BORDERS + 1)).max(1);
    let first = model.scroll.min(rows.len().saturating_sub(fits));
    let shown = rows.len().min(first + fits);
    let window =
        if first > 0 || shown < rows.len() { format!(" · rows {}-{shown}", first + 1) } else { String::new() };
    let title = format!(
        " nodes {} of {} · state: {} · sort: {}{window} ",
        rows.len(),
        model.rows.len(),
        model.filter.as_str(),
        model.sort.as_str()
    );
    let block = Block::bordered().title(title);
    if rows.is_empty() {
        let why = if model.rows.is_empty() {
            "no agent session has attached yet".to_owned()
        } else {
            format!("no node is {} (f shows others)", model.filter.as_str())
        };
        Paragraph::new(why).block(block).render(area, buf);
        return;
    }
    let header = Row::new(["NODE", "STATE", "HEALTH", "HEARTBEAT", "VERSION", "RO", "PID"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(11),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(2),
        Constraint::Length(7),
    ];
    let body = rows[first..shown].iter().map(|r| node_row(r, now, paint));
    Table::new(body, widths).header(header).block(block).render(area, buf);
}

fn node_row(r: &RosterRow, now: SystemTime, paint: Paint) -> Row<'static> {
    Row::new([
        Span::raw(r.node_id.clone()),
        Span::styled(r.state.as_str(), paint.state(r.state)),
        Span::raw(r.health.as_str()),
        Span::raw(short_age(now, r.last_heartbeat_at.time())),
        Span::raw(r.client_version.clone()),
        Span::styled(if r.read_only { "ro" } else { "" }, paint.fg(Color::Yellow)),
        Span::raw(r.pid.map_or_else(|| "-".to_owned(), |p| p.to_string())),
    ])
}

/// `12:00:01 degraded     claude-boris online→degraded heartbeat_lost`:
/// the time of day (UTC), the event without its `runtime_node.` prefix,
/// the node, the change and why.
fn event_line(e: &Value) -> String {
    let text = |k: &str| e[k].as_str().unwrap_or_default();
    let time = text("ts").get(11..19).unwrap_or("--:--:--");
    let event = text("event");
    let event = event.strip_prefix("runtime_node.").unwrap_or(event);
    let mut line = format!("{time} {event:<19} {}", e["nodeId"].as_str().unwrap_or("-"));
    match (e["previousState"].as_str(), e["newState"].as_str()) {
        (Some(p), Some(n)) => line.push_str(&format!(" {p}→{n}")),
        (None, Some(n)) => line.push_str(&format!(" →{n}")),
        _ => {}
    }
    if let Some(reason) = e["reason"].as_str() {
        line.push_str(&format!(" {reason}"));
    }
    line
}

/// The buffer as lines of text, trailing blanks cut.
pub fn text(buf: &Buffer) -> String {
    let width = buf.area.width as usize;
    let mut out = String::new();
    for row in buf.content.chunks(width.max(1)) {
        let line: String = row.iter().map(|c| c.symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top_cmd::model::{Filter, SortBy};
    use serde_json::json;

    #[test]
    fn events_read_in_one_short_line() {
        let e = json!({"ts": "2026-01-31T12:00:01.123Z", "event": "runtime_node.offline", "nodeId": "claude-boris",
                       "previousState": "degraded", "newState": "offline", "reason": "heartbeat_lost"});
        assert_eq!(event_line(&e), "12:00:01 offline             claude-boris degraded→offline heartbeat_lost");
        assert_eq!(event_line(&json!({"event": "x"})), "--:--:-- x                   -");
    }

    #[test]
    fn an_empty_fleet_says_so_at_80_by_24() {
        let model = Model::new(Vec::new(), crate::top_cmd::tests::status(), SortBy::Node, Filter::All);
        let area = Rect::new(0, 0, 80, 24);
        let mut buf = Buffer::empty(area);
        render(&model, SystemTime::now(), &Look { colour: true, keys: true }, area, &mut buf);
        let text = text(&buf);
        assert_eq!(text.lines().count(), 24);
        assert!(text.contains("no agent session has attached yet"), "{text}");
        assert!(
            text.lines().last().unwrap().starts_with("q quit · s sort (node) · f state (all) · ↑↓ scroll"),
            "{text}"
        );
    }

    #[test]
    fn fifty_nodes_scroll_within_80_by_24_and_the_title_says_which_rows_show() {
        let rows = (0..50).map(|n| crate::top_cmd::model::tests::row(&format!("claude-n{n:02}"), State::Online, 0));
        let mut model = Model::new(rows.collect(), crate::top_cmd::tests::status(), SortBy::Node, Filter::All);
        let area = Rect::new(0, 0, 80, 24);
        let frame = |model: &Model| {
            let mut buf = Buffer::empty(area);
            render(model, SystemTime::now(), &Look { colour: false, keys: true }, area, &mut buf);
            text(&buf)
        };
        let top = frame(&model);
        assert!(top.contains("nodes 50 of 50 · state: all · sort: node · rows 1-12"), "{top}");
        assert!(top.contains("│claude-n00 ") && top.contains("│claude-n11 ") && !top.contains("claude-n12"), "{top}");
        assert!(top.contains("┌ newest events"), "the events keep their place:\n{top}");
        model.key(crate::top_cmd::model::Key::Scroll(100));
        let bottom = frame(&model);
        assert!(bottom.contains("rows 39-50") && bottom.contains("│claude-n49 "), "{bottom}");
    }
}

//! What `top` shows: the roster, the host's status and the newest events,
//! ordered and filtered as the operator asks.

use memoryd_proto::presence::{RosterRow, State};
use memoryd_proto::status::HostStatus;
use serde_json::Value;
use std::collections::VecDeque;
use std::time::SystemTime;

/// How many of the newest events are kept (more than any screen shows).
const EVENTS_KEPT: usize = 100;

/// The order of the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// By node name
    Node,
    /// Online, degraded, registering, offline, revoked; then by name
    State,
    /// The freshest heartbeat first
    Heartbeat,
}

impl SortBy {
    fn next(self) -> SortBy {
        match self {
            SortBy::Node => SortBy::State,
            SortBy::State => SortBy::Heartbeat,
            SortBy::Heartbeat => SortBy::Node,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SortBy::Node => "node",
            SortBy::State => "state",
            SortBy::Heartbeat => "heartbeat",
        }
    }
}

/// Which nodes are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Registering, online or degraded.
    Active,
    Only(State),
}

/// The order `f` steps through.
const FILTERS: [Filter; 7] = [
    Filter::All,
    Filter::Active,
    Filter::Only(State::Online),
    Filter::Only(State::Degraded),
    Filter::Only(State::Registering),
    Filter::Only(State::Offline),
    Filter::Only(State::Revoked),
];

impl Filter {
    /// `all`, `active` or a state's name (clap's parser for `--state`).
    pub fn parse(text: &str) -> Result<Filter, String> {
        FILTERS.into_iter().find(|f| f.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = FILTERS.iter().map(|f| f.as_str()).collect();
            format!("no state {text:?}: use one of {}", names.join(", "))
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Filter::All => "all",
            Filter::Active => "active",
            Filter::Only(state) => state.as_str(),
        }
    }

    fn admits(self, state: State) -> bool {
        match self {
            Filter::All => true,
            Filter::Active => state.is_active(),
            Filter::Only(only) => state == only,
        }
    }

    fn next(self) -> Filter {
        let at = FILTERS.iter().position(|f| *f == self).unwrap_or(0);
        FILTERS[(at + 1) % FILTERS.len()]
    }
}

/// Where a state sorts: the live ones first, the troubled among them next.
fn rank(state: State) -> u8 {
    match state {
        State::Online => 0,
        State::Degraded => 1,
        State::Registering => 2,
        State::Offline => 3,
        State::Revoked => 4,
    }
}

/// What the operator asked for with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Quit,
    NextSort,
    NextFilter,
    /// Scroll the nodes by this many rows (down when positive).
    Scroll(isize),
    /// Anything else (a resize, a key `top` has no use for): draw again.
    Redraw,
}

pub struct Model {
    pub rows: Vec<RosterRow>,
    pub status: HostStatus,
    /// Newest first.
    pub events: VecDeque<Value>,
    pub sort: SortBy,
    pub filter: Filter,
    /// The first visible row shown (the view keeps the last page full).
    pub scroll: usize,
}

impl Model {
    pub fn new(rows: Vec<RosterRow>, status: HostStatus, sort: SortBy, filter: Filter) -> Model {
        Model { rows, status, events: VecDeque::new(), sort, filter, scroll: 0 }
    }

    /// Events arrive oldest first; the newest is kept in front.
    pub fn push_event(&mut self, event: Value) {
        self.events.push_front(event);
        self.events.truncate(EVENTS_KEPT);
    }

    /// Applies a key; false when it quits.
    pub fn key(&mut self, key: Key) -> bool {
        match key {
            Key::Quit => return false,
            Key::NextSort => (self.sort, self.scroll) = (self.sort.next(), 0),
            Key::NextFilter => (self.filter, self.scroll) = (self.filter.next(), 0),
            Key::Scroll(by) => {
                let last = self.visible().len().saturating_sub(1);
                self.scroll = self.scroll.saturating_add_signed(by).min(last);
            }
            Key::Redraw => {}
        }
        true
    }

    /// The rows the filter admits, in the chosen order.
    pub fn visible(&self) -> Vec<&RosterRow> {
        let mut rows: Vec<&RosterRow> = self.rows.iter().filter(|r| self.filter.admits(r.state)).collect();
        match self.sort {
            SortBy::Node => rows.sort_by(|a, b| a.node_id.cmp(&b.node_id)),
            SortBy::State => rows.sort_by(|a, b| (rank(a.state), &a.node_id).cmp(&(rank(b.state), &b.node_id))),
            SortBy::Heartbeat => rows.sort_by(|a, b| {
                (std::cmp::Reverse(a.last_heartbeat_at), &a.node_id)
                    .cmp(&(std::cmp::Reverse(b.last_heartbeat_at), &b.node_id))
            }),
        }
        rows
    }
}

/// An age as `top` shows it: `7s`, `4m`, `3h`, `2d`; `-` for a time ahead
/// of this clock.
pub fn short_age(now: SystemTime, then: SystemTime) -> String {
    let Ok(age) = now.duration_since(then) else { return "-".to_owned() };
    match age.as_secs() {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use memoryd_proto::presence::Health;
    use std::time::Duration;

    pub fn row(node: &str, state: State, beat_secs: u64) -> RosterRow {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(beat_secs);
        RosterRow {
            node_id: node.to_owned(),
            personality: node.to_owned(),
            runtime: "claude".to_owned(),
            session_id: "s".to_owned(),
            state,
            health: Health::Online,
            read_only: false,
            client_version: "1.0".to_owned(),
            last_heartbeat_at: at.into(),
            attached_at: at.into(),
            pid: None,
        }
    }

    fn names(model: &Model) -> Vec<&str> {
        model.visible().iter().map(|r| r.node_id.as_str()).collect()
    }

    #[test]
    fn rows_sort_and_filter_as_the_keys_step_through() {
        let rows = vec![row("c", State::Offline, 30), row("a", State::Degraded, 10), row("b", State::Online, 20)];
        let status = crate::top_cmd::tests::status();
        let mut model = Model::new(rows, status, SortBy::Node, Filter::All);
        assert_eq!(names(&model), ["a", "b", "c"]);
        model.key(Key::NextSort);
        assert_eq!((model.sort, names(&model)), (SortBy::State, vec!["b", "a", "c"]));
        model.key(Key::NextSort);
        assert_eq!((model.sort, names(&model)), (SortBy::Heartbeat, vec!["c", "b", "a"]));
        model.key(Key::NextSort);
        assert_eq!(model.sort, SortBy::Node);
        model.key(Key::NextFilter);
        assert_eq!((model.filter, names(&model)), (Filter::Active, vec!["a", "b"]));
        model.key(Key::NextFilter);
        assert_eq!(names(&model), ["b"]);
        // Every filter is reached and the cycle closes.
        for _ in 2..FILTERS.len() {
            model.key(Key::NextFilter);
        }
        assert_eq!(model.filter, Filter::All);
        model.key(Key::Scroll(10));
        assert_eq!(model.scroll, 2, "never past the last row");
        model.key(Key::Scroll(-1));
        assert_eq!(model.scroll, 1);
        model.key(Key::NextSort);
        assert_eq!(model.scroll, 0, "a new order starts at the top");
        model.key(Key::Scroll(-1));
        assert_eq!(model.scroll, 0);
        assert!(!model.key(Key::Quit));
    }

    #[test]
    fn filters_parse_from_their_names_only() {
        for f in FILTERS {
            assert_eq!(Filter::parse(f.as_str()), Ok(f));
        }
        let e = Filter::parse("sleeping").unwrap_err();
        assert!(e.contains("all, active, online"), "{e}");
    }

    #[test]
    fn ages_are_short() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| short_age(t, t - Duration::from_secs(s));
        assert_eq!([ago(7), ago(61), ago(7200), ago(200_000)], ["7s", "1m", "2h", "2d"]);
        assert_eq!(short_age(t, t + Duration::from_secs(5)), "-");
    }

    #[test]
    fn only_the_newest_events_are_kept_newest_first() {
        let mut model = Model::new(Vec::new(), crate::top_cmd::tests::status(), SortBy::Node, Filter::All);
        for n in 0..EVENTS_KEPT + 5 {
            model.push_event(serde_json::json!(n));
        }
        assert_eq!(model.events.len(), EVENTS_KEPT);
        assert_eq!(model.events[0], serde_json::json!(EVENTS_KEPT + 4));
    }
}

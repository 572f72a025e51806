//! `memoryctl top`: a live view of the fleet. The roster and the host's
//! status come from the daemon, and are asked for again whenever its
//! followed event log says something (an event, or the `host.working`
//! beat every 5 s); between those a heartbeat's age ticks here. Nothing is
//! read from files: with the daemon down, `top` says so and exits 1.

mod model;
mod view;

use crate::client::Client;
use crate::{Ctx, Failure, Usage};
use anyhow::Context as _;
use clap::Args;
use memoryd_proto::presence::{RosterRow, TailParams};
use memoryd_proto::status::HostStatus;
use memoryd_proto::{Command as Call, ErrorKind, Notification, methods};
use model::{Filter, Key, Model, SortBy};
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::Rect;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use view::Look;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one frame (80 columns, every node) to stdout and exit; no
    /// terminal needed
    #[arg(long)]
    once: bool,
    /// Show only the nodes in this state: all, active (registering, online
    /// or degraded), online, degraded, registering, offline or revoked
    /// (`f` steps through them)
    #[arg(long, value_name = "STATE", default_value = "all", value_parser = Filter::parse)]
    state: Filter,
    /// The order of the nodes (`s` steps through them)
    #[arg(long, value_enum, default_value_t = SortBy::Node)]
    sort: SortBy,
}

/// `--once` is as wide as the smallest terminal `top` is made for.
const ONCE_WIDTH: u16 = 80;
/// How often the frame is drawn again when nothing happens (ages tick).
const TICK: Duration = Duration::from_secs(1);
/// How many rows a page key scrolls.
const PAGE: isize = 10;
/// How long a wait for a key lasts before the key reader looks whether
/// `top` has ended.
const KEY_POLL: Duration = Duration::from_millis(200);

pub async fn top(ctx: &Ctx, args: TopArgs) -> anyhow::Result<ExitCode> {
    if ctx.json {
        let why =
            "top draws for people; for JSON use `memoryctl peers --json`, `status --json` or `events --follow --json`";
        return Err(Usage(why.to_owned()).into());
    }
    if !args.once && !std::io::stdout().is_terminal() {
        return Err(Usage(
            "top draws on a terminal and stdout is not one; for a script use: memoryctl top --once".to_owned(),
        )
        .into());
    }
    let mut client = ctx.require().await?;
    let (rows, status) = fetch(ctx, &mut client).await?;
    let mut model = Model::new(rows, status, args.sort, args.state);
    if args.once {
        let recent: Vec<Value> = ask(ctx, &mut client, &Call::EventsTail(TailParams::default())).await?;
        for event in recent {
            model.push_event(event);
        }
        let area = Rect::new(0, 0, ONCE_WIDTH, view::height_for(&model));
        let mut buf = Buffer::empty(area);
        view::render(&model, SystemTime::now(), &Look { colour: false, keys: false }, area, &mut buf);
        print!("{}", view::text(&buf));
        return Ok(ExitCode::SUCCESS);
    }
    watch(ctx, client, model).await
}

/// One short request whose notifications, if any, are not for `top`.
async fn ask<T: DeserializeOwned>(ctx: &Ctx, client: &mut Client, command: &Call) -> anyhow::Result<T> {
    Ok(ctx.call_raw(client, command, |_| {}).await??)
}

async fn fetch(ctx: &Ctx, client: &mut Client) -> anyhow::Result<(Vec<RosterRow>, HostStatus)> {
    Ok((ask(ctx, client, &Call::Roster).await?, ask(ctx, client, &Call::HostStatus).await?))
}

/// The live view: one connection follows the event log, the other asks
/// for the roster and the status when the first says something.
async fn watch(ctx: &Ctx, mut client: Client, mut model: Model) -> anyhow::Result<ExitCode> {
    let mut stream = ctx.require().await?;
    let (tx, mut notes) = mpsc::unbounded_channel::<Notification>();
    let follow = Call::EventsTail(TailParams { follow: true, ..TailParams::default() });
    // Bounded like every follow: the daemon beats at least every 5 s.
    let followed = ctx.call_raw::<Value>(&mut stream, &follow, move |n| {
        let _ = tx.send(n);
    });
    tokio::pin!(followed);
    let look = Look { colour: ctx.style.is_coloured(), keys: true };
    let mut screen = Screen::open()?;
    let mut keys = read_keys();
    let mut tick = tokio::time::interval(TICK);
    loop {
        screen.0.draw(|f| view::render(&model, SystemTime::now(), &look, f.area(), f.buffer_mut()))?;
        tokio::select! {
            ended = &mut followed => {
                ended??;
                let message = format!("memoryd stopped while top was watching (start it again with: {} daemon start)", ctx.ctl());
                return Err(Failure::new(ErrorKind::DaemonNotRunning, message).into());
            }
            Some(note) = notes.recv() => {
                // A burst (the recent events a follow starts with) is one refresh.
                let mut next = Some(note);
                while let Some(note) = next {
                    if note.method == methods::EVENTS_EVENT {
                        model.push_event(note.params);
                    }
                    next = notes.try_recv().ok();
                }
                (model.rows, model.status) = fetch(ctx, &mut client).await?;
            }
            key = keys.recv() => {
                // No more keys: the terminal is gone.
                if !model.key(key.unwrap_or(Key::Quit)) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            _ = tick.tick() => {}
        }
    }
}

/// The terminal in raw mode on its alternate screen, given back as it was
/// however `top` ends (ratatui's panic hook covers a panic).
struct Screen(ratatui::DefaultTerminal);

impl Screen {
    fn open() -> anyhow::Result<Screen> {
        let terminal =
            ratatui::try_init().context("cannot take over the terminal for top (for a script use --once)")?;
        Ok(Screen(terminal))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The operator's keys. crossterm reads the terminal with blocking calls,
/// so on a thread of its own, which ends within [`KEY_POLL`] of `top`.
fn read_keys() -> mpsc::UnboundedReceiver<Key> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match event::poll(KEY_POLL) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => return,
            }
            let key = match event::read() {
                Ok(Event::Key(k)) if k.is_press() => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
                    KeyCode::Char('s') => Key::NextSort,
                    KeyCode::Char('f') => Key::NextFilter,
                    KeyCode::Down | KeyCode::Char('j') => Key::Scroll(1),
                    KeyCode::Up | KeyCode::Char('k') => Key::Scroll(-1),
                    KeyCode::PageDown | KeyCode::Char(' ') => Key::Scroll(PAGE),
                    KeyCode::PageUp => Key::Scroll(-PAGE),
                    _ => Key::Redraw,
                },
                Ok(_) => Key::Redraw,
                Err(_) => return,
            };
            if tx.send(key).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
pub mod tests {
    use memoryd_proto::status::*;

    /// A healthy daemon's status with nothing in it.
    pub fn status() -> HostStatus {
        HostStatus {
            running: true,
            pid: Some(42),
            version: Some("0.1.0".to_owned()),
            uptime_secs: Some(90),
            started_at: None,
            root: "/r".to_owned(),
            installed: true,
            heartbeat_age_secs: None,
            watch: None,
            fleet: FleetStatus::default(),
            last_sweep: None,
            lock: LockStatus::default(),
            presence: None,
            waiting_messages: Some(0),
            mcp: McpStatus::default(),
            vault: VaultStatus::default(),
            supervisor: None,
            store: None,
            healthy: true,
            problems: Vec::new(),
        }
    }
}

//! `memoryctl peer link|unlink|visible|send|inbox|outbox|history` (spec 50).

use crate::Ctx;
use clap::Subcommand;
use memoryd_core::peers;
use memoryd_proto::Command;
use memoryd_proto::peers::{
    Direction, HistoryParams, HistoryRow, Importance, InboxParams, Linked, Message, OutboxParams, OutboxRow, PeerPair,
    PersonalityParams, Recipients, SendParams, Sent, Unlinked, Visible,
};
use std::io::Read;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PeerAction {
    /// Link two peers: each sees the other and may message it
    Link {
        /// One peer of the fleet
        a: String,
        /// The other
        b: String,
    },
    /// Remove the link between two peers (both sides at once)
    Unlink {
        /// One peer of the link
        a: String,
        /// The other
        b: String,
    },
    /// What a peer sees: itself and its linked peers, with their presence
    Visible {
        /// The peer
        personality: String,
    },
    /// Send a message that arrives at the recipients' next turn (an urgent
    /// one at their next tool use)
    Send {
        /// The sending peer; `operator` sends as the operator, to any peer,
        /// without a link
        #[arg(long, value_name = "PEER")]
        from: String,
        /// The recipients (up to 16), then the text; `-` as the text reads
        /// it from stdin
        #[arg(required = true, num_args = 2.., value_name = "PEER… MESSAGE")]
        words: Vec<String>,
        /// One line shown above the text
        #[arg(long)]
        subject: Option<String>,
        /// Deliver at the recipients' next hook, even mid-turn
        #[arg(long)]
        urgent: bool,
        /// Ask the recipients to confirm it (the sender gets a receipt)
        #[arg(long)]
        ack_required: bool,
    },
    /// What a peer sent lately, newest first, with each recipient's state
    Outbox {
        /// The sender
        personality: String,
        /// At most this many (20)
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The delivered messages a peer sent or received, oldest first
    History {
        /// The peer
        personality: String,
        /// Only those exchanged with this peer
        #[arg(long, value_name = "PEER")]
        with: Option<String>,
        /// Only this thread
        #[arg(long)]
        thread: Option<String>,
        /// Ranked by relevance to these words
        #[arg(long)]
        search: Option<String>,
        /// At most this many (20)
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a peer's waiting messages without removing any
    Inbox {
        /// The recipient
        personality: String,
    },
}

pub async fn run(ctx: &Ctx, action: PeerAction) -> anyhow::Result<ExitCode> {
    // Read before connecting: the daemon closes a connection idle for long.
    let action = match action {
        PeerAction::Send { from, mut words, subject, urgent, ack_required }
            if words.last().is_some_and(|w| w == "-") =>
        {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            words.pop();
            words.push(text);
            PeerAction::Send { from, words, subject, urgent, ack_required }
        }
        other => other,
    };
    let mut client = ctx.require().await?;
    match action {
        PeerAction::Link { a, b } => {
            let linked: Linked = ctx.call(&mut client, &Command::PeerLink(PeerPair { a, b })).await??;
            print(ctx, &linked, || {
                let how = if linked.already { "were already linked" } else { "are linked" };
                println!("{} and {} {how}", linked.a, linked.b);
            })
        }
        PeerAction::Unlink { a, b } => {
            let unlinked: Unlinked = ctx.call(&mut client, &Command::PeerUnlink(PeerPair { a, b })).await??;
            print(ctx, &unlinked, || {
                let how = if unlinked.unlinked { "are no longer linked" } else { "were not linked" };
                println!("{} and {} {how}", unlinked.a, unlinked.b);
            })
        }
        PeerAction::Visible { personality } => {
            let command = Command::PeerVisible(PersonalityParams { personality });
            let visible: Vec<Visible> = ctx.call(&mut client, &command).await??;
            print(ctx, &visible, || {
                for v in &visible {
                    println!(
                        "{:<32} {:<5} {:<11} {}",
                        v.personality,
                        v.reason.as_str(),
                        v.state.as_str(),
                        v.health.as_str()
                    );
                }
            })
        }
        PeerAction::Send { from, mut words, subject, urgent, ack_required } => {
            let message = words.pop().unwrap_or_default();
            let operator = from == peers::OPERATOR;
            let to = if words.len() == 1 { Recipients::One(words.remove(0)) } else { Recipients::Many(words) };
            let importance = if urgent { Importance::Urgent } else { Importance::Normal };
            let params = SendParams { from, to, message, subject, importance, ack_required, operator };
            let sent: Sent = ctx.call(&mut client, &Command::PeerSend(params)).await??;
            print(ctx, &sent, || {
                for q in &sent.recipients {
                    let note = if q.dropped > 0 {
                        format!("; the inbox was full, {} oldest dropped", q.dropped)
                    } else {
                        String::new()
                    };
                    println!("queued for {} ({} waiting){note}", q.to, q.queue_depth);
                }
                let when = if urgent { "their next hook" } else { "their next turn" };
                println!("message {} in thread {}; it arrives at {when}", sent.id, sent.thread);
            })
        }
        PeerAction::Outbox { personality, limit } => {
            let rows: Vec<OutboxRow> = ctx
                .call(&mut client, &Command::PeerOutbox(OutboxParams { personality: personality.clone(), limit }))
                .await??;
            print(ctx, &rows, || {
                if rows.is_empty() {
                    println!("{personality} sent no message lately");
                }
                for r in &rows {
                    let subject = r.subject.as_deref().map(|s| format!(" \"{s}\"")).unwrap_or_default();
                    let urgent = if r.importance == Importance::Urgent { " urgent" } else { "" };
                    println!("[{}] at {}{subject}{urgent} (thread {})", r.id, r.sent_at, r.thread);
                    for d in &r.deliveries {
                        let at = d.at.map(|t| format!(" at {t}")).unwrap_or_default();
                        println!("  {:<32} {}{at}", d.to, d.state.as_str());
                    }
                }
            })
        }
        PeerAction::History { personality, with, thread, search, limit } => {
            let params = HistoryParams { personality: personality.clone(), with, thread, query: search, limit };
            let rows: Vec<HistoryRow> = ctx.call(&mut client, &Command::PeerHistory(params)).await??;
            print(ctx, &rows, || {
                if rows.is_empty() {
                    println!("no message of {personality} matches");
                }
                for r in &rows {
                    let m = &r.message;
                    let way = match r.direction {
                        Direction::Sent => format!("to {}", m.to.join(", ")),
                        Direction::Received => format!("from {}", m.from),
                    };
                    let subject = m.subject.as_deref().map(|s| format!(" \"{s}\"")).unwrap_or_default();
                    println!("[{}] {way} at {}{subject} (thread {})\n{}\n", m.id, m.ts, m.thread(), m.text);
                }
            })
        }
        PeerAction::Inbox { personality } => {
            let command =
                Command::PeerInbox(InboxParams { personality: personality.clone(), lease: false, urgent: false });
            let messages: Vec<Message> = ctx.call(&mut client, &command).await??;
            print(ctx, &messages, || {
                if messages.is_empty() {
                    println!("no message waits for {personality}");
                }
                for m in &messages {
                    println!("[{}] from {} at {}\n{}\n", m.id, m.from, m.ts, m.text);
                }
            })
        }
    }
}

/// The daemon's answer as JSON with `--json`, else as `text` prints it.
fn print(ctx: &Ctx, answer: &impl serde::Serialize, text: impl FnOnce()) -> anyhow::Result<ExitCode> {
    if ctx.json {
        crate::print_json(answer)?;
    } else {
        text();
    }
    Ok(ExitCode::SUCCESS)
}

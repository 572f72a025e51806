//! `memoryctl peer link|unlink|visible|send|inbox` (spec 50).

use crate::Ctx;
use clap::Subcommand;
use memoryd_proto::Command;
use memoryd_proto::peers::{
    InboxParams, Linked, Message, PeerPair, PersonalityParams, SendParams, Sent, Unlinked, Visible,
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
    /// Send a message that arrives at the recipient's next turn
    Send {
        /// The sending peer
        #[arg(long, value_name = "PEER")]
        from: String,
        /// The recipient
        to: String,
        /// The text; `-` reads it from stdin
        message: String,
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
        PeerAction::Send { from, to, message } if message == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            PeerAction::Send { from, to, message: text }
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
        PeerAction::Send { from, to, message } => {
            let sent: Sent = ctx.call(&mut client, &Command::PeerSend(SendParams { from, to, message })).await??;
            print(ctx, &sent, || {
                let note = if sent.dropped > 0 {
                    format!("; the inbox was full, {} oldest dropped", sent.dropped)
                } else {
                    String::new()
                };
                println!("queued for {} ({} waiting){note}; it arrives at their next turn", sent.to, sent.queue_depth);
            })
        }
        PeerAction::Inbox { personality } => {
            let command = Command::PeerInbox(InboxParams { personality: personality.clone(), lease: false });
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

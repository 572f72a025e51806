//! `memoryctl peer link|unlink|visible|send|inbox` (spec 50).

use crate::Ctx;
use clap::Subcommand;
use memoryd_proto::methods;
use serde_json::{Value, json};
use std::io::Read;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PeerAction {
    /// Link two peers: each sees the other and may message it
    Link { a: String, b: String },
    /// Remove the link between two peers (both sides at once)
    Unlink { a: String, b: String },
    /// What a peer sees: itself and its linked peers, with their presence
    Visible { personality: String },
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
    Inbox { personality: String },
}

pub async fn run(ctx: &Ctx, action: PeerAction) -> anyhow::Result<ExitCode> {
    let (method, params) = match &action {
        PeerAction::Link { a, b } => (methods::PEER_LINK, json!({"a": a, "b": b})),
        PeerAction::Unlink { a, b } => (methods::PEER_UNLINK, json!({"a": a, "b": b})),
        PeerAction::Visible { personality } => (methods::PEER_VISIBLE, json!({"personality": personality})),
        PeerAction::Send { from, to, message } => {
            let text = if message == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text
            } else {
                message.clone()
            };
            (methods::PEER_SEND, json!({"from": from, "to": to, "message": text}))
        }
        PeerAction::Inbox { personality } => (methods::PEER_INBOX, json!({"personality": personality, "lease": false})),
    };
    let mut client = ctx.require().await?;
    let result = ctx.call(&mut client, method, params).await??;
    if ctx.json {
        crate::print_json(&result)?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    match action {
        PeerAction::Link { a, b } => {
            println!("{a} and {b} {}", if result["already"] == true { "were already linked" } else { "are linked" });
        }
        PeerAction::Unlink { a, b } => {
            println!(
                "{a} and {b} {}",
                if result["unlinked"] == true { "are no longer linked" } else { "were not linked" }
            );
        }
        PeerAction::Visible { .. } => {
            for v in result.as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<5} {:<11} {}",
                    s(&v["personality"]),
                    s(&v["reason"]),
                    s(&v["state"]),
                    s(&v["health"])
                );
            }
        }
        PeerAction::Send { .. } => {
            let dropped = result["dropped"].as_u64().unwrap_or(0);
            let note =
                if dropped > 0 { format!("; the inbox was full, {dropped} oldest dropped") } else { String::new() };
            println!(
                "queued for {} ({} waiting){note}; it arrives at their next turn",
                s(&result["to"]),
                result["queueDepth"]
            );
        }
        PeerAction::Inbox { personality } => {
            let messages = result.as_array().cloned().unwrap_or_default();
            if messages.is_empty() {
                println!("no message waits for {personality}");
            }
            for m in messages {
                println!("[{}] from {} at {}\n{}\n", s(&m["id"]), s(&m["from"]), s(&m["ts"]), s(&m["text"]));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The per-peer context fragment `<cwd>/.iapeer/fragments/memoryd.md`
//! (spec 60), which the iapeer core adds to the agent's system prompt at
//! every session start.

use std::fmt::Write;
use std::path::Path;

/// Where the fragment lives inside a peer's folder.
pub const FRAGMENT_PATH: &str = ".iapeer/fragments/memoryd.md";

/// A peer this one can see, with its presence (`online`, `offline`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedPeer {
    pub personality: String,
    pub presence: String,
}

/// A note this peer can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRef {
    pub title: String,
    pub author: Option<String>,
    /// Relative to the vault.
    pub path: String,
}

/// Everything a fragment is rendered from.
#[derive(Debug, Clone, Default)]
pub struct FragmentInputs<'a> {
    pub personality: &'a str,
    pub vault: Option<&'a Path>,
    /// None when the MCP endpoint is off (`mcp_port = 0`).
    pub mcp_port: Option<u16>,
    pub linked: Vec<LinkedPeer>,
    /// Newest first, at most 50.
    pub notes: Vec<NoteRef>,
    pub waiting_messages: usize,
}

/// The newest notes a fragment lists.
pub const RECENT_NOTES: usize = 50;

/// The four sections, in order.
pub fn render(inputs: &FragmentInputs<'_>) -> String {
    let mut out = String::from("## memoryd\n\n");
    match inputs.vault {
        Some(vault) => {
            let _ = writeln!(out, "- vault: `{}`", vault.display());
            let _ = writeln!(out, "- your notes: `{}`", vault.join("peers").join(inputs.personality).display());
        }
        None => out.push_str("- vault: none configured (memory tools answer \"no vault configured\")\n"),
    }
    match inputs.mcp_port {
        Some(port) => {
            let _ = writeln!(out, "- memory tools (MCP): `http://127.0.0.1:{port}/mcp`");
        }
        None => out.push_str("- memory tools (MCP): off on this host\n"),
    }
    out.push_str("\n## Linked peers\n\n");
    if inputs.linked.is_empty() {
        out.push_str("None.\n");
    }
    for peer in &inputs.linked {
        let _ = writeln!(out, "- `{}` ({})", peer.personality, peer.presence);
    }
    out.push_str("\n## Recent notes\n\n");
    if inputs.notes.is_empty() {
        out.push_str("None.\n");
    }
    for note in inputs.notes.iter().take(RECENT_NOTES) {
        let by = note.author.as_deref().map(|a| format!(" by `{a}`")).unwrap_or_default();
        let _ = writeln!(out, "- {}{by} — `{}`", note.title, note.path);
    }
    out.push_str("\n## Peer messages\n\n");
    match inputs.waiting_messages {
        0 => out.push_str("None waiting.\n"),
        1 => out.push_str("1 message waits; it arrives with your next prompt.\n"),
        n => {
            let _ = writeln!(out, "{n} messages wait; they arrive with your next prompt.");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_four_sections_in_order() {
        let vault = Path::new("/v");
        let text = render(&FragmentInputs {
            personality: "boris",
            vault: Some(vault),
            mcp_port: Some(8766),
            linked: vec![LinkedPeer { personality: "ada".into(), presence: "online".into() }],
            notes: vec![NoteRef { title: "Plan".into(), author: Some("ada".into()), path: "peers/ada/plan.md".into() }],
            waiting_messages: 2,
        });
        let expected = "## memoryd\n\n- vault: `/v`\n- your notes: `/v/peers/boris`\n\
            - memory tools (MCP): `http://127.0.0.1:8766/mcp`\n\n## Linked peers\n\n- `ada` (online)\n\n\
            ## Recent notes\n\n- Plan by `ada` — `peers/ada/plan.md`\n\n## Peer messages\n\n\
            2 messages wait; they arrive with your next prompt.\n";
        assert_eq!(text, expected);
        let bare = render(&FragmentInputs { personality: "boris", ..Default::default() });
        assert!(bare.contains("none configured") && bare.contains("off on this host"));
    }
}

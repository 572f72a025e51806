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

/// What every fragment of one operation is rendered from, read once: the
/// peers present in the fleet map, the links, the roster and the vault
/// index.
pub struct Context<'a> {
    pub present: std::collections::HashSet<String>,
    pub links: crate::peers::Links,
    pub roster: Vec<crate::presence::RosterRow>,
    /// Messages waiting, by peer.
    pub waiting: std::collections::BTreeMap<String, usize>,
    pub index: Option<&'a crate::vault::Index>,
    /// The store is a fleet database that cannot be reached: fragments
    /// keep their last bytes rather than lose their links and presence.
    pub unavailable: bool,
}

impl<'a> Context<'a> {
    /// Reads the map, the links and the roster; a store that does not load
    /// renders as no links and no presence (and is reported by `verify`).
    /// The peers present are the fleet registry's: with the fleet database,
    /// those of every host.
    pub fn load(
        paths: &crate::host::paths::Paths,
        store: &dyn crate::store::StateStore,
        floor: Option<crate::config::ClientVersion>,
        index: Option<&'a crate::vault::Index>,
    ) -> Context<'a> {
        let present = crate::fleet::FleetRead::load(&paths.fleet_map)
            .map()
            .map(|m| store.registry(m).unwrap_or_else(|_| m.clone()))
            .map(|m| m.peers.iter().map(|p| p.personality.clone()).collect())
            .unwrap_or_default();
        let links = store.links();
        Context {
            present,
            unavailable: matches!(links, Err(crate::store::StoreError::Unavailable { .. })),
            links: links.unwrap_or_default(),
            roster: store.presence().map(|p| p.roster(floor)).unwrap_or_default(),
            waiting: store.waiting().unwrap_or_default(),
            index,
        }
    }

    /// The peers `personality` sees besides itself, present in the fleet.
    pub fn linked(&self, personality: &str) -> Vec<String> {
        let mut linked: Vec<String> =
            self.links.of(personality).filter(|l| self.present.contains(*l)).map(str::to_owned).collect();
        linked.sort();
        linked
    }

    /// The inputs of one peer's fragment.
    pub fn inputs(&self, personality: &'a str, vault: Option<&'a Path>, mcp_port: Option<u16>) -> FragmentInputs<'a> {
        let linked = self.linked(personality);
        let presence = |name: &str| {
            self.roster
                .iter()
                .filter(|r| r.personality == name)
                .map(|r| r.state.as_str())
                .max_by_key(|s| ["revoked", "offline", "registering", "degraded", "online"].iter().position(|x| x == s))
                .unwrap_or("offline")
                .to_owned()
        };
        let names: Vec<&str> = linked.iter().map(String::as_str).collect();
        let notes = self
            .index
            .map(|index| {
                index
                    .recent(|n| crate::vault::readable(n, personality, &names), RECENT_NOTES)
                    .into_iter()
                    .map(|n| NoteRef { title: n.title.clone(), author: n.author.clone(), path: n.path.clone() })
                    .collect()
            })
            .unwrap_or_default();
        FragmentInputs {
            personality,
            vault,
            mcp_port,
            linked: linked.iter().map(|l| LinkedPeer { personality: l.clone(), presence: presence(l) }).collect(),
            notes,
            waiting_messages: self.waiting.get(personality).copied().unwrap_or(0),
        }
    }
}

/// The four sections, in order.
pub fn render(inputs: &FragmentInputs<'_>) -> String {
    // About what one takes: a sweep renders one per peer.
    let mut out = String::with_capacity(512);
    out.push_str("## memoryd\n\n");
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

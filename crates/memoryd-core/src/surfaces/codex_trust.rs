//! Whether Codex would run memoryd's hooks as they are on disk.
//!
//! Codex lists every hook of a project's `.codex/hooks.json` but runs a
//! project hook only when the user's `~/.codex/config.toml` trusts it, and
//! skips the others silently. This is the scheme of Codex 0.171.0, read in
//! openai/codex `codex-rs/hooks/src/engine/discovery.rs`
//! (`append_matcher_groups`, `command_hook_hash`, `hook_trust_status`,
//! `hook_enabled`), `codex-rs/hooks/src/lib.rs` (`hook_key`),
//! `codex-rs/config/src/fingerprint.rs` (`version_for_toml`) and
//! `codex-rs/hooks/src/config_rules.rs` (`hook_states_from_stack`), and
//! checked against the hashes `codex app-server` (`hooks/list`) reports:
//!
//! - each handler has the key `<path of hooks.json>:<event in snake_case>:
//!   <group index>:<handler index>`, the path as Codex resolves the session's
//!   folder (its real path);
//! - its state is the table `[hooks.state."<key>"]` of the user's config
//!   (project configs may not trust their own hooks), with `trusted_hash`
//!   and `enabled` (`false` turns the hook off);
//! - the hash is `sha256:` and the hex SHA-256 of the compact JSON, keys
//!   sorted, of `{"event_name", "matcher"?, "hooks": [handler]}`, where the
//!   handler is `{"type": "command", "command", "timeout", "async",
//!   "statusMessage"?}` with the timeout defaulting to 600 (at least 1), and
//!   the matcher kept only for events that use one. Absent options are left
//!   out (Codex hashes the identity after a trip through TOML, which has no
//!   null).
//!
//! memoryd only reads that config: writing it is the iapeer core's job.

use super::json::{self, Object};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How Codex treats one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Runs: trusted at its current hash.
    Trusted,
    /// Skipped: no trusted hash recorded.
    Untrusted,
    /// Skipped: trusted once, but changed since.
    Modified,
    /// Skipped: the user turned it off (`enabled = false`).
    Disabled,
}

/// One of memoryd's hooks as Codex would list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The event as hooks.json names it (`SessionStart`).
    pub event: String,
    pub key: String,
    pub hash: String,
}

/// The `[hooks.state]` entries of the user's Codex config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookStates {
    states: HashMap<String, State>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    enabled: Option<bool>,
    trusted_hash: Option<String>,
}

impl HookStates {
    /// Reads the user's Codex config; a missing file trusts nothing. The
    /// error is a sentence naming the file.
    pub fn load(path: &Path) -> Result<HookStates, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => HookStates::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HookStates::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The entries in any TOML form (tables, dotted keys, inline tables);
    /// an entry of the wrong shape is ignored, as Codex ignores it.
    pub fn parse(text: &str) -> Result<HookStates, String> {
        let doc = super::toml::parse(text)?;
        let entries = doc
            .get("hooks")
            .and_then(toml_edit::Item::as_table_like)
            .and_then(|hooks| hooks.get("state"))
            .and_then(toml_edit::Item::as_table_like);
        let mut states = HashMap::new();
        for (key, item) in entries.iter().flat_map(|t| t.iter()) {
            let Some(entry) = item.as_table_like() else { continue };
            // A field of the wrong type makes Codex drop the whole entry.
            let enabled = field(entry, "enabled", toml_edit::Item::as_bool);
            let trusted_hash = field(entry, "trusted_hash", |i| i.as_str().map(str::to_owned));
            let (Some(enabled), Some(trusted_hash)) = (enabled, trusted_hash) else { continue };
            let key = key.trim();
            if !key.is_empty() {
                states.insert(key.to_owned(), State { enabled, trusted_hash });
            }
        }
        Ok(HookStates { states })
    }

    /// What Codex does with `hook`.
    pub fn status(&self, hook: &Hook) -> Status {
        let state = self.states.get(&hook.key);
        if state.and_then(|s| s.enabled) == Some(false) {
            return Status::Disabled;
        }
        match state.and_then(|s| s.trusted_hash.as_deref()) {
            Some(hash) if hash == hook.hash => Status::Trusted,
            Some(_) => Status::Modified,
            None => Status::Untrusted,
        }
    }
}

/// An optional field: `None` when it is there with the wrong type.
fn field<T>(
    entry: &dyn toml_edit::TableLike,
    key: &str,
    get: impl Fn(&toml_edit::Item) -> Option<T>,
) -> Option<Option<T>> {
    match entry.get(key) {
        None => Some(None),
        Some(item) => get(item).map(Some),
    }
}

/// memoryd's hooks in a parsed hooks.json, keyed under `source` (the path
/// of the file as Codex names it).
pub fn our_hooks(source: &Path, doc: &Object) -> Vec<Hook> {
    let Some(Value::Object(events)) = doc.get("hooks") else { return Vec::new() };
    let mut hooks = Vec::new();
    for (event, groups) in events {
        let label = snake_case(event);
        for (g, group) in groups.as_array().into_iter().flatten().enumerate() {
            let handlers = group.get("hooks").and_then(Value::as_array);
            for (h, handler) in handlers.into_iter().flatten().enumerate() {
                let ours = handler.get("command").and_then(Value::as_str).is_some_and(json::is_our_command);
                if ours {
                    hooks.push(Hook {
                        event: event.clone(),
                        key: format!("{}:{label}:{g}:{h}", source.display()),
                        hash: hook_hash(&label, group.get("matcher").and_then(Value::as_str), handler),
                    });
                }
            }
        }
    }
    hooks
}

/// `PostToolUse` → `post_tool_use`.
fn snake_case(event: &str) -> String {
    let mut out = String::with_capacity(event.len() + 4);
    for (i, c) in event.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Codex's `command_hook_hash` of one command handler.
fn hook_hash(label: &str, matcher: Option<&str>, handler: &Value) -> String {
    let timeout = handler.get("timeout").and_then(Value::as_u64).unwrap_or(600).max(1);
    let is_async = handler.get("async").and_then(Value::as_bool).unwrap_or(false);
    // BTreeMaps: the canonical form sorts every object's keys.
    let mut normalized = BTreeMap::from([
        ("async", Value::from(is_async)),
        ("command", handler.get("command").cloned().unwrap_or_default()),
        ("timeout", Value::from(timeout)),
        ("type", Value::from("command")),
    ]);
    if let Some(message) = handler.get("statusMessage").and_then(Value::as_str) {
        normalized.insert("statusMessage", Value::from(message));
    }
    let mut identity = BTreeMap::from([
        ("event_name", Value::from(label)),
        ("hooks", Value::Array(vec![serde_json::to_value(normalized).unwrap_or_default()])),
    ]);
    // Codex ignores the matcher of events that do not dispatch on one.
    if let Some(matcher) = matcher.filter(|_| !matches!(label, "user_prompt_submit" | "stop")) {
        identity.insert("matcher", Value::from(matcher));
    }
    let bytes = serde_json::to_vec(&identity).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What Codex would do with memoryd's hooks in one hooks.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every hook of ours runs.
    Runs(usize),
    /// The user turned some of ours off: a choice memoryd leaves alone.
    Disabled(String),
    /// Some of ours would be skipped: the sentence names them and the fix.
    Skipped(String),
}

/// Judges memoryd's hooks in the hooks.json at `real` (its real path, the
/// key Codex uses for a session started in the folder) by the user's
/// config; a folder reached through a symlink may also be trusted under
/// the path `named`. The error says why there is nothing to judge.
pub fn judge(real: &Path, named: &Path, states: &HookStates) -> Result<Verdict, String> {
    let bytes = std::fs::read(real).map_err(|e| format!("cannot read {}: {e}", real.display()))?;
    let doc = json::parse_object(&bytes).map_err(|e| format!("{}: {e}", real.display()))?;
    let hooks = our_hooks(real, &doc);
    if hooks.is_empty() {
        return Err(format!("{} holds none of memoryd's hooks (see peer-surfaces)", real.display()));
    }
    let aliases = if named != real { our_hooks(named, &doc) } else { Vec::new() };
    let mut skipped = Vec::new();
    let mut disabled = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let mut status = states.status(hook);
        if status != Status::Trusted
            && let Some(alias) = aliases.get(i)
            && states.status(alias) == Status::Trusted
        {
            status = Status::Trusted;
        }
        match status {
            Status::Trusted => {}
            Status::Untrusted => skipped.push(format!("{} (untrusted)", hook.event)),
            Status::Modified => skipped.push(format!("{} (changed since it was trusted)", hook.event)),
            Status::Disabled => disabled.push(hook.event.clone()),
        }
    }
    Ok(if !skipped.is_empty() {
        Verdict::Skipped(format!(
            "Codex would skip memoryd's hooks {} in {}; run `iapeer trust-hooks {}` (or `memoryctl verify --repair`)",
            skipped.join(", "),
            real.display(),
            real.display()
        ))
    } else if !disabled.is_empty() {
        Verdict::Disabled(format!(
            "memoryd's hooks {} in {} are turned off (`enabled = false`) in the user's Codex config; memoryd leaves that choice alone",
            disabled.join(", "),
            real.display()
        ))
    } else {
        Verdict::Runs(hooks.len())
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    /// memoryd's hooks.json as the sweep writes it for Codex, shims in `/r`.
    const HOOKS_JSON: &str = r#"{"hooks": {
      "SessionStart": [{"hooks": [{"type": "command", "command": "/r/plugins/memoryd/hooks/memoryd.codex.session-start.sh", "timeout": 10}]}],
      "UserPromptSubmit": [{"hooks": [{"type": "command", "command": "/r/plugins/memoryd/hooks/memoryd.codex.prompt-submit.sh", "timeout": 5}]}],
      "PostToolUse": [{"hooks": [{"type": "command", "command": "/r/plugins/memoryd/hooks/memoryd.codex.post-tool.sh", "timeout": 5}]}],
      "SessionEnd": [{"hooks": [{"type": "command", "command": "/r/plugins/memoryd/hooks/memoryd.codex.session-end.sh", "timeout": 2}]}]
    }}"#;

    /// What `codex app-server` 0.171.0 answered to `hooks/list` for that
    /// file in `/tmp/p14npm/proj`: the key and `currentHash` of each hook.
    const CODEX_LISTED: [(&str, &str); 4] = [
        (
            "/tmp/p14npm/proj/.codex/hooks.json:session_start:0:0",
            "sha256:adc7fca6ca52db78dba4bb4f3ad496103fff82ca5efec311e7caba5eb30cdd3b",
        ),
        (
            "/tmp/p14npm/proj/.codex/hooks.json:user_prompt_submit:0:0",
            "sha256:6bb73c71142e1d67f3c5c7c0bcbd5a5552a6a4bc340aed0b7ad63d21e33ec1bb",
        ),
        (
            "/tmp/p14npm/proj/.codex/hooks.json:post_tool_use:0:0",
            "sha256:4060bc049a90670ea0469bccd6d8333a8ab6641e19dd5e4eb710a9ad55bf10f6",
        ),
        (
            "/tmp/p14npm/proj/.codex/hooks.json:session_end:0:0",
            "sha256:d49a59f4e64631b3ea2535bb2f26d8c38a894311b720ae350e4318768f427d19",
        ),
    ];

    fn listed() -> Vec<Hook> {
        let doc = json::parse_object(HOOKS_JSON.as_bytes()).unwrap();
        our_hooks(Path::new("/tmp/p14npm/proj/.codex/hooks.json"), &doc)
    }

    #[test]
    fn keys_and_hashes_are_those_codex_lists() {
        let got: Vec<(String, String)> = listed().into_iter().map(|h| (h.key, h.hash)).collect();
        let want: Vec<(String, String)> =
            CODEX_LISTED.iter().map(|(k, h)| ((*k).to_owned(), (*h).to_owned())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn foreign_hooks_shift_our_positions_and_matchers_count_only_where_codex_uses_them() {
        let doc = json::parse_object(
            br#"{"hooks": {"PostToolUse": [
                {"matcher": "Bash", "hooks": [{"type": "command", "command": "lint.sh"}]},
                {"matcher": "Edit", "hooks": [{"type": "command", "command": "fmt.sh"}, {"type": "command", "command": "/r/memoryd.codex.post-tool.sh", "timeout": 5}]}
            ], "UserPromptSubmit": [{"matcher": "x", "hooks": [{"type": "command", "command": "/r/memoryd.codex.prompt-submit.sh", "timeout": 5}]}]}}"#,
        )
        .unwrap();
        let hooks = our_hooks(Path::new("/p/.codex/hooks.json"), &doc);
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].key, "/p/.codex/hooks.json:post_tool_use:1:1");
        let plain = |label: &str, command: &str| {
            hook_hash(label, None, &serde_json::json!({"type": "command", "command": command, "timeout": 5}))
        };
        assert_ne!(hooks[0].hash, plain("post_tool_use", "/r/memoryd.codex.post-tool.sh"));
        assert_eq!(hooks[1].hash, plain("user_prompt_submit", "/r/memoryd.codex.prompt-submit.sh"));
    }

    /// The user's config as Codex's `upsert_hook_trusted_hashes` writes it.
    fn config(entries: &[(&str, &str)]) -> String {
        let mut text = String::from("model = \"o4\"\n\n[projects.\"/tmp/p14npm/proj\"]\ntrust_level = \"trusted\"\n");
        for (key, hash) in entries {
            text.push_str(&format!("\n[hooks.state.\"{key}\"]\ntrusted_hash = \"{hash}\"\n"));
        }
        text
    }

    #[test]
    fn each_hook_is_trusted_untrusted_changed_or_turned_off() {
        let hooks = listed();
        let states = HookStates::parse(&config(&CODEX_LISTED)).unwrap();
        assert!(hooks.iter().all(|h| states.status(h) == Status::Trusted));

        let stale = [CODEX_LISTED[0], (CODEX_LISTED[1].0, "sha256:0000")];
        let text = config(&stale) + &format!("\n[hooks.state.\"{}\"]\nenabled = false\n", CODEX_LISTED[3].0);
        let states = HookStates::parse(&text).unwrap();
        let statuses: Vec<Status> = hooks.iter().map(|h| states.status(h)).collect();
        assert_eq!(statuses, [Status::Trusted, Status::Modified, Status::Untrusted, Status::Disabled]);
    }

    #[test]
    fn every_toml_form_of_the_state_counts_and_a_malformed_entry_is_ignored() {
        let (key, hash) = CODEX_LISTED[0];
        let hook = &listed()[0];
        for text in [
            format!("hooks = {{ state = {{ \"{key}\" = {{ trusted_hash = \"{hash}\" }} }} }}\n"),
            format!("[hooks.state]\n\"{key}\".trusted_hash = \"{hash}\"\n"),
            format!("[hooks]\nstate.\"  {key} \" = {{ trusted_hash = \"{hash}\", enabled = true }}\n"),
        ] {
            assert_eq!(HookStates::parse(&text).unwrap().status(hook), Status::Trusted, "{text}");
        }
        let wrong = format!("[hooks.state.\"{key}\"]\ntrusted_hash = \"{hash}\"\nenabled = \"no\"\n");
        assert_eq!(HookStates::parse(&wrong).unwrap().status(hook), Status::Untrusted);
        assert!(HookStates::parse("[hooks\n").is_err());
    }

    #[test]
    fn the_verdict_names_the_skipped_hooks_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("hooks.json");
        std::fs::write(&real, HOOKS_JSON).unwrap();
        let doc = json::parse_object(HOOKS_JSON.as_bytes()).unwrap();
        let hooks = our_hooks(&real, &doc);
        let trusted: Vec<(&str, &str)> = hooks.iter().map(|h| (h.key.as_str(), h.hash.as_str())).collect();

        let all = HookStates::parse(&config(&trusted)).unwrap();
        assert_eq!(judge(&real, &real, &all), Ok(Verdict::Runs(4)));

        let some = HookStates::parse(&config(&[trusted[0], (trusted[2].0, "sha256:old")])).unwrap();
        let Ok(Verdict::Skipped(sentence)) = judge(&real, &real, &some) else { panic!("not skipped") };
        assert!(
            sentence.contains(
                "UserPromptSubmit (untrusted), PostToolUse (changed since it was trusted), SessionEnd (untrusted)"
            ),
            "{sentence}"
        );
        assert!(sentence.contains(&format!("`iapeer trust-hooks {}`", real.display())), "{sentence}");

        let off = config(&trusted[..3]) + &format!("\n[hooks.state.\"{}\"]\nenabled = false\n", trusted[3].0);
        let Ok(Verdict::Disabled(sentence)) = judge(&real, &real, &HookStates::parse(&off).unwrap()) else {
            panic!("not disabled")
        };
        assert!(sentence.contains("SessionEnd"), "{sentence}");

        // Trusted under the symlinked path the fleet map names.
        let named = Path::new("/link/.codex/hooks.json");
        let aliased: Vec<Hook> = our_hooks(named, &doc);
        let aliased: Vec<(&str, &str)> = aliased.iter().map(|h| (h.key.as_str(), h.hash.as_str())).collect();
        assert_eq!(judge(&real, named, &HookStates::parse(&config(&aliased)).unwrap()), Ok(Verdict::Runs(4)));

        std::fs::write(&real, r#"{"hooks": {}}"#).unwrap();
        assert!(judge(&real, &real, &all).unwrap_err().contains("none of memoryd's hooks"));
    }
}

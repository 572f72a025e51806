//! Property tests of every surface merger (the invariants are in
//! `invariants/`, shared with the fuzz targets). `PROPTEST_CASES` raises the
//! number of cases for a long run.
#![allow(clippy::unwrap_used)]

mod invariants;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// A hook: foreign, ours from this root, or ours from an older root.
fn hook() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{1,6}\\.sh".prop_map(|c| json!({"type": "command", "command": c})),
        (0..4usize).prop_map(|i| {
            let e = ["SessionStart", "UserPromptSubmit", "PostToolUse", "SessionEnd"][i];
            json!({"type": "command", "command": format!("/r/hooks/memoryd.claude.{e}.sh"), "timeout": 5})
        }),
        Just(json!({"type": "command", "command": "/old/memoryd.claude.x.sh", "timeout": 30})),
        Just(json!({"command": 7})),
        Just(json!("not a hook")),
    ]
}

fn group() -> impl Strategy<Value = Value> {
    (proptest::option::of("[A-Z][a-z]{0,4}"), prop::collection::vec(hook(), 0..4)).prop_map(|(matcher, hooks)| {
        let mut g = Map::new();
        if let Some(m) = matcher {
            g.insert("matcher".into(), Value::from(m));
        }
        g.insert("hooks".into(), Value::Array(hooks));
        Value::Object(g)
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "[a-z ]{0,8}".prop_map(Value::from)
    ]
}

/// Claude's `permissions`: allow, deny and ask lists of rules (ours among
/// them, duplicated at times), other keys, or a value of the wrong shape.
fn permissions() -> impl Strategy<Value = Value> {
    let rule = prop_oneof![
        Just("mcp__memoryd".to_owned()),
        Just("mcp__memoryd__peer_send".to_owned()),
        Just("Bash(git:*)".to_owned()),
        "mcp__[a-z]{1,5}",
    ];
    let list = prop_oneof![
        4 => prop::collection::vec(rule, 0..4).prop_map(Value::from),
        1 => leaf(),
    ];
    let lists =
        prop::collection::vec((prop_oneof![Just("allow"), Just("deny"), Just("ask"), Just("defaultMode")], list), 0..4);
    prop_oneof![
        6 => lists.prop_map(|lists| Value::Object(lists.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => leaf(),
    ]
}

/// A settings or hooks.json object: foreign keys around a `hooks` map of
/// our events and foreign ones, approvals, permissions and MCP servers.
fn settings() -> impl Strategy<Value = Map<String, Value>> {
    let event = prop_oneof![
        Just("SessionStart".to_owned()),
        Just("UserPromptSubmit".to_owned()),
        Just("PostToolUse".to_owned()),
        Just("SessionEnd".to_owned()),
        "[A-Z][a-z]{2,6}",
    ];
    let hooks = prop::collection::vec((event, prop::collection::vec(group(), 0..4)), 0..5);
    let foreign = prop::collection::vec(("[a-z]{1,6}", leaf()), 0..4);
    let approvals =
        proptest::option::of(prop::collection::vec(prop_oneof![Just("memoryd".to_owned()), "[a-z]{1,5}"], 0..4));
    let servers = proptest::option::of(prop::collection::vec(("[a-z]{1,5}", leaf()), 0..3));
    let permissions = proptest::option::of(permissions());
    (foreign, hooks, approvals, permissions, servers, any::<bool>()).prop_map(
        |(foreign, hooks, approvals, permissions, servers, hooks_first)| {
            let mut doc = Map::new();
            let hooks: Map<String, Value> = hooks.into_iter().map(|(e, g)| (e, Value::Array(g))).collect();
            if hooks_first {
                doc.insert("hooks".into(), Value::Object(hooks.clone()));
            }
            for (k, v) in foreign {
                doc.insert(k, v);
            }
            if !hooks_first && !hooks.is_empty() {
                doc.insert("hooks".into(), Value::Object(hooks));
            }
            if let Some(list) = approvals {
                doc.insert("enabledMcpjsonServers".into(), list.into_iter().map(Value::from).collect());
            }
            if let Some(permissions) = permissions {
                doc.insert("permissions".into(), permissions);
            }
            if let Some(servers) = servers {
                doc.insert("mcpServers".into(), Value::Object(servers.into_iter().collect()));
            }
            doc
        },
    )
}

/// A config.toml: foreign tables, comments, and our table in any form.
fn config_toml() -> impl Strategy<Value = String> {
    let ours = prop_oneof![
        Just(String::new()),
        Just("[mcp_servers.memoryd]\nurl = \"http://127.0.0.1:1/mcp\"\n".to_owned()),
        Just("[mcp_servers.\"memoryd\"]\nurl = \"x\" # stale\n[mcp_servers.\"memoryd\".http_headers]\n\"X-IAPeer-Identity\" = \"old\"\n".to_owned()),
        Just("[mcp_servers]\nmemoryd.url = \"x\"\nother.command = \"gh\"\n".to_owned()),
        Just("[mcp_servers]\nmemoryd = { url = \"x\" }\n".to_owned()),
        Just("mcp_servers = { gh = { command = \"gh\" }, memoryd = { url = \"x\" } }\n".to_owned()),
        Just("mcp_servers.memoryd.url = \"x\"\n".to_owned()),
        Just("[mcp_servers.github]\ncommand = \"gh\" # keep\n".to_owned()),
    ];
    let table = ("[a-z]{1,5}", "[a-z]{1,5}", "[a-z ]{0,6}", any::<bool>()).prop_map(|(name, key, value, comment)| {
        let note = if comment { " # note" } else { "" };
        format!("# about {name}\n[t_{name}]\n{key} = \"{value}\"{note}\n")
    });
    ("[a-z]{0,4}", ours, prop::collection::vec(table, 0..3), any::<bool>()).prop_map(
        |(top, ours, tables, ours_first)| {
            let top = if top.is_empty() { String::new() } else { format!("{top} = 1\n") };
            let tables = tables.concat();
            // Root-level keys (dotted or inline forms) must come before any table.
            if ours.starts_with('[') && !ours_first {
                format!("{top}{tables}{ours}")
            } else {
                format!("{top}{ours}{tables}")
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)))]

    #[test]
    fn hook_merge_keeps_foreign_hooks_and_is_idempotent(doc in settings()) {
        invariants::hooks_merge(&doc);
    }

    #[test]
    fn approval_and_server_entry_are_idempotent(doc in settings()) {
        invariants::list_and_entry_merge(&doc);
    }

    #[test]
    fn the_allow_rule_lands_once_keeps_foreign_rules_and_respects_deny(doc in settings()) {
        invariants::allow_rule_merge(&doc);
    }

    #[test]
    fn arbitrary_bytes_never_break_the_json_mergers(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        invariants::json_surface(&bytes);
    }

    #[test]
    fn arbitrary_json_objects_never_break_the_json_mergers(text in "\\{(\"([a-z]{1,4}|permissions)\": (\\[\\]|\\{\\}|1|\"x\"|null|\\{\"allow\": (1|\\[\\]|\\[1\\]|\\[\"mcp__memoryd\"\\])\\}), ){0,4}\"hooks\": (\\{\\}|\\[\\]|1|\\{\"SessionStart\": (1|\\[1\\]|\\[\\{\\}\\]|\\[\\{\"hooks\": 1\\}\\])\\})\\}") {
        invariants::json_surface(text.as_bytes());
    }

    #[test]
    fn the_codex_table_lands_once_in_any_form_and_keeps_the_rest(text in config_toml()) {
        invariants::toml_surface(&text);
    }

    #[test]
    fn arbitrary_text_never_breaks_the_toml_merger(text in "[\\[\\]a-z_.=\" #{},\n0-9-]{0,120}") {
        invariants::toml_surface(&text);
    }
}

//! The invariants of every surface merger, shared by the property tests
//! (`tests/properties.rs`) and the fuzz targets (`fuzz/`): a merge never
//! panics, never loses a foreign entry, leaves exactly one entry of ours,
//! and merging twice equals merging once. Each check panics on a breach.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use memoryd_core::surfaces::json::{self, Object};
use memoryd_core::surfaces::toml as surface_toml;
use serde_json::{Value, json};

/// Our hook groups, as the sweep writes them for Claude.
pub fn expected_groups() -> Vec<(&'static str, Value)> {
    ["SessionStart", "UserPromptSubmit", "PostToolUse", "SessionEnd"]
        .iter()
        .map(|event| {
            let hook =
                json!({"type": "command", "command": format!("/r/hooks/memoryd.claude.{event}.sh"), "timeout": 5});
            (*event, json!({"hooks": [hook]}))
        })
        .collect()
}

/// Every foreign hook command per event, in order.
fn foreign_hooks(doc: &Object) -> Vec<(String, Vec<String>)> {
    let Some(Value::Object(hooks)) = doc.get("hooks") else { return Vec::new() };
    hooks
        .iter()
        .map(|(event, list)| {
            let commands = list
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g.get("hooks").and_then(Value::as_array).cloned().unwrap_or_default())
                .filter(|h| !h.get("command").and_then(Value::as_str).is_some_and(json::is_our_command))
                .map(|h| h.to_string())
                .collect();
            (event.clone(), commands)
        })
        .filter(|(_, c): &(String, Vec<String>)| !c.is_empty())
        .collect()
}

fn our_hook_count(doc: &Object, event: &str) -> usize {
    doc.get("hooks")
        .and_then(|h| h.get(event))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|g| g.get("hooks").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter(|h| h.get("command").and_then(Value::as_str).is_some_and(json::is_our_command))
        .count()
}

/// The keys of `before` appear in `after` in the same order.
fn keeps_key_order(before: &Object, after: &Object) {
    let kept: Vec<&String> = after.keys().filter(|k| before.contains_key(*k)).collect();
    let original: Vec<&String> = before.keys().filter(|k| after.contains_key(*k)).collect();
    assert_eq!(kept, original, "foreign key order changed");
}

/// The hook merge and its mirror on one settings or hooks.json object.
pub fn hooks_merge(input: &Object) {
    let expected = expected_groups();
    let mut once = input.clone();
    if json::merge_hooks(&mut once, &expected).is_err() {
        assert_eq!(&once, input, "a refused merge changed the document");
        return;
    }
    let mut twice = once.clone();
    assert_eq!(json::merge_hooks(&mut twice, &expected), Ok(false), "the second merge changed something");
    assert_eq!(twice, once);
    assert_eq!(foreign_hooks(input), foreign_hooks(&once), "a foreign hook was lost or moved");
    keeps_key_order(input, &once);
    for (event, group) in &expected {
        assert_eq!(our_hook_count(&once, event), 1, "{event}: not exactly one hook of ours");
        let groups = once["hooks"][*event].as_array().unwrap();
        assert_eq!(groups.iter().filter(|g| *g == group).count(), 1, "{event}: our group is not the expected one");
    }
    let mut stripped = once.clone();
    json::strip_hooks(&mut stripped).unwrap();
    assert_eq!(foreign_hooks(input), foreign_hooks(&stripped), "unprovision lost a foreign hook");
    for (event, _) in &expected {
        assert_eq!(our_hook_count(&stripped, event), 0);
    }
}

/// `enabledMcpjsonServers` and `mcpServers.memoryd` on one object.
pub fn list_and_entry_merge(input: &Object) {
    let mut once = input.clone();
    let listed = json::ensure_in_list(&mut once, &["enabledMcpjsonServers"], "memoryd");
    let entry = json!({"type": "http", "url": "http://127.0.0.1:1/mcp"});
    let entered = json::ensure_entry(&mut once, "mcpServers", "memoryd", &entry);
    if listed.is_err() || entered.is_err() {
        return;
    }
    let mut twice = once.clone();
    assert_eq!(json::ensure_in_list(&mut twice, &["enabledMcpjsonServers"], "memoryd"), Ok(false));
    assert_eq!(json::ensure_entry(&mut twice, "mcpServers", "memoryd", &entry), Ok(false));
    assert_eq!(twice, once);
    keeps_key_order(input, &once);
    let list = once["enabledMcpjsonServers"].as_array().unwrap();
    assert_eq!(list.iter().filter(|v| v.as_str() == Some("memoryd")).count(), 1);
    let foreign = |doc: &Object| -> Vec<Value> {
        doc.get("enabledMcpjsonServers")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter(|v| v.as_str() != Some("memoryd")).cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(foreign(input), foreign(&once), "a foreign approval was lost");
    if let Some(Value::Object(servers)) = input.get("mcpServers") {
        for (name, value) in servers.iter().filter(|(n, _)| *n != "memoryd") {
            assert_eq!(once["mcpServers"].get(name), Some(value), "foreign server {name} changed");
        }
    }
}

/// Claude's `permissions.<list>` rules.
fn rules(doc: &Object, list: &str) -> Vec<Value> {
    doc.get("permissions").and_then(|p| p.get(list)).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Our rule in `permissions.allow`: exactly once, after the foreign rules
/// kept in their order, `deny` and `ask` untouched, twice equals once; the
/// mirror takes out only ours and the containers it emptied.
pub fn allow_rule_merge(input: &Object) {
    const RULE: &str = "mcp__memoryd";
    let path = ["permissions", "allow"];
    let foreign =
        |doc: &Object| -> Vec<Value> { rules(doc, "allow").into_iter().filter(|v| v.as_str() != Some(RULE)).collect() };
    let mut once = input.clone();
    if json::ensure_in_list(&mut once, &path, RULE).is_err() {
        assert_eq!(&once, input, "a refused merge changed the document");
        return;
    }
    let mut twice = once.clone();
    assert_eq!(json::ensure_in_list(&mut twice, &path, RULE), Ok(false), "the second merge changed something");
    assert_eq!(twice, once);
    keeps_key_order(input, &once);
    if let (Some(Value::Object(before)), Some(Value::Object(after))) =
        (input.get("permissions"), once.get("permissions"))
    {
        keeps_key_order(before, after);
    }
    let allow = rules(&once, "allow");
    assert_eq!(allow.iter().filter(|v| v.as_str() == Some(RULE)).count(), 1, "not exactly one rule of ours");
    let had_ours = rules(input, "allow").iter().any(|v| v.as_str() == Some(RULE));
    if !had_ours {
        assert_eq!(allow.last().and_then(Value::as_str), Some(RULE), "our rule is not after the foreign ones");
    }
    assert_eq!(foreign(input), foreign(&once), "a foreign allow rule was lost or moved");
    for list in ["deny", "ask"] {
        assert_eq!(rules(input, list), rules(&once, list), "permissions.{list} changed");
    }

    let mut removed = once.clone();
    assert_eq!(json::remove_from_list(&mut removed, &path, RULE), Ok(true));
    assert!(!rules(&removed, "allow").iter().any(|v| v.as_str() == Some(RULE)), "our rule survived removal");
    assert_eq!(foreign(&removed), foreign(input), "removal lost a foreign allow rule");
    for list in ["deny", "ask"] {
        assert_eq!(rules(input, list), rules(&removed, list), "removal changed permissions.{list}");
    }
    // Without ours and without an empty container on the path, adding and
    // removing gives back the input.
    let empty_on_path = input.get("permissions").is_some_and(|p| {
        p.as_object().is_some_and(serde_json::Map::is_empty)
            || p.get("allow").and_then(Value::as_array).is_some_and(Vec::is_empty)
    });
    if !had_ours && !empty_on_path {
        assert_eq!(&removed, input, "provision then unprovision did not give the document back");
    }
}

/// JSON bytes as a surface file; every JSON merger on what parses.
pub fn json_surface(bytes: &[u8]) {
    if let Ok(object) = json::parse_object(bytes) {
        hooks_merge(&object);
        list_and_entry_merge(&object);
        allow_rule_merge(&object);
        let rendered = json::render(&object);
        assert_eq!(json::parse_object(&rendered).as_ref(), Ok(&object), "render does not round-trip");
    }
}

/// TOML text as Codex's config.toml: our table in place, exactly once, the
/// rest unchanged; twice equals once; removal leaves the rest.
pub fn toml_surface(text: &str) {
    let Ok(mut doc) = surface_toml::parse(text) else { return };
    let table = surface_toml::server_table("http://127.0.0.1:8766/mcp", "codex-boris");
    let without_ours = |doc: &toml_edit::DocumentMut| {
        let mut value = surface_toml::document_json(doc);
        if let Some(servers) = value.get_mut("mcp_servers").and_then(Value::as_object_mut) {
            servers.shift_remove("memoryd");
            if servers.is_empty() {
                value.as_object_mut().unwrap().shift_remove("mcp_servers");
            }
        }
        value
    };
    let foreign = without_ours(&doc);
    if surface_toml::ensure_server(&mut doc, "memoryd", &table).is_err() {
        return;
    }
    let text = surface_toml::render_checked(&doc).expect("our edit must leave valid TOML");
    let mut again = surface_toml::parse(&text).unwrap();
    let ours = surface_toml::document_json(&again)["mcp_servers"]["memoryd"].clone();
    assert_eq!(ours["url"], "http://127.0.0.1:8766/mcp", "{text}");
    assert_eq!(ours["http_headers"]["X-IAPeer-Identity"], "codex-boris", "{text}");
    assert_eq!(without_ours(&again), foreign, "foreign TOML changed:\n{text}");
    assert_eq!(surface_toml::ensure_server(&mut again, "memoryd", &table), Ok(false), "{text}");
    surface_toml::remove_server(&mut again, "memoryd").unwrap();
    let removed = surface_toml::render_checked(&again).expect("removal must leave valid TOML");
    assert_eq!(without_ours(&surface_toml::parse(&removed).unwrap()), foreign, "{removed}");
}

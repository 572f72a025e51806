//! Our table in Codex's `.codex/config.toml`, edited with `toml_edit` so
//! comments, order and foreign tables stay exactly as they were.
//!
//! Any form of our table counts as ours and is rewritten in place, in the
//! same form: a `[mcp_servers.memoryd]` table (quoted or not), dotted keys,
//! or an inline table. TOML rejects a file that defines a table twice, so
//! every result is parsed again before it may be written.

use serde_json::Value as Json;
use toml_edit::{DocumentMut, Item, Table, Value};

const SERVERS: &str = "mcp_servers";

/// Parses the file; the error is the `failed` detail.
pub fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>().map_err(|e| {
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        });
        format!("not valid TOML{}: {}", at.unwrap_or_default(), e.message().trim_end())
    })
}

/// `[mcp_servers.<name>]` with the url, the approval mode and the identity
/// header of spec 20.
pub fn server_table(url: &str, identity: &str) -> Table {
    let mut headers = Table::new();
    headers.insert("X-IAPeer-Identity", toml_edit::value(identity));
    let mut table = Table::new();
    table.insert("url", toml_edit::value(url));
    table.insert("default_tools_approval_mode", toml_edit::value("approve"));
    table.insert("http_headers", Item::Table(headers));
    table
}

/// Makes `mcp_servers.<name>` equal `expected`; whether the document changed.
pub fn ensure_server(doc: &mut DocumentMut, name: &str, expected: &Table) -> Result<bool, String> {
    let want = plain_table(expected);
    let root = doc.as_table_mut();
    let servers = match root.get_mut(SERVERS) {
        None => {
            let mut servers = Table::new();
            servers.set_implicit(true);
            servers.insert(name, Item::Table(expected.clone()));
            root.insert(SERVERS, Item::Table(servers));
            return Ok(true);
        }
        Some(item) => item,
    };
    if let Item::Value(Value::InlineTable(inline)) = servers {
        if inline.get(name).map(plain_value).as_ref() == Some(&want) {
            return Ok(false);
        }
        // An inline `mcp_servers` cannot hold a table: rewrite that one key
        // as a regular table (its other entries stay inline values).
        let mut table = std::mem::take(inline).into_table();
        table.set_implicit(true);
        *servers = Item::Table(table);
        // The key's spacing was that of `mcp_servers = {…}`.
        if let Some(mut key) = root.key_mut(SERVERS) {
            key.leaf_decor_mut().clear();
        }
    }
    let Some(servers) = root.get_mut(SERVERS) else {
        return Err(format!("`{SERVERS}` vanished while being edited"));
    };
    let Item::Table(servers) = servers else {
        return Err(format!("`{SERVERS}` is not a table; fix or remove it"));
    };
    let replacement = match servers.get(name) {
        None => Item::Table(expected.clone()),
        Some(existing) if plain(existing).as_ref() == Some(&want) => return Ok(false),
        Some(Item::Table(old)) if old.is_dotted() => Item::Table(dotted(expected.clone())),
        Some(Item::Table(old)) => {
            let mut table = expected.clone();
            let position = old.position();
            table.set_position(position);
            for (_, sub) in table.iter_mut() {
                if let Item::Table(sub) = sub {
                    sub.set_position(position);
                }
            }
            Item::Table(table)
        }
        Some(Item::Value(Value::InlineTable(_))) => {
            Item::Value(Value::InlineTable(expected.clone().into_inline_table()))
        }
        Some(_) => return Err(format!("`{SERVERS}.{name}` is not a table; fix or remove it")),
    };
    servers.insert(name, replacement);
    Ok(true)
}

/// Removes `mcp_servers.<name>`, and `mcp_servers` when we emptied it.
pub fn remove_server(doc: &mut DocumentMut, name: &str) -> Result<bool, String> {
    let root = doc.as_table_mut();
    let (removed, emptied) = match root.get_mut(SERVERS) {
        None => return Ok(false),
        Some(Item::Table(servers)) => (servers.remove(name).is_some(), servers.is_empty()),
        Some(Item::Value(Value::InlineTable(servers))) => (servers.remove(name).is_some(), servers.is_empty()),
        Some(_) => return Err(format!("`{SERVERS}` is not a table; fix or remove it")),
    };
    if removed && emptied {
        root.remove(SERVERS);
    }
    Ok(removed)
}

/// The rendered document, parsed again: our edit must leave a file Codex
/// accepts (TOML refuses a second definition of a table).
pub fn render_checked(doc: &DocumentMut) -> Result<String, String> {
    let text = doc.to_string();
    parse(&text).map_err(|e| format!("our edit would produce an invalid file ({e}); left as it was"))?;
    Ok(text)
}

fn dotted(mut table: Table) -> Table {
    table.set_dotted(true);
    for (_, sub) in table.iter_mut() {
        if let Item::Table(sub) = sub {
            sub.set_dotted(true);
        }
    }
    table
}

/// A whole document as JSON (key order kept), for comparisons.
pub fn document_json(doc: &DocumentMut) -> Json {
    plain_table(doc.as_table())
}

fn plain_table(table: &Table) -> Json {
    Json::Object(table.iter().filter_map(|(k, v)| Some((k.to_owned(), plain(v)?))).collect())
}

fn plain(item: &Item) -> Option<Json> {
    match item {
        Item::None => None,
        Item::Value(v) => Some(plain_value(v)),
        Item::Table(t) => Some(plain_table(t)),
        Item::ArrayOfTables(a) => Some(Json::Array(a.iter().map(plain_table).collect())),
    }
}

/// A TOML value as JSON, for structural comparison (key order ignored).
fn plain_value(value: &Value) -> Json {
    match value {
        Value::String(s) => Json::from(s.value().as_str()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => serde_json::Number::from_f64(*f.value()).map_or(Json::Null, Json::Number),
        Value::Boolean(b) => Json::from(*b.value()),
        Value::Datetime(d) => Json::from(d.value().to_string()),
        Value::Array(a) => Json::Array(a.iter().map(plain_value).collect()),
        Value::InlineTable(t) => Json::Object(t.iter().map(|(k, v)| (k.to_owned(), plain_value(v))).collect()),
    }
}

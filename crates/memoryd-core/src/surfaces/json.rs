//! Our part of the JSON surface files: hook groups (Claude's settings and
//! Codex's hooks.json share one shape), a string in a list, an entry of a
//! map. Every edit works on the parsed object and says whether it changed
//! anything; comparisons are structural (key order ignored) and foreign
//! keys keep their order (`shift_remove`, never `remove`).

use serde_json::{Map, Value};

/// A parsed JSON file whose root is an object.
pub type Object = Map<String, Value>;

/// Parses a surface file; the error is the sentence a `failed` outcome
/// carries (a file that does not parse is never rewritten).
pub fn parse_object(bytes: &[u8]) -> Result<Object, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the file's root is not a JSON object".to_owned()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// 2-space JSON with a trailing newline.
pub fn render(object: &Object) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(object).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// A hook is ours when its command's file name is `memoryd.*.sh`, wherever
/// the directory is, so a moved root still recognises its old entries.
pub fn is_our_command(command: &str) -> bool {
    let command = command.trim();
    let unquoted =
        ['\'', '"'].iter().find_map(|q| command.strip_prefix(*q).and_then(|c| c.strip_suffix(*q))).unwrap_or(command);
    let name = unquoted.rsplit('/').next().unwrap_or(unquoted);
    name.starts_with("memoryd.") && name.ends_with(".sh")
}

fn is_our_hook(hook: &Value) -> bool {
    hook.get("command").and_then(Value::as_str).is_some_and(is_our_command)
}

fn group_hooks(group: &Value) -> Option<&Vec<Value>> {
    group.get("hooks").and_then(Value::as_array)
}

/// A group is ours when it has hooks and every one of them is ours.
fn is_our_group(group: &Value) -> bool {
    group_hooks(group).is_some_and(|hooks| !hooks.is_empty() && hooks.iter().all(is_our_hook))
}

/// Takes our hooks out of a foreign group; whether any was there.
fn strip_group(group: &mut Value) -> bool {
    let Some(hooks) = group.get_mut("hooks").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = hooks.len();
    hooks.retain(|h| !is_our_hook(h));
    hooks.len() != before
}

/// Removes our groups and our hooks in mixed groups from one event list.
fn strip_list(list: &mut Vec<Value>) -> bool {
    let mut changed = false;
    list.retain_mut(|group| {
        if is_our_group(group) {
            changed = true;
            return false;
        }
        changed |= strip_group(group);
        true
    });
    changed
}

fn hooks_object(root: &mut Object, create: bool) -> Result<Option<&mut Object>, String> {
    if create && !root.contains_key("hooks") {
        root.insert("hooks".to_owned(), Value::Object(Object::new()));
    }
    match root.get_mut("hooks") {
        None => Ok(None),
        Some(Value::Object(hooks)) => Ok(Some(hooks)),
        Some(_) => Err("`hooks` is not an object; fix or remove it".to_owned()),
    }
}

fn event_list<'a>(hooks: &'a mut Object, event: &str) -> Result<&'a mut Vec<Value>, String> {
    match hooks.get_mut(event) {
        Some(Value::Array(list)) => Ok(list),
        _ => Err(format!("`hooks.{event}` is not a list; fix or remove it")),
    }
}

/// Per event: exactly one group of ours, equal to the expected one, and
/// none of our hooks anywhere else. Whether the object changed.
pub fn merge_hooks(root: &mut Object, expected: &[(&str, Value)]) -> Result<bool, String> {
    validate_hooks(root)?;
    let Some(hooks) = hooks_object(root, true)? else {
        return Ok(false);
    };
    let mut changed = false;
    for (event, group) in expected {
        if !hooks.contains_key(*event) {
            hooks.insert((*event).to_owned(), Value::Array(vec![group.clone()]));
            changed = true;
            continue;
        }
        let list = event_list(hooks, event)?;
        let ours: Vec<&Value> = list.iter().filter(|g| is_our_group(g)).collect();
        let stray = list.iter().any(|g| !is_our_group(g) && group_hooks(g).is_some_and(|h| h.iter().any(is_our_hook)));
        if ours.len() == 1 && ours[0] == group && !stray {
            continue;
        }
        let mut merged = Vec::with_capacity(list.len() + 1);
        let mut placed = false;
        for mut existing in list.drain(..) {
            if is_our_group(&existing) {
                if !placed {
                    merged.push(group.clone());
                    placed = true;
                }
                continue;
            }
            strip_group(&mut existing);
            merged.push(existing);
        }
        if !placed {
            merged.push(group.clone());
        }
        *list = merged;
        changed = true;
    }
    // Our hooks under events we no longer use are stale.
    let keys: Vec<String> = hooks.keys().filter(|k| !expected.iter().any(|(e, _)| e == k)).cloned().collect();
    for key in keys {
        if let Some(Value::Array(list)) = hooks.get_mut(&key) {
            changed |= strip_list(list);
        }
    }
    Ok(changed)
}

/// The unprovision mirror: our groups and hooks go, foreign hooks stay,
/// event lists and the `hooks` key we emptied are dropped.
pub fn strip_hooks(root: &mut Object) -> Result<bool, String> {
    validate_hooks(root)?;
    let Some(hooks) = hooks_object(root, false)? else {
        return Ok(false);
    };
    let had_events = !hooks.is_empty();
    let mut changed = false;
    let keys: Vec<String> = hooks.keys().cloned().collect();
    for key in keys {
        if let Some(Value::Array(list)) = hooks.get_mut(&key) {
            let was_empty = list.is_empty();
            if strip_list(list) {
                changed = true;
                if list.is_empty() && !was_empty {
                    hooks.shift_remove(&key);
                }
            }
        }
    }
    if changed && had_events && hooks.is_empty() {
        root.shift_remove("hooks");
    }
    Ok(changed)
}

/// Refuses a `hooks` value whose shape we cannot edit safely, before any
/// change is made.
fn validate_hooks(root: &Object) -> Result<(), String> {
    match root.get("hooks") {
        None => Ok(()),
        Some(Value::Object(hooks)) => match hooks.iter().find(|(_, v)| !v.is_array()) {
            Some((event, _)) => Err(format!("`hooks.{event}` is not a list; fix or remove it")),
            None => Ok(()),
        },
        Some(_) => Err("`hooks` is not an object; fix or remove it".to_owned()),
    }
}

/// The object holding the last key of `path` (a key path such as
/// `["permissions", "allow"]`), its missing parents created when `create`.
fn parent_of<'a>(root: &'a mut Object, path: &[&str], create: bool) -> Result<Option<&'a mut Object>, String> {
    let mut object = root;
    for (depth, key) in path.iter().enumerate().take(path.len().saturating_sub(1)) {
        if create && !object.contains_key(*key) {
            object.insert((*key).to_owned(), Value::Object(Object::new()));
        }
        object = match object.get_mut(*key) {
            None => return Ok(None),
            Some(Value::Object(child)) => child,
            Some(_) => return Err(format!("`{}` is not an object; fix or remove it", path[..=depth].join("."))),
        };
    }
    Ok(Some(object))
}

/// Makes the list at `path` contain `item`, appended after foreign entries
/// (missing parents are created).
pub fn ensure_in_list(root: &mut Object, path: &[&str], item: &str) -> Result<bool, String> {
    let Some(key) = path.last() else { return Ok(false) };
    // Checked before anything is created, so a refusal changes nothing.
    list_at(root, path)?;
    let Some(parent) = parent_of(root, path, true)? else { return Ok(false) };
    match parent.get_mut(*key) {
        None => {
            parent.insert((*key).to_owned(), Value::Array(vec![Value::from(item)]));
            Ok(true)
        }
        Some(Value::Array(list)) => {
            let mut seen = false;
            let before = list.len();
            // Keep the first of ours, never a duplicate.
            list.retain(|v| v.as_str() != Some(item) || !std::mem::replace(&mut seen, true));
            if !seen {
                list.push(Value::from(item));
            }
            Ok(!seen || list.len() != before)
        }
        Some(_) => Err(format!("`{}` is not a list; fix or remove it", path.join("."))),
    }
}

/// Takes every `item` out of the list at `path`; drops the list, then each
/// parent object, that this emptied.
pub fn remove_from_list(root: &mut Object, path: &[&str], item: &str) -> Result<bool, String> {
    let Some(list) = list_at(root, path)? else { return Ok(false) };
    if !list.iter().any(|v| v.as_str() == Some(item)) {
        return Ok(false);
    }
    for depth in (1..=path.len()).rev() {
        let Some(parent) = parent_of(root, &path[..depth], false)? else { break };
        let key = path[depth - 1];
        let emptied = match parent.get_mut(key) {
            Some(Value::Array(list)) => {
                list.retain(|v| v.as_str() != Some(item));
                list.is_empty()
            }
            Some(Value::Object(object)) => object.is_empty(),
            _ => false,
        };
        if !emptied {
            break;
        }
        parent.shift_remove(key);
    }
    Ok(true)
}

/// The list at `path`, if there is one; an error when the path holds
/// something else.
fn list_at<'a>(root: &'a Object, path: &[&str]) -> Result<Option<&'a Vec<Value>>, String> {
    let mut object = root;
    for (depth, key) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        match (object.get(*key), last) {
            (None, _) => return Ok(None),
            (Some(Value::Array(list)), true) => return Ok(Some(list)),
            (Some(_), true) => return Err(format!("`{}` is not a list; fix or remove it", path.join("."))),
            (Some(Value::Object(child)), false) => object = child,
            (Some(_), false) => {
                return Err(format!("`{}` is not an object; fix or remove it", path[..=depth].join(".")));
            }
        }
    }
    Ok(None)
}

/// Makes `root[map][name]` equal `entry` (structurally), in place.
pub fn ensure_entry(root: &mut Object, map: &str, name: &str, entry: &Value) -> Result<bool, String> {
    if !root.contains_key(map) {
        root.insert(map.to_owned(), Value::Object(Object::new()));
    }
    let Some(Value::Object(entries)) = root.get_mut(map) else {
        return Err(format!("`{map}` is not an object; fix or remove it"));
    };
    if entries.get(name) == Some(entry) {
        return Ok(false);
    }
    // `insert` on an existing key keeps its position.
    entries.insert(name.to_owned(), entry.clone());
    Ok(true)
}

/// Removes `root[map][name]`; drops `map` if emptied.
pub fn remove_entry(root: &mut Object, map: &str, name: &str) -> Result<bool, String> {
    let entries = match root.get_mut(map) {
        None => return Ok(false),
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(format!("`{map}` is not an object; fix or remove it")),
    };
    if entries.shift_remove(name).is_none() {
        return Ok(false);
    }
    if entries.is_empty() {
        root.shift_remove(map);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the json_surface fuzz target: a number past u64 changed in
    /// its last digits when a settings file was rewritten.
    #[test]
    fn numbers_survive_a_rewrite_exactly() {
        for text in [
            r#"{"mcpSe2verpServers":222220000801344051591}"#,
            r#"{"a":0.1,"b":1e300,"c":5e-324,"d":-0.0,"e":18446744073709551615,"f":-9223372036854775808}"#,
        ] {
            let object = parse_object(text.as_bytes()).unwrap();
            assert_eq!(parse_object(&render(&object)).unwrap(), object, "{text}");
        }
    }
}

//! The memory tools of the MCP endpoint (spec 60) as plain functions:
//! search, read and write, always restricted to what the caller may read.
//! A refusal is one sentence, returned to the agent as a tool error.

use crate::files::FileGuard;
use crate::vault::{self, Index, Note, readable};
use serde_json::{Value, json};
use std::path::Path;
use std::time::SystemTime;

/// The most a note written through the tools may hold.
pub const MAX_WRITE_BYTES: usize = 256 << 10;
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 50;

/// Who is asking: a personality and the peers it is linked with.
pub struct Caller<'a> {
    pub personality: &'a str,
    pub linked: &'a [&'a str],
}

impl Caller<'_> {
    fn may_read(&self, note: &Note) -> bool {
        readable(note, self.personality, self.linked)
    }
}

/// A score with three decimals.
fn rounded(score: f32) -> f64 {
    (f64::from(score) * 1000.0).round() / 1000.0
}

/// `memory_search {query, limit?, scope?}`.
pub fn search(
    index: &Index,
    caller: &Caller<'_>,
    query: &str,
    limit: Option<u64>,
    scope: Option<&str>,
) -> Result<Value, String> {
    if query.trim().is_empty() {
        return Err("`query` is empty; say what to look for".to_owned());
    }
    let limit = limit.map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT));
    let in_scope = |note: &Note| match scope.unwrap_or("all") {
        "own" => note.owner.as_deref() == Some(caller.personality),
        "shared" => note.owner.is_none(),
        "peers" => note.owner.as_deref().is_some_and(|o| caller.linked.contains(&o)),
        _ => true,
    };
    if let Some(s) = scope
        && !["all", "own", "shared", "peers"].contains(&s)
    {
        return Err(format!("`scope` {s:?} is not one of all, own, shared, peers"));
    }
    let hits = index.search(query, |n| caller.may_read(n) && in_scope(n), limit);
    Ok(Value::Array(
        hits.iter()
            .map(|h| {
                json!({
                    "path": h.note.path,
                    "title": h.note.title,
                    "author": h.note.author,
                    "score": rounded(h.score),
                    "snippet": vault::snippet(h.note, query),
                })
            })
            .collect(),
    ))
}

/// `memory_read {path}`: the note's text, if the caller may read it.
pub fn read(vault: &Path, caller: &Caller<'_>, path: &str) -> Result<String, String> {
    let refused =
        || format!("{path:?} is not a note you can read (a path relative to the vault, inside it, ending in .md)");
    let rel = vault::safe_relative(path).ok_or_else(refused)?;
    let full = vault.join(&rel);
    // A symlink may not lead out of the vault either.
    let real = full.canonicalize().map_err(|_| format!("there is no note at {path:?}"))?;
    let real_vault = vault.canonicalize().map_err(|e| format!("the vault cannot be read: {e}"))?;
    if !real.starts_with(&real_vault) {
        return Err(refused());
    }
    let rel_text = rel.to_string_lossy().replace('\\', "/");
    let note = vault::read_note(vault, &full)
        .ok_or_else(|| format!("{path:?} is not a readable note (too large or not UTF-8)"))?;
    if !caller.may_read(&Note { path: rel_text, ..note }) {
        return Err(refused());
    }
    std::fs::read_to_string(&full).map_err(|e| format!("cannot read {path:?}: {e}"))
}

/// `memory_write {title, body, tags?, replace?}`: writes
/// `peers/<caller>/<slug>.md` atomically; an existing note only with
/// `replace`, and never one written by someone else.
#[allow(clippy::too_many_arguments)]
pub fn write(
    files: &FileGuard,
    vault: &Path,
    index: &Index,
    caller: &Caller<'_>,
    title: &str,
    body: &str,
    tags: &[String],
    replace: bool,
    now: SystemTime,
) -> Result<Value, String> {
    let slug = vault::slug(title).ok_or("the title makes an empty file name; use letters or digits in it")?;
    let rel = format!("peers/{}/{slug}.md", caller.personality);
    let path = vault.join(&rel);
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let text = vault::render_note(title, caller.personality, &stamp, tags, body);
    if text.len() > MAX_WRITE_BYTES {
        return Err(format!("the note is {} bytes; the limit is {MAX_WRITE_BYTES}", text.len()));
    }
    let existing = vault::read_note(vault, &path);
    if path.exists() {
        if let Some(note) = &existing
            && note.author.as_deref().is_some_and(|a| a != caller.personality)
        {
            return Err(format!(
                "{rel} was written by {}; memoryd never replaces another peer's note",
                note.author.as_deref().unwrap_or("?")
            ));
        }
        if !replace {
            return Err(format!("{rel} exists; pass replace: true to replace it, or choose another title"));
        }
    }
    if let Some(dir) = path.parent() {
        files.create_dir_all(dir, 0o755).map_err(|e| e.to_string())?;
    }
    files.write_atomic(&path, text.as_bytes(), Some(0o644)).map_err(|e| e.to_string())?;
    let similar: Vec<Value> = index
        .search(&format!("{title} {body}"), |n| n.path != rel && caller.may_read(n), 3)
        .iter()
        .map(|h| json!({"path": h.note.path, "title": h.note.title, "score": rounded(h.score)}))
        .collect();
    Ok(json!({"path": rel, "created": existing.is_none(), "similar": similar}))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use crate::vault::{Index, scan};

    #[test]
    fn zones_limit_reads_searches_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path();
        std::fs::create_dir_all(v.join("peers/bob")).unwrap();
        std::fs::write(v.join("peers/bob/secret.md"), "# Bob secret\nkafka").unwrap();
        std::fs::write(v.join("shared.md"), "# Shared\nkafka notes").unwrap();
        let index = Index::build(scan(v).unwrap());
        let ada = Caller { personality: "ada", linked: &[] };
        let ada_linked = Caller { personality: "ada", linked: &["bob"] };
        assert_eq!(search(&index, &ada, "kafka", None, None).unwrap().as_array().unwrap().len(), 1);
        assert_eq!(search(&index, &ada_linked, "kafka", None, Some("peers")).unwrap().as_array().unwrap().len(), 1);
        assert!(read(v, &ada, "peers/bob/secret.md").is_err());
        assert!(read(v, &ada_linked, "peers/bob/secret.md").unwrap().contains("kafka"));
        assert!(read(v, &ada, "../../etc/passwd").is_err());
        let files = FileGuard::live();
        let w =
            write(&files, v, &index, &ada, "Kafka tuning!", "batch sizes", &["ops".into()], false, SystemTime::now())
                .unwrap();
        assert_eq!(w["path"], "peers/ada/kafka-tuning.md");
        assert_eq!(w["created"], true);
        assert!(w["similar"].as_array().unwrap().iter().any(|s| s["path"] == "shared.md"));
        let again = write(&files, v, &index, &ada, "Kafka tuning!", "x", &[], false, SystemTime::now()).unwrap_err();
        assert!(again.contains("replace: true"), "{again}");
        assert!(write(&files, v, &index, &ada, "Kafka tuning!", "x", &[], true, SystemTime::now()).is_ok());
        assert!(write(&files, v, &index, &ada, "!!!", "x", &[], false, SystemTime::now()).is_err());
        // A note in one's own zone written by someone else is never replaced.
        std::fs::write(v.join("peers/ada/foreign.md"), "---\nauthor: bob\n---\nx").unwrap();
        assert!(
            write(&files, v, &index, &ada, "foreign", "y", &[], true, SystemTime::now())
                .unwrap_err()
                .contains("never replaces")
        );
    }
}

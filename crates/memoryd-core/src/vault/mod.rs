//! The vault of Markdown notes and its search index (spec 60).
//!
//! Zones: `peers/<personality>/**.md` is that peer's own; every other note
//! is shared. A peer reads shared notes, its own and its linked peers'.
//!
//! Search is BM25 over title and body, title terms weighted up (a BM25F
//! style combination: a title occurrence counts [`TITLE_WEIGHT`] times).
//! A hand-written in-memory index rather than `tantivy`, chosen by
//! measurement (`cargo test --release -p memoryd-core --test search_scale
//! -- --ignored --nocapture`, 200-word notes, this 2-core machine): a
//! query takes 14 µs over 1,000 notes, 0.18 ms over 10,000 and 1.6 ms over
//! 50,000, far below an agent's tool-call round trip, so an on-disk engine
//! with its own files, threads and compile cost would buy nothing here.

pub mod embed;
pub mod fragment;
pub mod memory;

use crate::host::files::{EntryKind, FileError, RealDir};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// Notes larger than this are skipped (and counted).
pub const MAX_NOTE_BYTES: u64 = 1 << 20;
/// How much more a title occurrence counts than a body occurrence.
pub const TITLE_WEIGHT: f32 = 3.0;
const K1: f32 = 1.2;
const B: f32 = 0.75;

/// One note of the vault.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Relative to the vault, `/`-separated.
    pub path: String,
    pub title: String,
    pub author: Option<String>,
    pub created: Option<String>,
    pub tags: Vec<String>,
    /// The peer whose zone holds it; None for a shared note.
    pub owner: Option<String>,
    pub body: String,
    pub modified: SystemTime,
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub notes: Vec<Note>,
    /// Files skipped: not UTF-8, or larger than 1 MiB.
    pub skipped: usize,
}

/// Walks the vault: hidden dirs and `*.tmp` files are ignored, notes that
/// are not UTF-8 or too large are skipped and counted. Symlinks are not
/// followed (a link could lead out of the vault or into another zone, and
/// search, snippets and fragments show what the scan indexed); every dir
/// and note is opened through [`RealDir`], so a dir swapped for a link
/// during the walk is not followed either.
pub fn scan(vault: &Path) -> Result<Scan, FileError> {
    let root = RealDir::open(vault)?;
    let mut out = Scan::default();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = match root.sub(Path::new(&rel)).and_then(|dir| dir.entries().map(|e| (dir, e))) {
            Ok(listed) => listed,
            Err(e) if rel.is_empty() => return Err(e),
            Err(_) => continue,
        };
        let (dir, entries) = dir;
        for (os_name, kind) in entries {
            let name = os_name.to_string_lossy();
            if name.starts_with('.') || name.ends_with(".tmp") {
                continue;
            }
            // A path is shown to agents on a line of its own.
            if name.chars().any(breaks_line) {
                out.skipped += 1;
                continue;
            }
            let path = if rel.is_empty() { name.into_owned() } else { format!("{rel}/{name}") };
            match kind {
                EntryKind::Dir => stack.push(path),
                EntryKind::File if path.ends_with(".md") => match read_text(&dir, &os_name) {
                    Ok(Some((text, modified))) => out.notes.push(parse_note(&path, &text, modified)),
                    _ => out.skipped += 1,
                },
                _ => {}
            }
        }
    }
    out.notes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A note's text and mtime, read from `dir` without following a symlink;
/// None when it must be skipped (larger than 1 MiB, or not UTF-8). A file
/// with more than one hard link is refused: its other names may lie in
/// another zone, and a hard link has no real path to judge it by.
pub fn read_text(dir: &RealDir, name: &OsStr) -> Result<Option<(String, SystemTime)>, FileError> {
    let Some(read) = dir.read_file(name, MAX_NOTE_BYTES)? else { return Ok(None) };
    if read.links > 1 {
        let error = std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "it has {} hard links, and a note must have one (its other names may be in another zone)",
                read.links
            ),
        );
        return Err(FileError::Io { op: "read", path: dir.path().join(name), error });
    }
    Ok(String::from_utf8(read.bytes).ok().map(|text| (text, read.modified)))
}

/// The zone owner of a relative path: `peers/<personality>/…`.
pub fn owner_of(rel: &str) -> Option<String> {
    let mut parts = rel.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("peers"), Some(p), Some(_)) if crate::fleet::names::is_personality(p) => Some(p.to_owned()),
        _ => None,
    }
}

/// Parses front matter (`title`, `author`, `created`, `tags` as `[a, b]` or
/// `- item` lines; other keys ignored; a repeated key does not override the
/// first) and the body. The block ends at the first line that is `---`. A
/// note without a title takes its first `# ` heading, else its file name. A
/// note in a peer's zone is that peer's: only memoryd writes there, for
/// that peer, so an `author` line claiming someone else is not believed.
pub fn parse_note(rel: &str, text: &str, modified: SystemTime) -> Note {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut tags: Option<Vec<String>> = None;
    let mut body = text;
    if let Some(rest) = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n"))
        && let Some((block, after)) = split_block(rest)
    {
        body = after.trim_start_matches(['\r', '\n']);
        let mut in_tags = false;
        for line in block.lines() {
            if let Some(item) = line.trim_start().strip_prefix("- ").filter(|_| in_tags) {
                tags.get_or_insert_default().push(unquote(item));
                continue;
            }
            in_tags = false;
            let Some((key, value)) = line.split_once(':') else { continue };
            let (key, value) = (key.trim().to_lowercase(), value.trim());
            if key != "tags" {
                fields.entry(key).or_insert_with(|| unquote(value));
            } else if tags.is_none() {
                let list = tags.insert(Vec::new());
                if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                    list.extend(flow_items(inner).into_iter().filter(|t| !t.is_empty()));
                } else if value.is_empty() {
                    in_tags = true;
                } else {
                    list.push(unquote(value));
                }
            }
        }
    }
    let heading = body.lines().find_map(|l| l.strip_prefix("# ")).map(|h| h.trim().to_owned());
    let file_name = rel.rsplit('/').next().unwrap_or(rel).trim_end_matches(".md").to_owned();
    let title = fields.remove("title").filter(|t| !t.is_empty()).or(heading).unwrap_or(file_name);
    let owner = owner_of(rel);
    Note {
        path: rel.to_owned(),
        title: on_one_line(title),
        author: owner.clone().or_else(|| fields.remove("author").filter(|a| !a.is_empty()).map(on_one_line)),
        created: fields.remove("created").filter(|c| !c.is_empty()).map(on_one_line),
        tags: tags.unwrap_or_default().into_iter().map(on_one_line).collect(),
        owner,
        body: body.to_owned(),
        modified,
    }
}

/// A character that could end a line where it is shown (a fragment, a
/// search result): a control character or a Unicode line or paragraph
/// separator.
pub fn breaks_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with every character that [`breaks_line`] replaced by a space: a
/// hand-written note's title or tag can then never add a line of its own
/// to an agent's fragment.
fn on_one_line(text: String) -> String {
    if text.chars().any(breaks_line) {
        text.chars().map(|c| if breaks_line(c) { ' ' } else { c }).collect()
    } else {
        text
    }
}

/// The front matter block and what follows its closing `---` line.
fn split_block(rest: &str) -> Option<(&str, &str)> {
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some((&rest[..offset], &rest[offset + line.len()..]));
        }
        offset += line.len();
    }
    None
}

/// The items of a flow list's inside (`a, "b, c", 'd'`), quotes respected.
fn flow_items(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut quote = None;
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('"'), '\\') => {
                item.push(c);
                item.extend(chars.next());
            }
            (Some(q), c) if c == q => {
                quote = None;
                item.push(c);
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                item.push(c);
            }
            (None, ',') => items.push(unquote(&std::mem::take(&mut item))),
            _ => item.push(c),
        }
    }
    items.push(unquote(&item));
    items
}

/// A value without its quotes: `\"` and `\\` undone in double quotes (no
/// other escape, so no value ever holds a line break), `''` in single ones.
fn unquote(s: &str) -> String {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\\', Some(&next @ ('"' | '\\'))) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        return out;
    }
    match s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => s.to_owned(),
    }
}

/// Lower-cased alphanumeric words.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// One posting: the note and the term's weighted frequency in it.
#[derive(Debug, Clone, Copy)]
struct Posting {
    note: u32,
    tf: f32,
}

/// The search index over one scan.
#[derive(Debug, Clone, Default)]
pub struct Index {
    notes: Vec<Note>,
    postings: HashMap<String, Vec<Posting>>,
    /// Weighted length of each note.
    lengths: Vec<f32>,
    avg_length: f32,
    by_path: HashMap<String, u32>,
    pub skipped: usize,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit<'a> {
    pub note: &'a Note,
    pub score: f32,
}

impl Index {
    pub fn build(scan: Scan) -> Index {
        let mut postings: HashMap<String, Vec<Posting>> = HashMap::new();
        let mut lengths = Vec::with_capacity(scan.notes.len());
        let mut by_path = HashMap::with_capacity(scan.notes.len());
        for (i, note) in scan.notes.iter().enumerate() {
            let mut tf: HashMap<String, f32> = HashMap::new();
            let mut length = 0.0;
            for t in tokens(&note.title) {
                *tf.entry(t).or_default() += TITLE_WEIGHT;
                length += TITLE_WEIGHT;
            }
            for t in tokens(&note.body) {
                *tf.entry(t).or_default() += 1.0;
                length += 1.0;
            }
            lengths.push(length);
            for (term, tf) in tf {
                postings.entry(term).or_default().push(Posting { note: i as u32, tf });
            }
            by_path.insert(note.path.clone(), i as u32);
        }
        let avg_length = if lengths.is_empty() { 0.0 } else { lengths.iter().sum::<f32>() / lengths.len() as f32 };
        Index { notes: scan.notes, postings, lengths, avg_length, by_path, skipped: scan.skipped }
    }

    pub fn len(&self) -> usize {
        self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
    }

    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    pub fn get(&self, path: &str) -> Option<&Note> {
        self.by_path.get(path).map(|&i| &self.notes[i as usize])
    }

    /// BM25 over the notes `visible` allows, best first.
    pub fn search(&self, query: &str, visible: impl Fn(&Note) -> bool, limit: usize) -> Vec<Hit<'_>> {
        let n = self.notes.len() as f32;
        let mut scores: HashMap<u32, f32> = HashMap::new();
        let mut terms: Vec<String> = tokens(query).collect();
        terms.sort();
        terms.dedup();
        for term in &terms {
            let Some(list) = self.postings.get(term) else { continue };
            let df = list.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for p in list {
                let len = self.lengths[p.note as usize];
                let norm = K1 * (1.0 - B + B * len / self.avg_length.max(1.0));
                *scores.entry(p.note).or_default() += idf * p.tf * (K1 + 1.0) / (p.tf + norm);
            }
        }
        let mut hits: Vec<Hit<'_>> = scores
            .into_iter()
            .map(|(i, score)| Hit { note: &self.notes[i as usize], score })
            .filter(|h| visible(h.note))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.note.path.cmp(&b.note.path)));
        hits.truncate(limit);
        hits
    }

    /// The newest `n` notes `visible` allows (by `created`, else mtime).
    pub fn recent(&self, visible: impl Fn(&Note) -> bool, n: usize) -> Vec<&Note> {
        let mut notes: Vec<&Note> = self.notes.iter().filter(|n| visible(n)).collect();
        let key = |note: &Note| {
            note.created.as_deref().and_then(|c| humantime::parse_rfc3339_weak(c).ok()).unwrap_or(note.modified)
        };
        notes.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.path.cmp(&b.path)));
        notes.truncate(n);
        notes
    }
}

/// Whether `reader` may read `note`: shared, its own, or a linked peer's.
pub fn readable(note: &Note, reader: &str, linked: &[&str]) -> bool {
    zone_readable(note.owner.as_deref(), reader, linked)
}

/// Whether `reader` may read the zone of `owner` (None: the shared zone).
pub fn zone_readable(owner: Option<&str>, reader: &str, linked: &[&str]) -> bool {
    owner.is_none_or(|owner| owner == reader || linked.contains(&owner))
}

/// A rescan that would drop more than 10 notes and more than 20 % of the
/// index is refused: a vault can vanish for a moment (an unmounted disk).
pub fn rescan_refused(old: usize, new: usize) -> bool {
    let dropped = old.saturating_sub(new);
    dropped > 10 && dropped * 5 > old
}

/// The slug of a title: lower-cased, every run of characters other than
/// `a-z0-9` one `-`, trimmed, at most 80 characters; None when empty.
pub fn slug(title: &str) -> Option<String> {
    let mut out = String::new();
    for c in title.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(80).collect();
    let trimmed = trimmed.trim_end_matches('-').to_owned();
    (!trimmed.is_empty()).then_some(trimmed)
}

/// A note's text with its front matter.
pub fn render_note(title: &str, author: &str, created: &str, tags: &[String], body: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let tags: Vec<String> = tags.iter().map(|t| quote(t)).collect();
    format!(
        "---\ntitle: {}\nauthor: {author}\ncreated: {created}\ntags: [{}]\n---\n\n{}\n",
        quote(title),
        tags.join(", "),
        body.trim_end()
    )
}

/// A vault-relative path made safe: no absolute path, no `..`, no hidden
/// part, `.md` only. None when it is not one.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) if !part.to_string_lossy().starts_with('.') => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (out.extension().is_some_and(|e| e == "md")).then_some(out)
}

/// The first body line that holds a query term, shortened.
pub fn snippet(note: &Note, query: &str) -> String {
    let terms: Vec<String> = tokens(query).collect();
    let line = note
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| tokens(l).any(|t| terms.contains(&t)))
        .or_else(|| note.body.lines().find(|l| !l.trim().is_empty() && !l.starts_with('#')))
        .unwrap_or("");
    let line = line.trim();
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn parses_front_matter_headings_and_zones() {
        let t = SystemTime::UNIX_EPOCH;
        let n = parse_note(
            "peers/ada/plan.md",
            "---\ntitle: \"The plan\"\nauthor: ada\ncreated: 2026-11-01T10:00:00Z\ntags: [a, 'b']\nmood: x\n---\n\nBody text.\n",
            t,
        );
        assert_eq!((n.title.as_str(), n.author.as_deref(), n.owner.as_deref()), ("The plan", Some("ada"), Some("ada")));
        assert_eq!(n.tags, ["a", "b"]);
        assert_eq!(n.body, "Body text.\n");
        let n = parse_note("notes/x.md", "---\ntags:\n- one\n- two\n---\n# Heading\ntext", t);
        assert_eq!((n.title.as_str(), n.owner), ("Heading", None));
        assert_eq!(n.tags, ["one", "two"]);
        assert_eq!(parse_note("deploy-notes.md", "no heading", t).title, "deploy-notes");
    }

    #[test]
    fn front_matter_is_not_fooled_by_duplicate_keys_early_ends_or_a_claimed_author() {
        let t = SystemTime::UNIX_EPOCH;
        // In a peer's zone the author is that peer, whatever the block claims.
        let n = parse_note("peers/ada/x.md", "---\ntitle: \"X\"\nauthor: bob\n---\nbody", t);
        assert_eq!(n.author.as_deref(), Some("ada"));
        let n = parse_note("peers/ada/y.md", "# Y\nno front matter", t);
        assert_eq!(n.author.as_deref(), Some("ada"));
        // A duplicate key does not override the first.
        let n = parse_note(
            "ops/x.md",
            "---\ntitle: First\nauthor: ops\ntags: [a]\ntitle: Second\nauthor: bob\ntags: [b]\n---\n",
            t,
        );
        assert_eq!(
            (n.title.as_str(), n.author.as_deref(), n.tags.as_slice()),
            ("First", Some("ops"), &["a".to_owned()][..])
        );
        // Only a line that is exactly `---` ends the block.
        let n = parse_note("ops/x.md", "---\ntitle: T\n----\n---x\nauthor: ops\n---\nbody", t);
        assert_eq!((n.author.as_deref(), n.body.as_str()), (Some("ops"), "body"));
        // Quotes: escapes in double quotes, doubled single quotes, commas and brackets inside quotes.
        let n = parse_note(
            "ops/x.md",
            "---\ntitle: \"say \\\"hi\\\" \\\\ there\"\ntags: [\"a, b\", 'it''s', \"]\", plain]\n---\n",
            t,
        );
        assert_eq!(n.title, "say \"hi\" \\ there");
        assert_eq!(n.tags, ["a, b", "it's", "]", "plain"]);
        // A hand-written title, tag or heading never carries a line break or
        // control character on to a fragment.
        let n = parse_note("ops/x.md", "---\ntitle: a\u{2028}- [x](evil)\ttab\ntags: [\"t\u{1b}[31m\"]\n---\n", t);
        assert_eq!((n.title.as_str(), n.tags.as_slice()), ("a - [x](evil) tab", &["t [31m".to_owned()][..]));
        let n = parse_note("ops/y.md", "# head\rline\nbody", t);
        assert_eq!(n.title, "head line");
    }

    #[test]
    fn bm25_ranks_title_matches_up_and_respects_visibility() {
        let t = SystemTime::UNIX_EPOCH;
        let notes = vec![
            parse_note("a.md", "# Kafka tuning\nbatch sizes", t),
            parse_note("b.md", "# Notes\nkafka kafka appears in the body", t),
            parse_note("peers/bob/c.md", "# Kafka secrets\nbob only", t),
            parse_note("d.md", "# Other\nnothing", t),
        ];
        let index = Index::build(Scan { notes, skipped: 0 });
        let hits = index.search("kafka", |_| true, 10);
        assert_eq!(hits.len(), 3);
        assert_ne!(hits[0].note.path, "b.md", "a title match outranks body repeats");
        let hits = index.search("kafka", |n| readable(n, "ada", &[]), 10);
        assert!(hits.iter().all(|h| h.note.path != "peers/bob/c.md"));
        let linked = index.search("kafka", |n| readable(n, "ada", &["bob"]), 10);
        assert_eq!(linked.len(), 3);
        assert!(snippet(hits[0].note, "kafka").len() < 200);
    }

    #[test]
    fn slugs_paths_and_the_rescan_guard() {
        assert_eq!(slug("  Hello, World! 2026 ").as_deref(), Some("hello-world-2026"));
        assert_eq!(slug("!!!"), None);
        assert_eq!(slug(&"a".repeat(100)).unwrap().len(), 80);
        assert!(safe_relative("../../etc/passwd").is_none());
        assert!(safe_relative("/etc/passwd.md").is_none());
        assert!(safe_relative("peers/.hidden/x.md").is_none());
        assert!(safe_relative("notes/x.txt").is_none());
        assert_eq!(safe_relative("./peers/ada/x.md").unwrap(), PathBuf::from("peers/ada/x.md"));
        assert!(rescan_refused(100, 50));
        assert!(!rescan_refused(100, 85), "15 % dropped");
        assert!(!rescan_refused(20, 10), "only 10 dropped");
    }

    #[test]
    fn scans_skip_hidden_tmp_large_and_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path();
        std::fs::create_dir_all(v.join("peers/ada")).unwrap();
        std::fs::create_dir_all(v.join(".git")).unwrap();
        std::fs::write(v.join("peers/ada/one.md"), "# One").unwrap();
        std::fs::write(v.join("two.md"), "# Two").unwrap();
        std::fs::write(v.join(".git/x.md"), "# hidden").unwrap();
        std::fs::write(v.join("three.md.tmp"), "# tmp").unwrap();
        std::fs::write(v.join("bin.md"), [0xff, 0xfe]).unwrap();
        std::fs::write(v.join("big.md"), vec![b'a'; (MAX_NOTE_BYTES + 1) as usize]).unwrap();
        let s = scan(v).unwrap();
        assert_eq!(s.notes.iter().map(|n| n.path.as_str()).collect::<Vec<_>>(), ["peers/ada/one.md", "two.md"]);
        assert_eq!(s.skipped, 2);
    }
}

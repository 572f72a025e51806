//! The vault of Markdown notes and its search index (spec 60).
//!
//! Zones: `peers/<personality>/**.md` is that peer's own; every other note
//! is shared. A peer reads shared notes, its own and its linked peers'.
//!
//! Search is BM25 over title and body, title terms weighted up (a BM25F
//! style combination: a title occurrence counts [`TITLE_WEIGHT`] times),
//! over English stems with stop words left out ([`terms`]), a word found
//! as the query wrote it counting a little more ([`EXACT_WEIGHT`]).
//! A hand-written in-memory index rather than `tantivy`, chosen by
//! measurement (`cargo test --release -p memoryd-core --test search_scale
//! -- --ignored --nocapture`, 200-word notes, this 2-core machine): a
//! query takes 14 µs over 1,000 notes, 0.18 ms over 10,000 and 1.6 ms over
//! 50,000, far below an agent's tool-call round trip, so an on-disk engine
//! with its own files, threads and compile cost would buy nothing here.

pub mod embed;
pub mod fragment;
pub mod links;
pub mod memory;
pub mod terms;

use crate::host::files::{EntryKind, FileError, RealDir};
use links::Link;
use sha2::{Digest, Sha256};
#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Notes larger than this are skipped (and counted).
pub const MAX_NOTE_BYTES: u64 = 1 << 20;
/// How much more a title occurrence counts than a body occurrence. The
/// parameters below were measured on Cranfield (`memoryd-bench
/// --quality-tune`, a grid of all four): nDCG@10 0.383 here. Title weights
/// 2 to 4 with k1 1.5 to 2 lie within 0.003 of each other, so the lower
/// weight is taken (a title counted 3 times drowned body matches); a title
/// weight of 1, k1 1.2 (0.374) or an exact weight of 0.25 (0.377) lose.
pub const TITLE_WEIGHT: f32 = 2.0;
/// How much a word found as the query wrote it adds to its stem's match.
pub const EXACT_WEIGHT: f32 = 0.1;
const K1: f32 = 1.5;
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
    /// Files skipped (not UTF-8, larger than 1 MiB, a name with a line
    /// break), by path.
    pub skipped: Vec<String>,
}

/// Walks the vault: hidden dirs and `*.tmp` files are ignored, notes that
/// are not UTF-8 or too large are skipped and counted. Symlinks are not
/// followed (a link could lead out of the vault or into another zone, and
/// search, snippets and fragments show what the scan indexed); every dir
/// and note is opened through [`RealDir`], so a dir swapped for a link
/// during the walk is not followed either.
pub fn scan(vault: &Path) -> Result<Scan, FileError> {
    scan_from(&RealDir::open(vault)?, "")
}

/// [`scan`] of the directory `under` (relative, `/`-separated; "" for the
/// whole vault): an `under` that cannot be listed is an error only when it
/// is the vault itself, else it holds nothing.
fn scan_from(root: &RealDir, under: &str) -> Result<Scan, FileError> {
    let mut out = Scan::default();
    let mut stack = vec![under.to_owned()];
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
            let path = if rel.is_empty() { name.into_owned() } else { format!("{rel}/{name}") };
            if path.chars().any(breaks_line) {
                out.skipped.push(path);
                continue;
            }
            match kind {
                EntryKind::Dir => stack.push(path),
                EntryKind::File if path.ends_with(".md") => match read_text(&dir, &os_name) {
                    Ok(Some((text, modified))) => out.notes.push(parse_note(&path, &text, modified)),
                    _ => out.skipped.push(path),
                },
                _ => {}
            }
        }
    }
    out.notes.sort_by(|a, b| a.path.cmp(&b.path));
    out.skipped.sort();
    Ok(out)
}

/// What the change of one path of the vault (relative, `/`-separated)
/// means for the index, read as [`scan`] would read it: nothing for a
/// hidden or temporary name or a file that is no note; for a directory
/// (made, moved in or away), every note under it, and the indexed ones
/// gone from it. None when the vault cannot be opened: only a rescan
/// can tell.
pub fn reread(vault: &Path, rel: &str, index: &Index) -> Option<Vec<Update>> {
    if rel.is_empty() || rel.split('/').any(|part| part.is_empty() || part.starts_with('.') || part.ends_with(".tmp")) {
        return Some(Vec::new());
    }
    let root = RealDir::open(vault).ok()?;
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    // A parent that is gone, or reached through a link the scan does not
    // follow, holds nothing.
    let kind = root.sub(Path::new(parent)).ok().and_then(|dir| Some((dir.kind(OsStr::new(name)).ok()??, dir)));
    let (kind, dir) = match kind {
        Some((kind, dir)) => (Some(kind), Some(dir)),
        None => (None, None),
    };
    let mut updates = Vec::new();
    if kind == Some(EntryKind::Dir) || index.holds_under(rel) {
        let found = if kind == Some(EntryKind::Dir) { scan_from(&root, rel).ok()? } else { Scan::default() };
        let prefix = format!("{rel}/");
        let kept: BTreeSet<&str> =
            found.notes.iter().map(|n| n.path.as_str()).chain(found.skipped.iter().map(String::as_str)).collect();
        let gone =
            index.by_path.keys().chain(&index.skipped).filter(|p| p.starts_with(&prefix) && !kept.contains(p.as_str()));
        updates.extend(gone.map(|p| Update::Gone(p.clone())));
        updates.extend(found.notes.into_iter().map(Update::Note));
        updates.extend(found.skipped.into_iter().map(Update::Skipped));
    }
    if !rel.ends_with(".md") || kind == Some(EntryKind::Dir) {
        return Some(updates);
    }
    updates.push(match (kind, dir) {
        _ if rel.chars().any(breaks_line) => Update::Skipped(rel.to_owned()),
        (Some(EntryKind::File), Some(dir)) => match read_text(&dir, OsStr::new(name)) {
            Ok(Some((text, modified))) => Update::Note(parse_note(rel, &text, modified)),
            _ => Update::Skipped(rel.to_owned()),
        },
        _ => Update::Gone(rel.to_owned()),
    });
    Some(updates)
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

/// One posting: the note's slot and the term's weighted frequency in it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Posting {
    slot: u32,
    tf: f32,
}

/// How the index ranks: BM25 with title words weighted up, and a word
/// found as the query wrote it counting a little on top of its stem.
/// Measured on the Cranfield collection (`memoryd-bench --quality`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranking {
    /// How much more a title occurrence counts than a body occurrence.
    pub title_weight: f32,
    /// How much an exact-word match adds, against 1 for its stem's.
    pub exact_weight: f32,
    pub k1: f32,
    pub b: f32,
}

impl Default for Ranking {
    fn default() -> Ranking {
        Ranking { title_weight: TITLE_WEIGHT, exact_weight: EXACT_WEIGHT, k1: K1, b: B }
    }
}

/// One indexed note: the note, its digest, and what it put in the index
/// (so that an update takes exactly that out again).
#[derive(Debug, Clone)]
struct Entry {
    note: Note,
    digest: [u8; 32],
    title_words: u64,
    body_words: u64,
    /// Weighted length: title words × title weight + body words.
    length: f32,
    /// The index keys this note holds a posting under.
    keys: Vec<String>,
    links: Vec<Link>,
}

/// What became of one path of the vault, for [`Index::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The note as it reads now (added or changed).
    Note(Note),
    /// The file is there but is not indexed (too large, not UTF-8).
    Skipped(String),
    /// Nothing is there any more (deleted, or renamed away).
    Gone(String),
}

/// The search index of the vault. Built whole from a scan at start-up (and
/// on the watcher's overflow or a periodic rescan), then kept current one
/// note at a time by [`Index::apply`], which touches only that note's
/// postings. Whatever the order of updates, the index ranks exactly as a
/// fresh build over the same notes (a property test holds it to that).
///
/// Per-note data that lives beside the index (part B's vectors) keys on a
/// note's path and [`Index::digest`]: every change of a note goes through
/// [`Index::apply`] or a new [`Index::build`], and the digest changes
/// exactly when the note's indexed text does.
///
/// A clone shares the notes and posting lists (copied on write), so an
/// update while a reader holds the old index costs little more than the
/// change itself.
#[derive(Debug, Clone, Default)]
pub struct Index {
    ranking: Ranking,
    /// Slots; a removed note leaves a hole that the next added one fills.
    entries: Vec<Option<Arc<Entry>>>,
    free: Vec<u32>,
    by_path: HashMap<String, u32>,
    postings: HashMap<String, Arc<Vec<Posting>>>,
    /// The sum of the weighted lengths, kept in integers (title and body
    /// words apart) so that any order of updates gives the same average.
    title_words: u64,
    body_words: u64,
    skipped: BTreeSet<String>,
}

/// [`Index::canonical`]: each note's postings (key → tf), the title and
/// body word totals, the skipped paths.
#[cfg(test)]
type Canonical = (BTreeMap<String, BTreeMap<String, f32>>, u64, u64, BTreeSet<String>);

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit<'a> {
    pub note: &'a Note,
    pub score: f32,
}

/// The digest of what search indexes of a note: title and body.
fn digest(note: &Note) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(note.title.as_bytes());
    hash.update([0]);
    hash.update(note.body.as_bytes());
    hash.finalize().into()
}

impl Index {
    pub fn build(scan: Scan) -> Index {
        Index::with_ranking(scan, Ranking::default())
    }

    /// A fresh index with other ranking parameters (for measuring them).
    pub fn with_ranking(scan: Scan, ranking: Ranking) -> Index {
        let mut index = Index { ranking, ..Index::default() };
        // Stems repeat across notes: each distinct word is stemmed once.
        let mut stems = HashMap::new();
        for note in scan.notes {
            index.insert(note, &mut stems);
        }
        index.skipped = scan.skipped.into_iter().collect();
        index
    }

    /// Applies one change; whether the index changed.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Note(note) => {
                let path = note.path.clone();
                let unchanged = self.get(&path).is_some_and(|old| *old == note);
                let unskipped = self.skipped.remove(&path);
                if unchanged {
                    return unskipped;
                }
                self.remove(&path);
                self.insert(note, &mut HashMap::new());
                true
            }
            Update::Skipped(path) => self.remove(&path) | self.skipped.insert(path),
            Update::Gone(path) => self.remove(&path) | self.skipped.remove(&path),
        }
    }

    fn insert(&mut self, note: Note, stems: &mut HashMap<String, String>) {
        let weight = self.ranking.title_weight;
        let mut tf: HashMap<String, f32> = HashMap::new();
        let mut count = |text: &str, by: f32, words: &mut u64| {
            for word in terms::searched_words(text) {
                let stem = stems.entry(word.clone()).or_insert_with(|| terms::stem(&word)).clone();
                *tf.entry(stem).or_default() += by;
                *tf.entry(terms::exact_key(&word)).or_default() += by;
                *words += 1;
            }
        };
        let (mut title_words, mut body_words) = (0, 0);
        count(&note.title, weight, &mut title_words);
        count(&note.body, 1.0, &mut body_words);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push(None);
                (self.entries.len() - 1) as u32
            }
        };
        let mut keys = Vec::with_capacity(tf.len());
        for (key, tf) in tf {
            Arc::make_mut(self.postings.entry(key.clone()).or_default()).push(Posting { slot, tf });
            keys.push(key);
        }
        self.title_words += title_words;
        self.body_words += body_words;
        self.by_path.insert(note.path.clone(), slot);
        let length = weight * title_words as f32 + body_words as f32;
        let links = links::parse(&note.path, &note.body);
        self.entries[slot as usize] =
            Some(Arc::new(Entry { digest: digest(&note), note, title_words, body_words, length, keys, links }));
    }

    /// Takes a note out; whether it was in.
    fn remove(&mut self, path: &str) -> bool {
        let Some(slot) = self.by_path.remove(path) else { return false };
        let Some(entry) = self.entries[slot as usize].take() else { return false };
        for key in &entry.keys {
            if let Some(list) = self.postings.get_mut(key) {
                Arc::make_mut(list).retain(|p| p.slot != slot);
                if list.is_empty() {
                    self.postings.remove(key);
                }
            }
        }
        self.title_words -= entry.title_words;
        self.body_words -= entry.body_words;
        self.free.push(slot);
        true
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// How many files of the vault are not indexed (too large, not UTF-8).
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// Every note, in path order.
    pub fn notes(&self) -> Vec<&Note> {
        let mut notes: Vec<&Note> = self.entries.iter().flatten().map(|e| &e.note).collect();
        notes.sort_by(|a, b| a.path.cmp(&b.path));
        notes
    }

    pub fn get(&self, path: &str) -> Option<&Note> {
        self.entry(path).map(|e| &e.note)
    }

    /// The SHA-256 of the note's indexed text (title and body): what a
    /// per-note cache beside the index is keyed by.
    pub fn digest(&self, path: &str) -> Option<[u8; 32]> {
        self.entry(path).map(|e| e.digest)
    }

    /// The notes `links` (written in the note at `from`) lead to, in link
    /// order, once each; a link to no indexed note is left out.
    pub fn resolve(&self, from: &str, links: &[Link]) -> Vec<&Note> {
        let mut out: Vec<&Note> = Vec::new();
        for link in links {
            if let Some(note) = self.target(from, link)
                && !out.iter().any(|n| n.path == note.path)
            {
                out.push(note);
            }
        }
        out
    }

    /// The notes that link to the note at `path` (indexed or about to be),
    /// in path order.
    pub fn backlinks(&self, path: &str) -> Vec<&Note> {
        let name = links::name_of(path);
        let mut out: Vec<&Note> = self
            .entries
            .iter()
            .flatten()
            .filter(|e| e.note.path != path)
            .filter(|e| {
                e.links.iter().any(|link| match link {
                    Link::Path(p) => p == path,
                    Link::Name(n) => *n == name && self.named(&e.note.path, n, Some(path)) == Some(path),
                })
            })
            .map(|e| &e.note)
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The note one link leads to: a path as it is; a name to the note of
    /// that file name in the linking note's directory, else the first by
    /// path (Obsidian's "shortest path when possible" is this for a vault
    /// whose names are unique).
    fn target(&self, from: &str, link: &Link) -> Option<&Note> {
        match link {
            Link::Path(path) => self.get(path),
            Link::Name(name) => self.named(from, name, None).and_then(|p| self.get(p)),
        }
    }

    /// The path a `[[name]]` in the note at `from` stands for, among the
    /// indexed notes and `also`.
    fn named<'a>(&'a self, from: &str, name: &str, also: Option<&'a str>) -> Option<&'a str> {
        let dir = from.rsplit_once('/').map_or("", |(dir, _)| dir);
        let same_dir = |p: &str| p.rsplit_once('/').map_or("", |(d, _)| d) == dir;
        self.by_path
            .keys()
            .map(String::as_str)
            .chain(also)
            .filter(|p| links::name_of(p) == name)
            .min_by_key(|p| (!same_dir(p), *p))
    }

    /// Whether any indexed or skipped note lies under the directory `rel`.
    fn holds_under(&self, rel: &str) -> bool {
        let prefix = format!("{rel}/");
        self.by_path.keys().chain(&self.skipped).any(|p| p.starts_with(&prefix))
    }

    fn entry(&self, path: &str) -> Option<&Entry> {
        self.by_path.get(path).and_then(|&slot| self.entries[slot as usize].as_deref())
    }

    fn avg_length(&self) -> f32 {
        let total = self.ranking.title_weight * self.title_words as f32 + self.body_words as f32;
        if self.is_empty() { 0.0 } else { total / self.len() as f32 }
    }

    /// BM25 over the notes `visible` allows, best first.
    pub fn search(&self, query: &str, visible: impl Fn(&Note) -> bool, limit: usize) -> Vec<Hit<'_>> {
        let Ranking { exact_weight, k1, b, .. } = self.ranking;
        let n = self.len() as f32;
        let avg = self.avg_length().max(1.0);
        let mut keys: Vec<(String, f32)> = Vec::new();
        for word in terms::searched_words(query) {
            keys.push((terms::stem(&word), 1.0));
            keys.push((terms::exact_key(&word), exact_weight));
        }
        // A key that adds nothing would mark a note as hit with score 0.
        keys.retain(|(_, weight)| *weight > 0.0);
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.dedup_by(|a, b| a.0 == b.0);
        let mut scores = vec![0.0f32; self.entries.len()];
        let mut touched = Vec::new();
        for (key, weight) in &keys {
            let Some(list) = self.postings.get(key) else { continue };
            let df = list.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln() * weight;
            for p in list.iter() {
                let Some(entry) = &self.entries[p.slot as usize] else { continue };
                let norm = k1 * (1.0 - b + b * entry.length / avg);
                let score = &mut scores[p.slot as usize];
                if *score == 0.0 {
                    touched.push(p.slot);
                }
                *score += idf * p.tf * (k1 + 1.0) / (p.tf + norm);
            }
        }
        let mut hits: Vec<Hit<'_>> = touched
            .into_iter()
            .filter_map(|slot| {
                let note = &self.entries[slot as usize].as_ref()?.note;
                visible(note).then_some(Hit { note, score: scores[slot as usize] })
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.note.path.cmp(&b.note.path)));
        hits.truncate(limit);
        hits
    }

    /// The newest `n` notes `visible` allows (by `created`, else mtime).
    pub fn recent<'a>(&'a self, visible: impl Fn(&Note) -> bool, n: usize) -> Vec<&'a Note> {
        let mut notes: Vec<&Note> = self.entries.iter().flatten().map(|e| &e.note).filter(|n| visible(n)).collect();
        let key = |note: &Note| {
            note.created.as_deref().and_then(|c| humantime::parse_rfc3339_weak(c).ok()).unwrap_or(note.modified)
        };
        // Each note's time parsed once: the fragments ask after every change.
        let by_time = |note: &&'a Note| (std::cmp::Reverse(key(note)), note.path.as_str());
        notes.sort_by_cached_key(by_time);
        notes.truncate(n);
        notes
    }

    /// What the index holds, independent of slots and update order: each
    /// note with its postings (key → tf), the total lengths and the
    /// skipped paths. Two indexes that agree here rank every query alike.
    #[cfg(test)]
    fn canonical(&self) -> Canonical {
        let mut notes: BTreeMap<String, BTreeMap<String, f32>> = BTreeMap::new();
        for (key, list) in &self.postings {
            for p in list.iter() {
                let Some(entry) = &self.entries[p.slot as usize] else { continue };
                notes.entry(entry.note.path.clone()).or_default().insert(key.clone(), p.tf);
            }
        }
        for path in self.by_path.keys() {
            notes.entry(path.clone()).or_default();
        }
        (notes, self.title_words, self.body_words, self.skipped.clone())
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
    let stems: Vec<String> = terms::searched_words(query).map(|w| terms::stem(&w)).collect();
    let line = note
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| terms::searched_words(l).any(|w| stems.contains(&terms::stem(&w))))
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
        let index = Index::build(Scan { notes, skipped: Vec::new() });
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
    fn stems_find_relatives_and_the_exact_word_ranks_first() {
        let t = SystemTime::UNIX_EPOCH;
        let notes = vec![
            parse_note("wing.md", "# Wing\nthe wing is flexible under load", t),
            parse_note("tail.md", "# Tail\nthe tail was stabilized by a fin", t),
            parse_note("runs.md", "# Runs\nbatch runs nightly", t),
            parse_note("running.md", "# Running\nbatch running nightly", t),
        ];
        let index = Index::build(Scan { notes, skipped: Vec::new() });
        let paths = |q: &str| index.search(q, |_| true, 10).iter().map(|h| h.note.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths("flexibility of wings"), ["wing.md"]);
        assert_eq!(paths("how to stabilize"), ["tail.md"]);
        assert_eq!(paths("running")[0], "running.md", "the query's own word first");
        assert_eq!(paths("runs")[0], "runs.md");
        assert!(paths("the of and").is_empty(), "stop words match nothing");
        assert_eq!(snippet(index.get("tail.md").unwrap(), "stabilizing"), "the tail was stabilized by a fin");
    }

    #[test]
    fn an_update_leaves_a_copy_held_by_a_reader_as_it_was() {
        let t = SystemTime::UNIX_EPOCH;
        let notes = vec![parse_note("a.md", "# A\nold kafka words", t), parse_note("b.md", "# B\nkafka too", t)];
        let mut index = Index::build(Scan { notes, skipped: Vec::new() });
        let held = index.clone();
        index.apply(Update::Note(parse_note("a.md", "# A\nnew zookeeper words", t)));
        index.apply(Update::Gone("b.md".into()));
        let paths =
            |i: &Index, q: &str| i.search(q, |_| true, 10).iter().map(|h| h.note.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&held, "kafka"), ["a.md", "b.md"]);
        assert!(paths(&held, "zookeeper").is_empty());
        assert!(paths(&index, "kafka").is_empty());
        assert_eq!(paths(&index, "zookeeper"), ["a.md"]);
    }

    /// One step of the property test: what happens to the vault.
    #[derive(Debug, Clone)]
    enum Step {
        Write(usize, Vec<usize>),
        Skip(usize),
        Delete(usize),
        Rename(usize, usize),
        Burst(Vec<(usize, Vec<usize>)>),
    }

    const PATHS: [&str; 5] = ["a.md", "b.md", "peers/ada/c.md", "d/e.md", "f.md"];
    const WORDS: [&str; 8] = ["kafka", "flexible", "flexibility", "the", "wing", "run", "running", "runs"];

    fn text(words: &[usize]) -> String {
        let mut words = words.iter().map(|&w| WORDS[w]);
        let title = words.next().unwrap_or("untitled");
        format!("# {title}\n{}", words.collect::<Vec<_>>().join(" "))
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let words = || prop::collection::vec(0..WORDS.len(), 0..12);
        prop_oneof![
            4 => (0..PATHS.len(), words()).prop_map(|(p, w)| Step::Write(p, w)),
            1 => (0..PATHS.len()).prop_map(Step::Skip),
            2 => (0..PATHS.len()).prop_map(Step::Delete),
            2 => (0..PATHS.len(), 0..PATHS.len()).prop_map(|(a, b)| Step::Rename(a, b)),
            1 => prop::collection::vec((0..PATHS.len(), words()), 1..6).prop_map(Step::Burst),
        ]
    }

    proptest::proptest! {
        /// Any sequence of changes applied one note at a time leaves the
        /// index as a fresh build of the resulting vault: same postings,
        /// same lengths, same hits with the same scores.
        #[test]
        fn live_updates_equal_a_fresh_build(steps in proptest::collection::vec(step(), 0..40)) {
            let t = SystemTime::UNIX_EPOCH;
            // The vault as a model: path -> Some(text), or None when skipped.
            let mut vault: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut index = Index::default();
            let write = |vault: &mut BTreeMap<String, Option<String>>, index: &mut Index, p: usize, body: Option<String>| {
                let path = PATHS[p].to_owned();
                vault.insert(path.clone(), body.clone());
                index.apply(match body {
                    Some(body) => Update::Note(parse_note(&path, &body, t)),
                    None => Update::Skipped(path),
                });
            };
            for step in steps {
                match step {
                    Step::Write(p, words) => write(&mut vault, &mut index, p, Some(text(&words))),
                    Step::Skip(p) => write(&mut vault, &mut index, p, None),
                    Step::Delete(p) => {
                        vault.remove(PATHS[p]);
                        index.apply(Update::Gone(PATHS[p].to_owned()));
                    }
                    Step::Rename(a, b) => {
                        if let Some(moved) = vault.remove(PATHS[a]) {
                            index.apply(Update::Gone(PATHS[a].to_owned()));
                            write(&mut vault, &mut index, b, moved);
                        }
                    }
                    Step::Burst(writes) => {
                        for (p, words) in writes {
                            write(&mut vault, &mut index, p, Some(text(&words)));
                        }
                    }
                }
            }
            let fresh = Index::build(Scan {
                notes: vault.iter().filter_map(|(path, body)| Some(parse_note(path, body.as_ref()?, t))).collect(),
                skipped: vault.iter().filter(|(_, body)| body.is_none()).map(|(path, _)| path.clone()).collect(),
            });
            proptest::prop_assert_eq!(index.canonical(), fresh.canonical());
            proptest::prop_assert_eq!(index.notes(), fresh.notes());
            for word in WORDS {
                let hits = |i: &Index| i.search(word, |_| true, 10).iter().map(|h| (h.note.path.clone(), h.score)).collect::<Vec<_>>();
                proptest::prop_assert_eq!(hits(&index), hits(&fresh), "{}", word);
            }
            for path in PATHS {
                proptest::prop_assert_eq!(index.digest(path), fresh.digest(path));
            }
        }
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
    fn a_changed_path_is_reread_as_the_scan_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path();
        std::fs::create_dir_all(v.join("d/sub")).unwrap();
        std::fs::write(v.join("d/sub/n.md"), "# N\nbody").unwrap();
        std::fs::write(v.join("d/m.md"), "# M\nbody").unwrap();
        std::fs::write(v.join("big.md"), vec![b'a'; (MAX_NOTE_BYTES + 1) as usize]).unwrap();
        std::fs::write(v.join("other.txt"), "x").unwrap();
        std::os::unix::fs::symlink(v.join("d/sub/n.md"), v.join("link.md")).unwrap();
        let index = Index::build(scan(v).unwrap());
        let one = |rel: &str| match reread(v, rel, &index).unwrap().as_slice() {
            [update] => update.clone(),
            other => panic!("{rel}: {other:?}"),
        };
        assert!(matches!(one("d/sub/n.md"), Update::Note(n) if n.title == "N"));
        assert_eq!(one("big.md"), Update::Skipped("big.md".into()));
        assert_eq!(one("link.md"), Update::Gone("link.md".into()), "links are not followed");
        assert_eq!(one("gone.md"), Update::Gone("gone.md".into()));
        assert_eq!(one("no/such/dir/x.md"), Update::Gone("no/such/dir/x.md".into()));
        for ignored in [".git/x.md", "d/.hidden.md", "x.md.tmp", "other.txt", "no/such/dir"] {
            assert_eq!(reread(v, ignored, &index), Some(Vec::new()), "{ignored}");
        }
        // A directory moved: its notes leave with it, and arrive with it.
        std::fs::rename(v.join("d"), v.join("e")).unwrap();
        let mut gone = reread(v, "d", &index).unwrap();
        gone.sort_by_key(|u| format!("{u:?}"));
        assert_eq!(gone, [Update::Gone("d/m.md".into()), Update::Gone("d/sub/n.md".into())]);
        let mut came = reread(v, "e", &index).unwrap();
        came.sort_by_key(|u| format!("{u:?}"));
        let came: Vec<&str> = came
            .iter()
            .map(|u| match u {
                Update::Note(n) => n.path.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(came, ["e/m.md", "e/sub/n.md"]);
        assert_eq!(reread(Path::new("/no/such/vault"), "x.md", &index), None);
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
        assert_eq!(s.skipped, ["big.md", "bin.md"]);
    }
}

//! The memory tools of the MCP endpoint (spec 60) as plain functions:
//! search, read and write, always restricted to what the caller may read.
//! A refusal is one sentence, returned to the agent as a tool error.

use crate::host::files::{EntryKind, FileError, FileGuard, RealDir};
use crate::vault::{self, Index, Note, embed, links, readable};
use serde::Serialize;
use std::ffi::OsStr;
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

    fn may_read_zone(&self, owner: Option<&str>) -> bool {
        vault::zone_readable(owner, self.personality, self.linked)
    }
}

/// A score with three decimals.
fn rounded(score: f32) -> f64 {
    (f64::from(score) * 1000.0).round() / 1000.0
}

/// `memory_search`'s answer; the mode says whether the query's vector
/// took part ([`embed::rank`]).
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub mode: embed::Mode,
    pub results: Vec<SearchHit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub path: String,
    pub title: String,
    pub author: Option<String>,
    pub score: f64,
    pub snippet: String,
}

/// A note a link leads to, or a note linking here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Linked {
    pub path: String,
    pub title: String,
}

/// `memory_read`'s answer: the note's text and its place in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct ReadNote {
    pub path: String,
    pub text: String,
    /// The notes this one links to that the caller may read.
    pub links: Vec<Linked>,
    /// The notes the caller may read that link to this one.
    pub backlinks: Vec<Linked>,
}

/// `memory_write`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub path: String,
    pub created: bool,
    /// Notes like it, to link or merge by hand.
    pub similar: Vec<Similar>,
    pub links: Vec<Linked>,
    pub backlinks: Vec<Linked>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Similar {
    pub path: String,
    pub title: String,
    pub score: f64,
}

/// The notes among `notes` the caller may read, as links.
fn as_links<'a>(caller: &Caller<'_>, notes: impl IntoIterator<Item = &'a Note>) -> Vec<Linked> {
    notes
        .into_iter()
        .filter(|n| caller.may_read(n))
        .map(|n| Linked { path: n.path.clone(), title: n.title.clone() })
        .collect()
}

/// `memory_search {query, limit?, scope?}`.
pub fn search(
    index: &Index,
    caller: &Caller<'_>,
    query: &str,
    limit: Option<u64>,
    scope: Option<&str>,
    semantic: Option<&embed::Semantic<'_>>,
) -> Result<Found, String> {
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
    let (hits, mode) = embed::rank(index, query, semantic, |n| caller.may_read(n) && in_scope(n), limit);
    let results = hits
        .iter()
        .map(|h| SearchHit {
            path: h.note.path.clone(),
            title: h.note.title.clone(),
            author: h.note.author.clone(),
            score: rounded(h.score),
            snippet: vault::snippet(h.note, query),
        })
        .collect();
    Ok(Found { mode, results })
}

/// `memory_read {path}`: the note's text, if the caller may read it, with
/// the notes it links to and those linking to it (each only if the caller
/// may read it). Access is decided on the file a symlink leads to: its real
/// path must lie inside the vault, and the zone of that path (not of the
/// link) says who may read it; links are those of that real note.
pub fn read(vault: &Path, index: &Index, caller: &Caller<'_>, path: &str) -> Result<ReadNote, String> {
    let refused =
        || format!("{path:?} is not a note you can read (a path relative to the vault, inside it, ending in .md)");
    let rel = vault::safe_relative(path).ok_or_else(refused)?;
    let real_vault = vault.canonicalize().map_err(|e| format!("the vault cannot be read: {e}"))?;
    let real = real_vault.join(&rel).canonicalize().map_err(|_| format!("there is no note at {path:?}"))?;
    let real_rel =
        real.strip_prefix(&real_vault).ok().and_then(|r| vault::safe_relative(r.to_str()?)).ok_or_else(refused)?;
    let (Some(parent), Some(name)) = (real_rel.parent(), real_rel.file_name()) else { return Err(refused()) };
    let real_text = real_rel.to_string_lossy().replace('\\', "/");
    if !caller.may_read_zone(vault::owner_of(&real_text).as_deref()) {
        return Err(refused());
    }
    // The real path is opened with no link followed: a part swapped for a
    // link since the check above fails instead of redirecting the read.
    let dir = RealDir::open(&real_vault).and_then(|v| v.sub(parent)).map_err(|e| unreadable(path, &e))?;
    match vault::read_text(&dir, name) {
        Ok(Some((text, _))) => Ok(ReadNote {
            links: as_links(caller, index.resolve(&real_text, &links::parse(&real_text, &text))),
            backlinks: as_links(caller, index.backlinks(&real_text)),
            path: path.to_owned(),
            text,
        }),
        Ok(None) => Err(format!("{path:?} is not a readable note (larger than 1 MiB or not UTF-8)")),
        Err(e) => Err(unreadable(path, &e)),
    }
}

fn unreadable(path: &str, e: &FileError) -> String {
    format!("{path:?} cannot be read as a note: {e}")
}

/// `memory_write {title, body, tags?, replace?}`: writes
/// `peers/<caller>/<slug>.md` atomically; an existing note only with
/// `replace`. Another peer's note is never replaced: the caller writes only
/// in its own zone, and every note there is the caller's.
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
) -> Result<Written, String> {
    one_line("`title`", title)?;
    for (i, tag) in tags.iter().enumerate() {
        if tag.is_empty() {
            return Err(format!("`tags` item {} is empty; leave it out or name it", i + 1));
        }
        one_line(&format!("`tags` item {}", i + 1), tag)?;
    }
    let slug = vault::slug(title).ok_or("the title makes an empty file name; use letters or digits in it")?;
    let name = format!("{slug}.md");
    let rel = format!("peers/{}/{name}", caller.personality);
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let text = vault::render_note(title, caller.personality, &stamp, tags, body);
    if text.len() > MAX_WRITE_BYTES {
        return Err(format!("the note is {} bytes; the limit is {MAX_WRITE_BYTES}", text.len()));
    }
    // No part of the way is a symlink, so the note lands in the writer's
    // own zone of this vault or nowhere.
    let linked = |e: FileError| match e {
        FileError::Symlink { path, .. } => format!(
            "{} is a symbolic link, and memoryd writes notes only into real directories of your own zone in the vault; replace the link with a directory",
            path.strip_prefix(vault).unwrap_or(&path).display()
        ),
        other => other.to_string(),
    };
    let vault_dir = RealDir::open(vault).map_err(|e| format!("the vault cannot be opened: {e}"))?;
    let zone = Path::new("peers").join(caller.personality);
    let dir = files.create_sub(&vault_dir, &zone, 0o755).map_err(linked)?;
    let name = OsStr::new(&name);
    // The zone is the caller's, so a note in it is the caller's own.
    let existed = match dir.kind(name).map_err(|e| e.to_string())? {
        None => false,
        Some(EntryKind::File) => true,
        Some(EntryKind::Symlink) => {
            return Err(format!(
                "{rel} is a symbolic link, and memoryd replaces only real notes in your zone; remove the link or choose another title"
            ));
        }
        Some(_) => return Err(format!("{rel} exists and is not a note; choose another title")),
    };
    if existed && !replace {
        return Err(format!("{rel} exists; pass replace: true to replace it, or choose another title"));
    }
    files.write_in(&dir, name, text.as_bytes(), Some(0o644)).map_err(linked)?;
    let similar = index
        .search(&format!("{title} {body}"), |n| n.path != rel && caller.may_read(n), 3)
        .iter()
        .map(|h| Similar { path: h.note.path.clone(), title: h.note.title.clone(), score: rounded(h.score) })
        .collect();
    Ok(Written {
        links: as_links(caller, index.resolve(&rel, &links::parse(&rel, body))),
        backlinks: as_links(caller, index.backlinks(&rel)),
        path: rel,
        created: !existed,
        similar,
    })
}

/// Refuses a front matter value that could end its line: a control
/// character or a Unicode line or paragraph separator, so that what the
/// caller gives stays the value it was given (never a new `author` line or
/// the end of the block).
fn one_line(argument: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|&c| vault::breaks_line(c)) {
        Some(c) => Err(format!(
            "{argument} holds the control character or line break U+{:04X}; give it on one line without one",
            u32::from(c)
        )),
        None => Ok(()),
    }
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
        assert_eq!(search(&index, &ada, "kafka", None, None, None).unwrap().results.len(), 1);
        assert_eq!(search(&index, &ada_linked, "kafka", None, Some("peers"), None).unwrap().results.len(), 1);
        assert!(read(v, &Index::default(), &ada, "peers/bob/secret.md").is_err());
        assert!(read(v, &Index::default(), &ada_linked, "peers/bob/secret.md").unwrap().text.contains("kafka"));
        assert!(read(v, &Index::default(), &ada, "../../etc/passwd").is_err());
        let files = FileGuard::live();
        let w =
            write(&files, v, &index, &ada, "Kafka tuning!", "batch sizes", &["ops".into()], false, SystemTime::now())
                .unwrap();
        assert_eq!(w.path, "peers/ada/kafka-tuning.md");
        assert!(w.created);
        assert!(w.similar.iter().any(|s| s.path == "shared.md"));
        let again = write(&files, v, &index, &ada, "Kafka tuning!", "x", &[], false, SystemTime::now()).unwrap_err();
        assert!(again.contains("replace: true"), "{again}");
        assert!(write(&files, v, &index, &ada, "Kafka tuning!", "x", &[], true, SystemTime::now()).is_ok());
        assert!(write(&files, v, &index, &ada, "!!!", "x", &[], false, SystemTime::now()).is_err());
        // A note in one's own zone is one's own, whatever author it claims.
        std::fs::write(v.join("peers/ada/foreign.md"), "---\nauthor: bob\n---\nx").unwrap();
        let rescanned = Index::build(scan(v).unwrap());
        assert_eq!(rescanned.get("peers/ada/foreign.md").unwrap().author.as_deref(), Some("ada"));
        assert!(write(&files, v, &index, &ada, "foreign", "y", &[], false, SystemTime::now()).is_err());
        assert!(write(&files, v, &index, &ada, "foreign", "y", &[], true, SystemTime::now()).is_ok());
    }

    #[test]
    fn reads_and_writes_answer_links_and_backlinks_the_caller_may_read() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path();
        std::fs::create_dir_all(v.join("ops")).unwrap();
        std::fs::create_dir_all(v.join("peers/bob")).unwrap();
        std::fs::write(
            v.join("ops/kafka.md"),
            "# Kafka\nSee [[deploy]], [bob's](../peers/bob/secret.md), [[nowhere]].",
        )
        .unwrap();
        std::fs::write(v.join("ops/deploy.md"), "# Deploy\nBack to [kafka](kafka.md).").unwrap();
        std::fs::write(v.join("peers/bob/secret.md"), "# Secret\n[[kafka]] and [[ops/deploy]]").unwrap();
        let index = Index::build(scan(v).unwrap());
        let paths = |l: &[Linked]| l.iter().map(|l| l.path.as_str()).collect::<Vec<_>>().join(" ");
        let ada = Caller { personality: "ada", linked: &[] };
        let read_kafka = read(v, &index, &ada, "ops/kafka.md").unwrap();
        assert_eq!(paths(&read_kafka.links), "ops/deploy.md", "bob's note is not ada's to see");
        assert_eq!(paths(&read_kafka.backlinks), "ops/deploy.md");
        let bob = Caller { personality: "bob", linked: &[] };
        let read_kafka = read(v, &index, &bob, "ops/kafka.md").unwrap();
        assert_eq!(paths(&read_kafka.links), "ops/deploy.md peers/bob/secret.md");
        assert_eq!(paths(&read_kafka.backlinks), "ops/deploy.md peers/bob/secret.md");
        assert_eq!(read_kafka.links[0].title, "Deploy");
        // A write answers its links, and the notes already linking to it.
        std::fs::write(v.join("ops/runbook.md"), "# Runbook\nStart from [[plan]].").unwrap();
        let index = Index::build(scan(v).unwrap());
        let w =
            write(&FileGuard::live(), v, &index, &ada, "Plan", "Read [[kafka]] first.", &[], false, SystemTime::now())
                .unwrap();
        assert_eq!((paths(&w.links).as_str(), paths(&w.backlinks).as_str()), ("ops/kafka.md", "ops/runbook.md"));
    }

    /// Runs `f` on a thread and gives up after a few seconds, so a read
    /// that blocks (a FIFO) fails the test instead of hanging it.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || drop(tx.send(f())));
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the call blocked for 5 s")
    }

    #[test]
    fn a_symlink_is_judged_by_the_note_it_leads_to() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let v = dir.path().join("vault");
        std::fs::create_dir_all(v.join("peers/bob")).unwrap();
        std::fs::create_dir_all(v.join("shared")).unwrap();
        std::fs::create_dir_all(v.join("peers/ada")).unwrap();
        std::fs::write(v.join("peers/bob/secret.md"), "# Bob secret\nthe launch code").unwrap();
        std::fs::write(v.join("ops.md"), "# Ops\nshared text").unwrap();
        std::fs::write(outside.path().join("x.md"), "# Outside\nnot the vault's").unwrap();
        let link = |target: &Path, at: &str| std::os::unix::fs::symlink(target, v.join(at)).unwrap();
        link(Path::new("../peers/bob/secret.md"), "shared/alias.md");
        link(&v.join("peers/bob/secret.md"), "shared/absolute.md");
        link(Path::new("../peers/bob"), "shared/bobdir");
        link(&outside.path().join("x.md"), "shared/out.md");
        link(Path::new("../ops.md"), "shared/ops-alias.md");
        nix::unistd::mkfifo(&v.join("peers/ada/pipe.md"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

        let ada = Caller { personality: "ada", linked: &[] };
        for path in ["shared/alias.md", "shared/absolute.md", "shared/bobdir/secret.md", "shared/out.md"] {
            let e = read(&v, &Index::default(), &ada, path).unwrap_err();
            assert!(!e.contains("launch") && !e.contains("Outside"), "{path}: {e}");
        }
        assert!(
            read(&v, &Index::default(), &ada, "shared/ops-alias.md").unwrap().text.contains("shared text"),
            "a link within a zone ada reads"
        );
        // A hard link has no real path to judge it by: refused for everyone,
        // in bob's zone too, and never indexed.
        std::fs::hard_link(v.join("peers/bob/secret.md"), v.join("shared/hard.md")).unwrap();
        let e = read(&v, &Index::default(), &ada, "shared/hard.md").unwrap_err();
        assert!(e.contains("hard links") && !e.contains("launch"), "{e}");
        let bob = Caller { personality: "bob", linked: &[] };
        assert!(read(&v, &Index::default(), &bob, "peers/bob/secret.md").unwrap_err().contains("hard links"));
        assert!(
            crate::vault::scan(&v)
                .unwrap()
                .notes
                .iter()
                .all(|n| !n.path.ends_with("hard.md") && !n.path.ends_with("secret.md"))
        );
        std::fs::remove_file(v.join("shared/hard.md")).unwrap();
        let ada_linked = Caller { personality: "ada", linked: &["bob"] };
        assert!(read(&v, &Index::default(), &ada_linked, "shared/alias.md").unwrap().text.contains("launch code"));
        assert!(read(&v, &Index::default(), &ada_linked, "shared/out.md").is_err(), "out of the vault for everyone");
        let v2 = v.clone();
        let e = within(move || {
            read(&v2, &Index::default(), &Caller { personality: "ada", linked: &[] }, "peers/ada/pipe.md")
        })
        .unwrap_err();
        assert!(e.contains("pipe.md"), "{e}");

        // Search and fragments see only what the scan indexed: no link is followed.
        let v2 = v.clone();
        let scanned = within(move || scan(&v2).unwrap());
        let paths: Vec<&str> = scanned.notes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["ops.md", "peers/bob/secret.md"]);
        let index = Index::build(scanned);
        assert!(search(&index, &ada, "launch", None, None, None).unwrap().results.is_empty());
    }

    #[test]
    fn a_write_never_leaves_the_writers_zone_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let v = dir.path().join("vault");
        std::fs::create_dir_all(v.join("peers/bob")).unwrap();
        std::fs::write(v.join("peers/bob/plan.md"), "---\nauthor: bob\n---\nbob's plan").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), v.join("peers/cyd")).unwrap();
        std::fs::create_dir_all(v.join("peers/ada")).unwrap();
        std::os::unix::fs::symlink("../bob/plan.md", v.join("peers/ada/plan.md")).unwrap();
        let index = Index::default();
        let files = FileGuard::live();
        let now = SystemTime::now();
        let cyd = Caller { personality: "cyd", linked: &[] };
        let e = write(&files, &v, &index, &cyd, "Plan", "escape", &[], true, now).unwrap_err();
        assert!(e.contains("peers/cyd") && e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing written outside the vault");
        let ada = Caller { personality: "ada", linked: &[] };
        let e = write(&files, &v, &index, &ada, "Plan", "overwrite", &[], true, now).unwrap_err();
        assert!(e.contains("peers/ada/plan.md") && e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(v.join("peers/bob/plan.md")).unwrap(), "---\nauthor: bob\n---\nbob's plan");

        // The whole `peers` dir linked away: refused too.
        let v3 = dir.path().join("vault3");
        std::fs::create_dir_all(&v3).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), v3.join("peers")).unwrap();
        let e = write(&files, &v3, &index, &ada, "Plan", "escape", &[], false, now).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

        // A fresh vault: the zone is created, 0755, and the note lands in it.
        let v4 = dir.path().join("vault4");
        std::fs::create_dir_all(&v4).unwrap();
        let w = write(&files, &v4, &index, &ada, "Plan", "fine", &[], false, now).unwrap();
        assert_eq!(w.path, "peers/ada/plan.md");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(v4.join("peers/ada")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o755, 0, "{mode:o}: created 0755 (less any umask bits)");
        assert!(std::fs::read_to_string(v4.join("peers/ada/plan.md")).unwrap().contains("fine"));
    }
}

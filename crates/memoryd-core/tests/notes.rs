//! Hostile titles and tags through memory_write → the index → memory_read:
//! a note's author is always its writer, and what was accepted comes back
//! exactly as given. `PROPTEST_CASES` raises the number of cases.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use memoryd_core::host::files::FileGuard;
use memoryd_core::vault::memory::{self, Caller};
use memoryd_core::vault::{self, Index};
use proptest::prelude::*;
use std::time::SystemTime;

const ADA: Caller<'static> = Caller { personality: "ada", linked: &[] };

/// Whether memory_write must refuse this text in a title or a tag.
fn hostile(text: &str) -> bool {
    text.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
}

/// Writes one note as ada into a fresh vault; the vault, and the result.
fn write(title: &str, tags: &[String]) -> (tempfile::TempDir, Result<memory::Written, String>) {
    let dir = tempfile::tempdir().unwrap();
    let files = FileGuard::live();
    let result =
        memory::write(&files, dir.path(), &Index::default(), &ADA, title, "body text", tags, false, SystemTime::now());
    (dir, result)
}

/// What went in comes back from the index and from a read, authored by ada.
fn assert_round_trip(dir: &tempfile::TempDir, written: &memory::Written, title: &str, tags: &[String]) {
    let rel = written.path.as_str();
    let scan = vault::scan(dir.path()).unwrap();
    assert_eq!(scan.notes.len(), 1, "{:?}", scan.notes);
    let note = &scan.notes[0];
    assert_eq!((note.path.as_str(), note.title.as_str()), (rel, title));
    assert_eq!(note.author.as_deref(), Some("ada"));
    assert_eq!(note.tags, tags);
    assert_eq!(note.body, "body text\n");
    let read = memory::read(dir.path(), &Index::default(), &ADA, rel).unwrap();
    let reread = vault::parse_note(rel, &read.text, note.modified);
    assert_eq!(&reread, note);
}

#[test]
fn the_reported_injections_are_refused_naming_the_argument() {
    for (title, tags, argument) in [
        ("Plan\nauthor: bob", vec![], "`title`"),
        ("x\n---\nauthor: bob", vec![], "`title`"),
        ("Plan\r", vec![], "`title`"),
        ("Plan", vec!["ops\nauthor: bob".to_owned()], "`tags`"),
        ("Plan", vec!["ok".to_owned(), "bell\u{7}".to_owned()], "`tags` item 2"),
        ("Plan", vec!["".to_owned()], "`tags` item 1"),
    ] {
        let (dir, result) = write(title, &tags);
        let e = result.unwrap_err();
        assert!(e.contains(argument), "{title:?} {tags:?}: {e}");
        assert!(vault::scan(dir.path()).unwrap().notes.is_empty(), "nothing written for {title:?}");
    }
    // What looks like front matter but holds no line break is only text.
    let tags = vec!["author: bob".to_owned(), "a, b]".to_owned(), "\"q\" \\".to_owned()];
    let title = "--- author: bob \"quoted\" \\ 'single' é 日本 🦀";
    let (dir, result) = write(title, &tags);
    assert_round_trip(&dir, &result.unwrap(), title, &tags);
}

/// Text built from the pieces an injection is made of.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("---".to_owned()),
        Just("author: bob".to_owned()),
        Just("title: x".to_owned()),
        Just("- item".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just("'".to_owned()),
        Just(", ".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("#".to_owned()),
        Just(":".to_owned()),
        Just("\t".to_owned()),
        Just("\u{0}".to_owned()),
        Just("\u{1b}".to_owned()),
        Just("\u{85}".to_owned()),
        Just("\u{2028}".to_owned()),
        Just("é日本🦀".to_owned()),
        Just(" ".to_owned()),
        "[a-zA-Z0-9]{1,6}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn hostile_titles_and_tags_round_trip_or_are_refused(
        title in hostile_text(),
        tags in prop::collection::vec(hostile_text(), 0..4),
    ) {
        let (dir, result) = write(&title, &tags);
        let refused_tag = tags.iter().position(|t| t.is_empty() || hostile(t));
        match result {
            Err(e) => {
                if hostile(&title) {
                    prop_assert!(e.contains("`title`"), "{e}");
                } else if let Some(i) = refused_tag {
                    prop_assert!(e.contains(&format!("`tags` item {}", i + 1)), "{e}");
                } else {
                    prop_assert!(vault::slug(&title).is_none() && e.contains("title"), "refused {title:?} {tags:?}: {e}");
                }
            }
            Ok(written) => {
                prop_assert!(!hostile(&title) && refused_tag.is_none(), "accepted {title:?} {tags:?}");
                assert_round_trip(&dir, &written, &title, &tags);
            }
        }
    }
}

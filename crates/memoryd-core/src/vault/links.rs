//! Links between notes: `[[wikilinks]]` (Obsidian's: by file name, or by
//! a path from the vault's root; `|alias` and `#heading` ignored) and
//! relative Markdown links `[text](other.md)`. A link is kept as written
//! (a name or a vault path) and resolved when asked, since the note a
//! name stands for can appear after the link was written.

use std::path::{Component, Path};

/// One link of a note, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `[[name]]`: the note of that file name (without `.md`), lower-cased.
    Name(String),
    /// A vault-relative note path: `[[dir/name]]`, or a Markdown link
    /// resolved against the note's directory.
    Path(String),
}

/// The links in `body` of the note at `from` (a vault path).
pub fn parse(from: &str, body: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("[[") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("]]") else { break };
        let inner = &after[..end];
        let target = inner.split(['|', '#', '^']).next().unwrap_or("").trim();
        if !target.is_empty() && !target.contains('\n') {
            links.push(if target.contains('/') {
                Link::Path(with_md(target.trim_start_matches('/')))
            } else {
                Link::Name(target.trim_end_matches(".md").to_lowercase())
            });
        }
        rest = &after[end + 2..];
    }
    let dir = from.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut rest = body;
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split('#').next().unwrap_or("").trim();
        // Only a relative link to a note: no scheme, no absolute path.
        if target.ends_with(".md") && !target.contains(':') && !target.starts_with('/') {
            links.extend(normalise(dir, &unescape(target)).map(Link::Path));
        }
        rest = &after[end + 1..];
    }
    links.dedup();
    links
}

fn with_md(target: &str) -> String {
    if target.ends_with(".md") { target.to_owned() } else { format!("{target}.md") }
}

/// `%20` and other percent escapes of a link target, undone.
fn unescape(target: &str) -> String {
    let bytes = target.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `target` relative to the vault dir `dir`, `..` resolved; None when it
/// leaves the vault.
fn normalise(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for component in Path::new(target).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// The file name of a note path without `.md`, lower-cased: what a
/// `[[name]]` link matches.
pub fn name_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).trim_end_matches(".md").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wikilinks_and_relative_markdown_links_are_parsed() {
        let body = "See [[Kafka Tuning]] and [[ops/deploy|the deploy]] and [[plan#Goals]].\n\
                    Also [the runbook](../ops/run%20book.md#step-2), [x](./same.md), \
                    [web](https://example.com/a.md), [abs](/etc/x.md), [up](../../../out.md), [img](pic.png).\n\
                    An unclosed [[link";
        assert_eq!(
            parse("notes/today.md", body),
            [
                Link::Name("kafka tuning".into()),
                Link::Path("ops/deploy.md".into()),
                Link::Name("plan".into()),
                Link::Path("ops/run book.md".into()),
                Link::Path("notes/same.md".into()),
            ]
        );
        assert_eq!(name_of("ops/Kafka Tuning.md"), "kafka tuning");
    }
}

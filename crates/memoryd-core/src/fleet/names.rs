//! The name rules of spec 00.

/// A personality: `^[a-z][a-z0-9-]{0,31}$`.
pub fn is_personality(s: &str) -> bool {
    valid(s, true)
}

/// A runtime: `^[a-z][a-z0-9]{0,31}$` (no dash).
pub fn is_runtime(s: &str) -> bool {
    valid(s, false)
}

fn valid(s: &str, dash: bool) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && bytes[0].is_ascii_lowercase()
        && bytes[1..].iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || (dash && b == b'-'))
}

/// Splits a node id `<runtime>-<personality>` at the first dash.
pub fn split_node_id(node: &str) -> Option<(&str, &str)> {
    let (runtime, personality) = node.split_once('-')?;
    (is_runtime(runtime) && is_personality(personality)).then_some((runtime, personality))
}

/// How many names an error message lists before `and N more`.
const LISTED: usize = 10;

/// Names for an error message: the first ten, then how many more; `none`
/// for no name at all.
pub fn listing<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let shown: Vec<&str> = names.iter().take(LISTED).map(AsRef::as_ref).collect();
    match names.len().saturating_sub(LISTED) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(is_personality("boris"));
        assert!(is_personality("a-b-9"));
        assert!(!is_personality("Boris"));
        assert!(!is_personality("9a"));
        assert!(!is_personality(""));
        assert!(!is_personality(&"a".repeat(33)));
        assert!(is_personality(&"a".repeat(32)));
        assert!(is_runtime("claude"));
        assert!(!is_runtime("cla-ude"));
        assert_eq!(split_node_id("claude-boris-2"), Some(("claude", "boris-2")));
        assert_eq!(split_node_id("claude"), None);
        assert_eq!(split_node_id("claude-"), None);
    }

    #[test]
    fn listings_stop_at_ten_names() {
        assert_eq!(listing::<&str>(&[]), "none");
        assert_eq!(listing(&["ada", "bob"]), "ada, bob");
        let many: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
        assert_eq!(listing(&many), "p00, p01, p02, p03, p04, p05, p06, p07, p08, p09 and 15 more");
    }
}

//! How search reads text: words, stop words and English stems.
//!
//! A word is a run of letters and digits, lower-cased. A stop word (the 33
//! of Lucene's English analyzer, the list `bm25s` uses too) is neither
//! indexed nor searched: it matches nearly every note and only adds noise.
//! Every other word is indexed twice: as its Snowball English stem, so
//! that "stabilize" finds "stabilized", and as itself, so that a note
//! holding the query's own word ranks a little above one holding only a
//! relative of it.

use rust_stemmers::{Algorithm, Stemmer};
use std::sync::LazyLock;

/// Lucene's English stop words (`EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`).
const STOP_WORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
];

static ENGLISH: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

/// Lower-cased alphanumeric words.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// Whether `word` (lower-cased) is a stop word.
pub fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

/// The English stem of a lower-cased word.
pub fn stem(word: &str) -> String {
    ENGLISH.stem(word).into_owned()
}

/// The index key of a word as itself. Stems are keyed bare; a word is
/// alphanumeric, so no stem starts with `=`.
pub fn exact_key(word: &str) -> String {
    format!("={word}")
}

/// The words of `text` that search counts: [`words`] less stop words.
pub fn searched_words(text: &str) -> impl Iterator<Item = String> + '_ {
    words(text).filter(|w| !is_stop_word(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_the_binary_search() {
        assert!(STOP_WORDS.is_sorted());
        assert!(is_stop_word("the") && is_stop_word("with") && !is_stop_word("kafka"));
    }

    #[test]
    fn words_split_on_anything_not_alphanumeric_and_lower_case() {
        let got: Vec<String> = words("Max_request-bytes: 64KiB, Zürich's HTTP/2").collect();
        assert_eq!(got, ["max", "request", "bytes", "64kib", "zürich", "s", "http", "2"]);
        let got: Vec<String> = searched_words("The flexibility of a wing").collect();
        assert_eq!(got, ["flexibility", "wing"]);
    }

    #[test]
    fn relatives_share_a_stem_and_strangers_do_not() {
        // The misses of issue 20: a query word and the note's word differ
        // by an ending.
        for (a, b) in [
            ("flexibility", "flexible"),
            ("stabilize", "stabilized"),
            ("stabilization", "stabilize"),
            ("running", "runs"),
            ("deployments", "deploying"),
            ("caches", "cached"),
        ] {
            assert_eq!(stem(a), stem(b), "{a} / {b}");
        }
        for (a, b) in [("stable", "stability"), ("kafka", "kafkas2"), ("news", "new")] {
            assert_ne!(stem(a), stem(b), "{a} / {b}");
        }
        assert!(!stem("running").starts_with('='), "a stem never looks like an exact key");
        assert_eq!(exact_key("running"), "=running");
    }
}

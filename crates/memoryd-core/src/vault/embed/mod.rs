//! Optional embeddings for hybrid search (issue 20 part B), the pure parts:
//! the endpoint's address, the OpenAI-compatible request and answer, what a
//! note sends to be embedded and the key its vector is cached under, the
//! exact-vector scan and reciprocal rank fusion with the lexical list. The
//! daemon's embedder (crates/memoryd/src/embedder.rs) does the I/O.

pub mod cache;

use super::{Hit, Index, Note};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// How deep each ranked list goes before fusion: past this a note's RRF
/// share (1/(k+100)) no longer moves a top-10 answer.
pub const FUSION_DEPTH: usize = 100;
/// The most of a note sent to be embedded: small embedding models read
/// about 512 tokens, roughly this many characters; the rest would only
/// make requests bigger.
pub const MAX_PASSAGE_CHARS: usize = 2000;
/// The most texts' vectors an answer may hold; far above any batch size.
pub const MAX_DIMENSION: usize = 8192;

/// Where the embeddings endpoint listens: plain `http://` (the local
/// servers that speak this shape, Ollama, llama.cpp, vLLM, LM Studio, all
/// do; a TLS endpoint is reached through a local proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The request target, `/v1/embeddings` when the URL names none.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path]`; the error is one sentence.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(if url.starts_with("https://") {
                format!(
                    "{url:?} is https, and memoryd speaks plain http://; run a local TLS proxy or use a local server's http:// URL"
                )
            } else {
                format!("{url:?} is not an http:// URL such as \"http://127.0.0.1:11434/v1/embeddings\"")
            });
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("{url:?} has a bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() || host.contains(['@', ' ', '?', '#']) {
            return Err(format!("{url:?} has no usable host"));
        }
        let path = if path.is_empty() || path == "/" { "/v1/embeddings" } else { path };
        Ok(Endpoint { host: host.to_owned(), port, path: path.to_owned() })
    }

    /// Whether the host is this machine (the only kind a sandboxed test may
    /// reach).
    pub fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// Why an answer gave no vectors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    #[error("the endpoint answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the endpoint's answer is not an embeddings list: {0}")]
    Garbage(String),
    #[error("the endpoint gave {got} vectors for {asked} texts")]
    Count { asked: usize, got: usize },
    #[error(
        "the endpoint gave {got}-dimensional vectors where the cache holds {expected}-dimensional ones; a changed model needs a new `search.embeddings_model` name"
    )]
    Dimension { expected: usize, got: usize },
}

/// The request body for `texts`.
pub fn request_body(model: &str, texts: &[String]) -> Vec<u8> {
    json!({"model": model, "input": texts}).to_string().into_bytes()
}

/// The vectors of an answer to [`request_body`] for `asked` texts, in the
/// order asked, each scaled to unit length (a dot product is then the
/// cosine). `dim`, when known, is the dimension every vector must have.
pub fn parse_answer(status: u16, body: &[u8], asked: usize, dim: Option<usize>) -> Result<Vec<Vec<f32>>, EmbedError> {
    let short = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned();
    if status != 200 {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().or(v["error"].as_str()).map(str::to_owned))
            .unwrap_or_else(|| short(body));
        return Err(EmbedError::Status { status, message });
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| EmbedError::Garbage(e.to_string()))?;
    let data = value["data"].as_array().ok_or_else(|| EmbedError::Garbage("no `data` list".to_owned()))?;
    if data.len() != asked {
        return Err(EmbedError::Count { asked, got: data.len() });
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; asked];
    for (i, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(i, |n| n as usize);
        let numbers = item["embedding"]
            .as_array()
            .ok_or_else(|| EmbedError::Garbage(format!("item {i} has no `embedding` list")))?;
        let vector: Vec<f32> = numbers
            .iter()
            .map(|n| n.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
            .collect::<Option<_>>()
            .ok_or_else(|| EmbedError::Garbage(format!("item {i} holds something other than finite numbers")))?;
        let expected = dim.or(out.iter().flatten().next().map(Vec::len)).unwrap_or(vector.len());
        if vector.len() != expected {
            return Err(EmbedError::Dimension { expected, got: vector.len() });
        }
        if vector.is_empty() || vector.len() > MAX_DIMENSION {
            return Err(EmbedError::Garbage(format!("item {i} has {} numbers", vector.len())));
        }
        let slot = out.get_mut(index).ok_or_else(|| EmbedError::Garbage(format!("index {index} out of range")))?;
        if slot.is_some() {
            return Err(EmbedError::Garbage(format!("index {index} given twice")));
        }
        *slot = Some(unit(vector).ok_or_else(|| EmbedError::Garbage(format!("item {i} is the zero vector")))?);
    }
    Ok(out.into_iter().flatten().collect())
}

/// `v` scaled to length 1; None for the zero vector.
fn unit(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_normal() {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

/// What is sent to embed a note: the prefix, its title and the start of
/// its body.
pub fn passage(note: &Note, prefix: &str) -> String {
    let mut text = format!("{prefix}{}\n\n", note.title);
    text.extend(note.body.chars().take(MAX_PASSAGE_CHARS));
    text
}

/// The cache key of a text embedded by `model`: a change of either is a
/// new vector, an unchanged note never is.
pub type Key = [u8; 32];

pub fn key(model: &str, text: &str) -> Key {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize().into()
}

/// The vectors of the notes that have one: one contiguous matrix, a row
/// per note in path order, so a query scans memory front to back (at
/// 50,000 notes of 384 dimensions that is 77 MB, the scan's whole cost).
#[derive(Debug, Clone, Default)]
pub struct Vectors {
    dim: usize,
    paths: Vec<String>,
    matrix: Vec<f32>,
}

impl Vectors {
    /// The matrix of these rows; a row of another dimension than the
    /// first is left out.
    pub fn new<'a>(rows: impl IntoIterator<Item = (&'a str, &'a [f32])>) -> Vectors {
        let mut rows: Vec<(&str, &[f32])> = rows.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let dim = rows.first().map_or(0, |r| r.1.len());
        rows.retain(|r| r.1.len() == dim);
        let mut matrix = Vec::with_capacity(rows.len() * dim);
        for (_, v) in &rows {
            matrix.extend_from_slice(v);
        }
        Vectors { dim, paths: rows.into_iter().map(|r| r.0.to_owned()).collect(), matrix }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The `depth` notes of `index` that `visible` allows nearest to
    /// `query` (a unit vector), best first: an exact scan, measured fast
    /// enough at 50,000 notes (BENCHMARKS.md) that an approximate index
    /// would buy nothing. A row whose note left the index is skipped.
    pub fn nearest<'a>(
        &self,
        index: &'a Index,
        query: &[f32],
        visible: impl Fn(&Note) -> bool,
        depth: usize,
    ) -> Vec<Hit<'a>> {
        if self.dim == 0 || query.len() != self.dim || depth == 0 {
            return Vec::new();
        }
        let mut scored: Vec<(f32, u32)> =
            self.matrix.chunks_exact(self.dim).enumerate().map(|(i, row)| (dot(row, query), i as u32)).collect();
        // Rows are in path order: ties go to the first path.
        let best_first = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        // Most notes are visible to most callers: sort a few times the depth,
        // and more only when too many of them are hidden.
        let mut want = depth.saturating_mul(4).max(64);
        loop {
            let all = want >= scored.len();
            let candidates = if all {
                &mut scored[..]
            } else {
                scored.select_nth_unstable_by(want, best_first);
                &mut scored[..want]
            };
            candidates.sort_unstable_by(best_first);
            let hits: Vec<Hit<'a>> = candidates
                .iter()
                .filter_map(|&(score, row)| {
                    let note = index.get(&self.paths[row as usize]).filter(|n| visible(n))?;
                    Some(Hit { note, score })
                })
                .take(depth)
                .collect();
            if all || hits.len() == depth {
                return hits;
            }
            want = want.saturating_mul(4);
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four lanes the compiler keeps in registers and vectorises.
    let mut acc = [0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Reciprocal rank fusion of ranked lists: a note scores Σ 1/(k + rank)
/// over the lists it is in (rank from 1), best first, ties by path.
pub fn fuse<'a>(lists: &[Vec<Hit<'a>>], k: usize, limit: usize) -> Vec<Hit<'a>> {
    let mut fused: HashMap<&str, Hit<'a>> = HashMap::new();
    for list in lists {
        for (rank, hit) in list.iter().enumerate() {
            let share = 1.0 / (k as f32 + rank as f32 + 1.0);
            fused.entry(hit.note.path.as_str()).or_insert(Hit { note: hit.note, score: 0.0 }).score += share;
        }
    }
    let mut hits: Vec<Hit<'a>> = fused.into_values().collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.note.path.cmp(&b.note.path)));
    hits.truncate(limit);
    hits
}

/// How a search was ranked, as its result says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BM25 over stems and words ([`Index::search`]).
    Lexical,
    /// That and the nearest vectors, fused by reciprocal rank.
    Hybrid,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Lexical => "lexical",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// What hybrid ranking needs besides the index: the notes' vectors, the
/// query's, and the fusion's k.
pub struct Semantic<'a> {
    pub vectors: &'a Vectors,
    pub query: &'a [f32],
    pub rrf_k: usize,
}

/// The search: lexical alone, or fused with the vector list when a query
/// vector came in time.
pub fn rank<'a>(
    index: &'a Index,
    query: &str,
    semantic: Option<&Semantic<'_>>,
    visible: impl Fn(&Note) -> bool,
    limit: usize,
) -> (Vec<Hit<'a>>, Mode) {
    let Some(s) = semantic else { return (index.search(query, visible, limit), Mode::Lexical) };
    let lexical = index.search(query, &visible, FUSION_DEPTH.max(limit));
    let vector = s.vectors.nearest(index, s.query, &visible, FUSION_DEPTH.max(limit));
    (fuse(&[lexical, vector], s.rrf_k, limit), Mode::Hybrid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{Scan, parse_note};
    use std::time::SystemTime;

    #[test]
    fn endpoints_parse_and_refuse_what_cannot_be_spoken() {
        let e = Endpoint::parse("http://127.0.0.1:11434/v1/embeddings").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("127.0.0.1", 11434, "/v1/embeddings"));
        assert!(e.is_loopback());
        let e = Endpoint::parse("http://embed.lan").unwrap();
        assert_eq!((e.port, e.path.as_str(), e.is_loopback()), (80, "/v1/embeddings", false));
        assert!(Endpoint::parse("http://[::1]:8080/e").unwrap().is_loopback());
        assert!(Endpoint::parse("https://api.openai.com/v1/embeddings").unwrap_err().contains("https"));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://:80/x").is_err());
        assert!(Endpoint::parse("http://h:port/x").is_err());
    }

    #[test]
    fn answers_are_checked_ordered_and_normalised() {
        let body = br#"{"data":[{"index":1,"embedding":[0,2]},{"index":0,"embedding":[3,4]}]}"#;
        let v = parse_answer(200, body, 2, None).unwrap();
        assert_eq!(v, [vec![0.6, 0.8], vec![0.0, 1.0]]);
        assert_eq!(parse_answer(200, body, 2, Some(3)).unwrap_err(), EmbedError::Dimension { expected: 3, got: 2 });
        assert_eq!(parse_answer(200, body, 3, None).unwrap_err(), EmbedError::Count { asked: 3, got: 2 });
        let mixed = br#"{"data":[{"embedding":[1,0]},{"embedding":[1,0,0]}]}"#;
        assert!(matches!(parse_answer(200, mixed, 2, None), Err(EmbedError::Dimension { expected: 2, got: 3 })));
        for garbage in [
            &b"<html>"[..],
            br#"{"data":{}}"#,
            br#"{"data":[{"embedding":["x"]}]}"#,
            br#"{"data":[{"embedding":[0,0]}]}"#,
            br#"{"data":[{"index":5,"embedding":[1]}]}"#,
        ] {
            assert!(
                matches!(parse_answer(200, garbage, 1, None), Err(EmbedError::Garbage(_))),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
        let e = parse_answer(401, br#"{"error":{"message":"bad key"}}"#, 1, None).unwrap_err();
        assert_eq!(e.to_string(), "the endpoint answered HTTP 401: bad key");
    }

    #[test]
    fn keys_follow_model_and_content() {
        let t = SystemTime::UNIX_EPOCH;
        let note = parse_note("a.md", "# Title\nbody", t);
        let p = passage(&note, "passage: ");
        assert_eq!(p, "passage: Title\n\n# Title\nbody");
        assert_eq!(key("m", &p), key("m", &p));
        assert_ne!(key("m", &p), key("n", &p));
        assert_ne!(key("m", &p), key("m", &passage(&note, "")));
        let long = parse_note("b.md", &"x".repeat(10_000), t);
        assert!(passage(&long, "").chars().count() <= MAX_PASSAGE_CHARS + 10);
    }

    #[test]
    fn fusion_ranks_a_note_on_both_lists_first_and_finds_what_lexical_cannot() {
        let t = SystemTime::UNIX_EPOCH;
        let notes = vec![
            parse_note("atmosphere.md", "# Scale height\nThe density of air falls exponentially.", t),
            parse_note("kafka.md", "# Kafka\nhow to vary batch sizes", t),
            parse_note("peers/bob/secret.md", "# Bob\nair altitude notes", t),
        ];
        let index = Index::build(Scan { notes, skipped: Vec::new() });
        let v = |x: &[f32]| unit(x.to_vec()).unwrap();
        let (a, k, b) = (v(&[1.0, 0.1]), v(&[0.0, 1.0]), v(&[1.0, 0.0]));
        let vectors = Vectors::new([("atmosphere.md", &a[..]), ("kafka.md", &k[..]), ("peers/bob/secret.md", &b[..])]);
        let query = unit(vec![1.0, 0.0]).unwrap();
        let semantic = Semantic { vectors: &vectors, query: &query, rrf_k: 60 };
        let shared = |n: &Note| n.owner.is_none();
        let (lexical, mode) = rank(&index, "how does it vary with altitude", None, shared, 10);
        assert_eq!((lexical.len(), mode), (1, Mode::Lexical));
        assert_eq!(lexical[0].note.path, "kafka.md");
        let (hybrid, mode) = rank(&index, "how does it vary with altitude", Some(&semantic), shared, 10);
        assert_eq!(mode, Mode::Hybrid);
        let paths: Vec<&str> = hybrid.iter().map(|h| h.note.path.as_str()).collect();
        assert_eq!(paths, ["kafka.md", "atmosphere.md"], "kafka is first on one list and second on the other");
        let (vector_only, _) = rank(&index, "zzz", Some(&semantic), shared, 10);
        assert_eq!(vector_only[0].note.path, "atmosphere.md", "invisible notes never surface");
        assert!(vector_only.iter().all(|h| h.note.owner.is_none()));
        assert!((vector_only[0].score - 1.0 / 61.0).abs() < 1e-6);
    }

    #[test]
    fn the_scan_keeps_the_best_and_skips_other_dimensions() {
        let t = SystemTime::UNIX_EPOCH;
        let notes: Vec<Note> = (0..50).map(|i| parse_note(&format!("n{i:02}.md"), "x", t)).collect();
        let index = Index::build(Scan { notes, skipped: Vec::new() });
        let rows: Vec<(String, Vec<f32>)> = (0..50)
            .map(|i| {
                (format!("n{i:02}.md"), if i == 49 { vec![1.0, 0.0, 0.0] } else { unit(vec![1.0, i as f32]).unwrap() })
            })
            .chain([("gone.md".to_owned(), vec![0.0, 1.0])])
            .collect();
        let vectors = Vectors::new(rows.iter().map(|(p, v)| (p.as_str(), &v[..])));
        assert_eq!(vectors.len(), 50, "the row of another dimension is left out");
        let best = vectors.nearest(&index, &[0.0, 1.0], |_| true, 3);
        let paths: Vec<&str> = best.iter().map(|h| h.note.path.as_str()).collect();
        assert_eq!(paths, ["n48.md", "n47.md", "n46.md"], "a note gone from the index is skipped");
        // Hidden notes are passed over however deep that takes the scan.
        let odd = vectors.nearest(&index, &[0.0, 1.0], |n| n.path.ends_with("1.md"), 3);
        let paths: Vec<&str> = odd.iter().map(|h| h.note.path.as_str()).collect();
        assert_eq!(paths, ["n41.md", "n31.md", "n21.md"]);
        assert_eq!(dot(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1.0, 1.0, 1.0, 1.0, 2.0]), 20.0);
    }
}

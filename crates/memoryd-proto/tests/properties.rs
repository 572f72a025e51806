//! Property tests of the wire: the framer and the request decoder never
//! panic on any input; the framer never holds more than its cap and cuts
//! any chunking of a stream into the same lines; a decoded request
//! re-encodes to itself. `PROPTEST_CASES` raises the number of cases.
#![allow(clippy::unwrap_used)]

use memoryd_proto::framing::LineFramer;
use memoryd_proto::{Incoming, Request};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
}

/// Feeds `stream` in the given chunk sizes; the lines, or None at the cap.
fn frame(stream: &[u8], sizes: &[usize], cap: usize) -> Option<Vec<Vec<u8>>> {
    let mut framer = LineFramer::new(cap);
    let mut lines = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        framer.push(&rest[..n]).ok()?;
        rest = &rest[n..];
        while let Some(line) = framer.next_line() {
            assert!(line.len() <= cap, "a line of {} bytes passed a cap of {cap}", line.len());
            lines.push(line);
        }
    }
    Some(lines)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn chunking_never_changes_the_lines(
        stream in prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..400),
        sizes in prop::collection::vec(1usize..40, 1..8),
        cap in 1usize..64,
    ) {
        let whole = frame(&stream, &[stream.len().max(1)], cap);
        let chunked = frame(&stream, &sizes, cap);
        prop_assert_eq!(whole.is_some(), chunked.is_some());
        if let (Some(a), Some(b)) = (whole, chunked) {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn any_line_decodes_or_is_refused_without_panicking(line in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Request::decode(&line);
        let _ = Incoming::decode(&line);
    }

    #[test]
    fn json_shaped_lines_decode_and_round_trip(
        id in prop_oneof![Just(serde_json::json!(1)), "[a-z]{0,4}".prop_map(serde_json::Value::from), Just(serde_json::Value::Null)],
        method in "[a-z]{1,6}(\\.[a-z0-9]{1,6}){0,2}",
        params in prop_oneof![Just(serde_json::json!({})), Just(serde_json::json!([1, "x"])), Just(serde_json::Value::Null), Just(serde_json::json!({"a": {"b": [true]}}))],
        version in prop_oneof![Just("2.0"), Just("1.0")],
    ) {
        let line = serde_json::json!({"jsonrpc": version, "id": id, "method": method, "params": params}).to_string();
        if let Ok(request) = Request::decode(line.as_bytes()) {
            let again = Request::decode(&request.encode()).unwrap();
            prop_assert_eq!(again.method, request.method);
            prop_assert_eq!(again.id, request.id);
        }
    }
}

//! The control socket's framer and decoders on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memoryd_proto::framing::LineFramer;
use memoryd_proto::{Incoming, Request};

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Incoming::decode(data);
    let mut framer = LineFramer::new(64);
    for chunk in data.chunks(7) {
        if framer.push(chunk).is_err() {
            break;
        }
        while let Some(line) = framer.next_line() {
            assert!(line.len() <= 64);
            if let Ok(request) = Request::decode(&line) {
                let again = Request::decode(&request.encode()).expect("a request re-encodes to itself");
                assert_eq!(again.method, request.method);
            }
        }
    }
});

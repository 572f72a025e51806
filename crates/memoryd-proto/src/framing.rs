//! NDJSON framing with a hard per-line cap.
//!
//! The reader owns a fixed read buffer and pushes what it read; the framer
//! keeps at most `cap` bytes of an unfinished line, so a client that sends
//! an endless line costs the daemon no more than the cap.

use std::collections::VecDeque;

/// A line grew past the cap before its newline arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    pub cap: usize,
}

/// Cuts a byte stream into lines of at most `cap` bytes each.
#[derive(Debug)]
pub struct LineFramer {
    cap: usize,
    partial: Vec<u8>,
    complete: VecDeque<Vec<u8>>,
}

impl LineFramer {
    pub fn new(cap: usize) -> Self {
        LineFramer { cap, partial: Vec::new(), complete: VecDeque::new() }
    }

    /// Adds bytes read from the stream. Fails as soon as the unfinished line
    /// would exceed the cap; nothing past the cap is kept.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), LineTooLong> {
        while !chunk.is_empty() {
            let (segment, rest, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            if self.partial.len() + segment.len() > self.cap {
                self.partial = Vec::new();
                return Err(LineTooLong { cap: self.cap });
            }
            self.partial.extend_from_slice(segment);
            if ends_line {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().any(|b| !b.is_ascii_whitespace()) {
                    self.complete.push_back(line);
                }
            }
            chunk = rest;
        }
        Ok(())
    }

    /// The next complete, non-blank line, if one has arrived.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        self.complete.pop_front()
    }

    /// Whether bytes of an unfinished line are waiting for their newline.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_chunks() {
        let mut f = LineFramer::new(100);
        f.push(b"{\"a\":1}\n{\"b\"").unwrap();
        assert_eq!(f.next_line().unwrap(), b"{\"a\":1}");
        assert!(f.next_line().is_none());
        assert!(f.has_partial());
        f.push(b":2}\r\n\n  \n").unwrap();
        assert_eq!(f.next_line().unwrap(), b"{\"b\":2}");
        assert!(f.next_line().is_none());
        assert!(!f.has_partial());
    }

    #[test]
    fn refuses_a_line_past_the_cap_without_keeping_it() {
        let mut f = LineFramer::new(8);
        f.push(b"12345678\n").unwrap();
        assert_eq!(f.next_line().unwrap(), b"12345678");
        f.push(b"1234").unwrap();
        assert_eq!(f.push(b"56789"), Err(LineTooLong { cap: 8 }));
        assert!(!f.has_partial());
        assert!(f.partial.capacity() == 0);
    }
}

//! How the hand-written index scales (run with `--ignored --nocapture`,
//! in release); BENCHMARKS.md carries the measured figures.
#![allow(clippy::unwrap_used)]

use memoryd_core::vault::{Index, Scan, parse_note};
use std::time::{Instant, SystemTime};

#[test]
#[ignore = "a measurement, not a check"]
fn search_over_ten_thousand_notes() {
    let words: Vec<String> = (0..5000).map(|i| format!("w{i:x}")).collect();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut pick = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        &words[(seed % words.len() as u64) as usize]
    };
    for n in [1_000usize, 10_000, 50_000] {
        let notes = (0..n)
            .map(|i| {
                let body: Vec<&str> = (0..200).map(|_| pick().as_str()).collect();
                parse_note(
                    &format!("n{i}.md"),
                    &format!("# {} {}\n{}", pick(), pick(), body.join(" ")),
                    SystemTime::UNIX_EPOCH,
                )
            })
            .collect();
        let started = Instant::now();
        let index = Index::build(Scan { notes, skipped: Vec::new() });
        let build = started.elapsed();
        let started = Instant::now();
        let runs = 200;
        for i in 0..runs {
            let q = format!("{} {}", words[i * 7 % 5000], words[i * 13 % 5000]);
            let hits = index.search(&q, |_| true, 10);
            assert!(hits.len() <= 10);
        }
        let per = started.elapsed() / runs as u32;
        println!("{n} notes: build {build:?}, search {per:?} per query");
    }
}

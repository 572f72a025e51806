#!/bin/sh
# Builds memoryd in release and runs every benchmark of spec 70, rewriting
# the tables of BENCHMARKS.md and the charts under docs/. The fleets live in
# a temp dir with the test sandbox armed. pueue (the peer for the whole-
# process figure) is installed from crates.io into target/tools once.
# Knobs: MEMORYD_BENCH_IDLE_SECS (60), MEMORYD_BENCH_MAX_PEERS (10000).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet -p memoryd -p memoryctl -p memoryd-bench
export MEMORYD_BENCH_TOOLS="${MEMORYD_BENCH_TOOLS:-$(pwd)/target/tools}"
exec target/release/memoryd-bench --out BENCHMARKS.md

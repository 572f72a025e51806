#!/bin/sh
# Builds memoryd in release and runs every benchmark of spec 70, rewriting
# the tables of BENCHMARKS.md and the charts under docs/. The fleets live in
# a temp dir with the test sandbox armed. pueue (the peer for the whole-
# process figure) is installed from crates.io into target/tools once.
# Knobs: MEMORYD_BENCH_IDLE_SECS (60), MEMORYD_BENCH_MAX_PEERS (10000),
# MEMORYD_BENCH_REPEATS (5), MEMORYD_BENCH_TOOLS (where pueue is),
# MEMORYD_BENCH_MIX_SECS (30, the peer-message mix), MEMORYD_BENCH_ONLY
# (a comma list of sweeps, daemon, heartbeats, search, hybrid, messages, store;
# `memoryd-bench --store postgres` is the store part alone).
set -eu
cd "$(dirname "$0")/.."
export MEMORYD_BENCH_TOOLS="${MEMORYD_BENCH_TOOLS:-$(pwd)/target/tools}"
# pueue builds while memoryd does: each build leaves a core idle in its
# serial stretches (the last crates, the link), which the other one fills.
pueue_build=
if [ ! -x "$MEMORYD_BENCH_TOOLS/bin/pueue" ]; then
    echo "installing pueue from crates.io into $MEMORYD_BENCH_TOOLS (once), while memoryd builds" >&2
    cargo install pueue --locked --quiet --root "$MEMORYD_BENCH_TOOLS" &
    pueue_build=$!
fi
scripts/build.sh --release --bench
if [ -n "$pueue_build" ]; then
    wait "$pueue_build" || { echo "cargo install pueue failed" >&2; exit 1; }
fi
exec target/release/memoryd-bench --out BENCHMARKS.md

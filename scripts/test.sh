#!/bin/sh
# Runs every test: unit tests and the end-to-end tests that drive the real
# memoryd and memoryctl binaries (they arm MEMORYD_TEST_SANDBOX themselves).
# The binaries are built first so that no test spends its time limit
# (.config/nextest.toml) waiting for cargo.
set -eu
cd "$(dirname "$0")/.."
cargo build --quiet -p memoryd -p memoryctl
exec cargo nextest run --workspace --no-fail-fast "$@"

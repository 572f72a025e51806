#!/bin/sh
# Runs every test: unit tests and the end-to-end tests that drive the real
# memoryd and memoryctl binaries (they arm MEMORYD_TEST_SANDBOX themselves).
# The binaries are built first, as the install builds them (scripts/build.sh:
# memoryctl statically linked where it can be), so that the tests drive
# what ships and no test spends its time limit (.config/nextest.toml)
# waiting for cargo.
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh
exec cargo nextest run --workspace --no-fail-fast "$@"

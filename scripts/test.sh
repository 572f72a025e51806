#!/bin/sh
# Runs every test: unit tests and the end-to-end tests that drive the real
# memoryd and memoryctl binaries (they arm MEMORYD_TEST_SANDBOX themselves).
set -eu
cd "$(dirname "$0")/.."
exec cargo nextest run --workspace --no-fail-fast "$@"

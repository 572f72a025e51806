#!/bin/sh
# Runs every cargo-fuzz target for SECONDS each (default 60), offline,
# starting from the seed corpus in fuzz/corpus/ (kept in git) and growing a
# working corpus under fuzz/target/corpus/ (not kept). cargo-fuzz needs nightly
# features: RUSTC_BOOTSTRAP=1 lets this machine's stable toolchain use them.
# A crash is saved under fuzz/artifacts/<target>/; turn it into a
# regression test before fixing it.
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-60}"
tools="$(pwd)/target/tools"
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked --root "$tools"
fi
PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
for target in protocol_decode json_surface toml_surface; do
  echo "== $target for ${seconds}s"
  mkdir -p "fuzz/target/corpus/$target"
  (cd fuzz && cargo fuzz run "$target" "target/corpus/$target" "corpus/$target" -- -max_total_time="$seconds" -timeout=10)
done

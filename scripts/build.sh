#!/bin/sh
# Builds memoryd and memoryctl, as every other script and the README's
# install do:
#   scripts/build.sh                          -> target/debug/{memoryd,memoryctl}
#   scripts/build.sh --release                -> target/release/{memoryd,memoryctl}
#   scripts/build.sh --release --install DIR  -> also copied into DIR/bin
#   scripts/build.sh --release --bench        -> also memoryd-bench and its
#                                                floor client (linked as memoryctl)
#
# memoryctl is linked statically, without PIE, where that is safe: Linux
# with glibc 2.34 or newer, whose static libc answers user and host-name
# lookups (nsswitch "files" and "dns") by itself. Every agent turn starts a
# memoryctl (the hook shims) and so does every `status`; a static binary
# starts without the dynamic loader's work: about half the instructions of
# a `memoryctl status` (BENCHMARKS.md, "A whole memoryctl process"). The
# price is ASLR for memoryctl's own code: it is a short-lived client whose
# input comes from its own user (the agent's hook JSON, the same user's
# daemon). memoryd, the long-lived process, stays a dynamically linked PIE.
# Elsewhere, or with MEMORYD_DYNAMIC_CTL=1, memoryctl is linked like any
# Rust binary; a static link that fails says so and falls back to that.
set -eu
cd "$(dirname "$0")/.."
profile=dev
prefix=
bench=
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --bench) bench=1 ;;
    --install) prefix="${2:?--install needs a directory}"; shift ;;
    *) echo "build.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
  shift
done

# Whether the C library here is glibc 2.34 or newer.
static_glibc() {
  [ "$(uname -s)" = Linux ] || return 1
  version="$(ldd --version 2>/dev/null | sed -n '1s/^ldd (.*GLIBC.*) \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')"
  [ -n "$version" ] || return 1
  set -- $version
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 34 ]; }
}

# Builds binary $2 of package $1 as memoryctl is linked.
link_like_memoryctl() {
  if [ "${MEMORYD_DYNAMIC_CTL:-0}" != 1 ] && static_glibc; then
    cargo rustc --quiet --profile "$profile" -p "$1" --bin "$2" -- \
      -C target-feature=+crt-static -C relocation-model=static && return
    echo "build.sh: $2 did not link statically (is libc6-dev's libc.a installed?); linking it dynamically" >&2
  fi
  cargo build --quiet --profile "$profile" -p "$1" --bin "$2"
}

cargo build --quiet --profile "$profile" -p memoryd
link_like_memoryctl memoryctl memoryctl
if [ -n "$bench" ]; then
  cargo build --quiet --profile "$profile" -p memoryd-bench --bin memoryd-bench
  link_like_memoryctl memoryd-bench memoryd-floor-client
fi

if [ -n "$prefix" ]; then
  # Where cargo put them: CARGO_TARGET_DIR, a configured target-dir, or ./target.
  dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  dir="$dir/debug"
  [ "$profile" = release ] && dir="${dir%/debug}/release"
  mkdir -p "$prefix/bin"
  # Through a temp name and a rename: a running memoryd or a hook in
  # flight keeps the binary it started with.
  for bin in memoryd memoryctl; do
    cp "$dir/$bin" "$prefix/bin/.$bin.new"
    chmod 0755 "$prefix/bin/.$bin.new"
    mv -f "$prefix/bin/.$bin.new" "$prefix/bin/$bin"
    echo "installed $prefix/bin/$bin"
  done
fi

#!/bin/sh
# Builds the Debian package of memoryd (both binaries, the systemd user
# unit, the default config and the docs) with cargo-deb:
#   scripts/deb.sh [cargo-deb flags]   -> target/debian/memoryd_<version>-1_<arch>.deb
# Needs cargo-deb (cargo install --locked cargo-deb). The packaged unit is
# systemd/memoryd.service with ExecStart naming /usr/bin/memoryd (the
# shipped unit names ~/.local/bin/memoryd, where `cargo install --root
# ~/.local` puts it); it is made here so that there is one unit to maintain.
set -eu
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  echo "deb.sh: cargo-deb is not installed; install it with: cargo install --locked cargo-deb" >&2
  exit 1
fi
out=crates/memoryd/deb
mkdir -p "$out"
sed 's|^ExecStart=%h/\.local/bin/memoryd |ExecStart=/usr/bin/memoryd |' systemd/memoryd.service > "$out/memoryd.service.tmp"
if ! grep -qx 'ExecStart=/usr/bin/memoryd --root %h/.iapeer' "$out/memoryd.service.tmp"; then
  echo "deb.sh: systemd/memoryd.service has no ExecStart=%h/.local/bin/memoryd line to point at /usr/bin/memoryd" >&2
  exit 1
fi
mv "$out/memoryd.service.tmp" "$out/memoryd.service"
# The binaries as the install builds them (memoryctl statically linked
# where it can be; see scripts/build.sh), then packaged as they are.
scripts/build.sh --release
exec cargo deb --locked --no-build -p memoryd "$@"

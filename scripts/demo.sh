#!/bin/sh
# Builds memoryd and runs it against a self-contained demo root in ./demo:
# a fake `iapeer` that lists three peers, their folders (inside the root, so
# the armed test sandbox lets memoryd write their .claude and .codex files),
# a HOME of its own (where the fake core records Codex's hook trust), and
# nothing outside ./demo (no ~/.claude, ~/.codex or ~/.iapeer) touched.
# Run it again at will: it stops the demo daemon first and init changes
# nothing that is already in place.
set -eu
cd "$(dirname "$0")/.."
repo="$(pwd)"
scripts/build.sh
# Where cargo put them: CARGO_TARGET_DIR, a configured target-dir, or ./target.
target="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
ctl="$target/debug/memoryctl"
demo="$(pwd)/demo"
R="$demo/root"
export MEMORYD_TEST_SANDBOX=1 HOME="$demo/home"
mkdir -p "$HOME"
"$ctl" --root "$R" daemon stop >/dev/null 2>&1 || true

# Whether something listens on TCP port $1 (Linux: /proc/net; else lsof).
port_taken() {
  if [ -r /proc/net/tcp ]; then
    hex="$(printf ':%04X' "$1")"
    awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
      /proc/net/tcp /proc/net/tcp6 2>/dev/null
  else
    lsof -nP -iTCP:"$1" -sTCP:LISTEN >/dev/null 2>&1
  fi
}
# The MCP endpoint on a port away from the default 8766, so a real install
# on this machine is not disturbed; the next free one when 28766 is taken.
port=28766
while port_taken "$port"; do
  port=$((port + 1))
  if [ "$port" -gt 28866 ]; then
    echo "demo.sh: ports 28766 to 28866 are all taken; free one and run it again" >&2
    exit 1
  fi
done
P="$R/peers"
mkdir -p "$R/plugins/memoryd" "$demo/bin" "$P/boris" "$P/vera" "$P/olga"
cat > "$demo/bin/iapeer" <<SH
#!/bin/sh
# A stand-in for the iapeer core: \`list --json\` and \`trust-hooks\`.
case "\$1" in
  list) cat <<'JSON'
[{"personality":"boris","default_runtime":"claude","cwd":"$P/boris","runtimes":[{"runtime":"claude","status":"live"}]},
 {"personality":"vera","default_runtime":"codex","cwd":"$P/vera","runtimes":[{"runtime":"codex","status":"asleep"}]},
 {"personality":"olga","default_runtime":"claude","cwd":"$P/olga","runtimes":[{"runtime":"claude","status":"live"},{"runtime":"codex","status":"stopped"}]},
 {"personality":"ana","intelligence":"natural","cwd":"","runtimes":[]}]
JSON
  ;;
  trust-hooks) python3 "$repo/tests/fake_trust_hooks.py" "\$2" ;;
  *) echo "demo iapeer: unknown command \$1" >&2; exit 2 ;;
esac
SH
chmod 755 "$demo/bin/iapeer"
mkdir -p "$demo/vault/peers/boris"
[ -e "$demo/vault/welcome.md" ] || printf -- '---\ntitle: Welcome\nauthor: demo\n---\nShared notes live here; each peer writes under peers/<name>/.\n' > "$demo/vault/welcome.md"
[ -e "$R/plugins/memoryd/memoryd.toml" ] || printf '# Demo config (init adds the paths and the port).\nheartbeat_interval = "5s"\n' \
  > "$R/plugins/memoryd/memoryd.toml"
# The install as an operator makes it: config, fleet, surfaces, slot, launcher.
"$ctl" --root "$R" init --vault "$demo/vault" --iapeer-bin "$demo/bin/iapeer" --mcp-port "$port"
echo
"$ctl" --root "$R" daemon start
echo
"$ctl" --root "$R" sweep
echo
"$ctl" --root "$R" status || true
echo
echo "Surfaces memoryd wrote into the peer folders:"
(cd "$P" && find . -type f | sort)
echo
echo "boris's context fragment:"
sed 's/^/  /' "$P/boris/.iapeer/fragments/memoryd.md"
echo
echo "The fleet as memoryctl top shows it (one frame; run it without --once to watch):"
"$ctl" --root "$R" top --once
echo
run="HOME=$HOME MEMORYD_TEST_SANDBOX=1 $ctl --root $R"
echo "memoryd runs detached on the demo root. Try:"
echo "  $run status --json"
echo "  $run reload"
echo "  $run provision-peer --cwd $P/boris --runtime codex --personality boris"
echo "  $run peer link boris vera"
echo "  $run verify"
echo "  $run top"
echo "  $run logs"
echo "Stop it with:"
echo "  $run daemon stop"

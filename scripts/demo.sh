#!/bin/sh
# Builds memoryd and runs it against a self-contained demo root in ./demo:
# a sample fleet map and peer folders, the test sandbox armed so nothing
# outside ./demo (no ~/.claude, ~/.codex or ~/.iapeer) is ever touched.
set -eu
cd "$(dirname "$0")/.."
cargo build --quiet -p memoryd -p memoryctl
demo="$(pwd)/demo"
R="$demo/root"
ctl="$(pwd)/target/debug/memoryctl"
export MEMORYD_TEST_SANDBOX=1
"$ctl" --root "$R" daemon stop >/dev/null 2>&1 || true
mkdir -p "$R/plugins/memoryd" "$R/state/memoryd" "$demo/peers/boris" "$demo/peers/vera" "$demo/peers/olga"
chmod 700 "$R/state/memoryd"
cat > "$R/plugins/memoryd/memoryd.toml" <<TOML
# Demo config. The MCP endpoint is not built yet, so it is off here.
mcp_port = 0
heartbeat_interval = "5s"
TOML
cat > "$R/state/memoryd/fleet.json" <<JSON
{
  "updatedAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "peers": [
    {"personality": "boris", "cwd": "$demo/peers/boris", "defaultRuntime": "claude", "runtimes": ["claude"]},
    {"personality": "vera", "cwd": "$demo/peers/vera", "defaultRuntime": "codex", "runtimes": ["codex"]},
    {"personality": "olga", "cwd": "$demo/peers/olga", "defaultRuntime": "claude", "runtimes": ["claude", "codex"]}
  ]
}
JSON
"$ctl" --root "$R" daemon start
echo
"$ctl" --root "$R" status || true
echo
echo "memoryd runs detached on the demo root. Try:"
echo "  MEMORYD_TEST_SANDBOX=1 $ctl --root $R status --json"
echo "  MEMORYD_TEST_SANDBOX=1 $ctl --root $R reload"
echo "  tail $R/logs/memoryd/memoryd.log"
echo "Stop it with:"
echo "  MEMORYD_TEST_SANDBOX=1 $ctl --root $R daemon stop"

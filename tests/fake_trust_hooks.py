# A fake iapeer core's `trust-hooks <hooks.json>` (the e2e harness and
# scripts/demo.sh run it): records Codex's trust of every hook of the file in
# $HOME/.codex/config.toml, as Codex 0.171.0 keys and hashes it.
import hashlib, json, os, sys
path = sys.argv[1]
config = os.path.join(os.environ["HOME"], ".codex", "config.toml")
def label(event):
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(event))
entries = {}
for event, groups in json.load(open(path)).get("hooks", {}).items():
    for g, group in enumerate(groups):
        for h, hook in enumerate(group.get("hooks", [])):
            handler = {"type": "command", "command": hook["command"],
                       "timeout": max(1, hook.get("timeout", 600)), "async": hook.get("async", False)}
            if "statusMessage" in hook:
                handler["statusMessage"] = hook["statusMessage"]
            identity = {"event_name": label(event), "hooks": [handler]}
            if group.get("matcher") is not None and event not in ("UserPromptSubmit", "Stop"):
                identity["matcher"] = group["matcher"]
            canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            entries[f"{path}:{label(event)}:{g}:{h}"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
original = open(config).read() if os.path.exists(config) else ""
out, current, seen = [], None, set()
for line in original.splitlines(keepends=True):
    text = line.strip()
    if text.startswith("["):
        current = next((k for k in entries if text == "[hooks.state." + json.dumps(k) + "]"), None)
        out.append(line)
        if current:
            out.append('trusted_hash = "%s"\n' % entries[current])
            seen.add(current)
        continue
    if not (current and text.startswith("trusted_hash")):
        out.append(line)
for key in entries:
    if key not in seen:
        out.append('\n[hooks.state.%s]\ntrusted_hash = "%s"\n' % (json.dumps(key), entries[key]))
updated = "".join(out)
if updated == original:
    print("already trusted")
else:
    os.makedirs(os.path.dirname(config), exist_ok=True)
    with open(config + ".tmp", "w") as f:
        f.write(updated)
    os.replace(config + ".tmp", config)
    print("trusted")

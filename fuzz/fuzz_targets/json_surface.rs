//! Every JSON surface merger (Claude's settings.json and .mcp.json, Codex's
//! hooks.json) on arbitrary bytes, held to the property tests' invariants.
#![no_main]

#[path = "../../crates/memoryd-core/tests/invariants/mod.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::json_surface(data));

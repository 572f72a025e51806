//! The Codex config.toml merger on arbitrary text, held to the property
//! tests' invariants.
#![no_main]

#[path = "../../crates/memoryd-core/tests/invariants/mod.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        invariants::toml_surface(text);
    }
});

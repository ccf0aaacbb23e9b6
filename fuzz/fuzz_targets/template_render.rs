//! Hostile templates and params: the input is template text, a NUL, then
//! param values as JSON. Rendering ends in output or an error within the
//! fuel budget, and output never exceeds the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let (text, params) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let params: BTreeMap<String, serde_json::Value> = serde_json::from_slice(params).unwrap_or_default();
    let templates = Arc::new(HashMap::from([("self".to_owned(), text.to_owned()), ("part".to_owned(), "{{ machine.name }}".to_owned())]));
    let ctx = serde_json::json!({"machine": {"name": "m", "macs": ["52:54:00:00:00:01"]}, "provisioner": {"http": "http://x"}});
    if let Ok(out) = plinth_render::render(
        templates,
        plinth_render::Source::Named("self"),
        &ctx,
        Arc::new(params),
        &plinth_render::Hooks::default(),
    ) {
        assert!(out.len() <= plinth_render::MAX_OUTPUT);
    }
});

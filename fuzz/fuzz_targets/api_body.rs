//! API bodies: the first byte picks a kind, the rest is the JSON body a
//! client sent. Validation ends in a normalised object or an error, never
//! a panic; a normalised object normalises to itself, with the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else { return };
    let kind = plinth_model::Kind::ALL[*first as usize % plinth_model::Kind::ALL.len()];
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    if let Ok((key, normal)) = plinth_model::normalize(kind, value) {
        let (again_key, again) = plinth_model::normalize(kind, normal.clone()).expect("a normalised object stays valid");
        assert_eq!(key, again_key);
        assert_eq!(normal, again);
    }
});

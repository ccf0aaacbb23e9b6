//! Path cleaning for TFTP and HTTP: whatever comes in, the result has no
//! `..`, no absolute part and no NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_boot::files::FileRoot;
use std::path::Component;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = FileRoot::clean(data) {
        assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{p:?}");
    }
    if let Some(decoded) = plinth_boot::http::percent_decode(&String::from_utf8_lossy(data)) {
        if let Ok(p) = FileRoot::clean(&decoded) {
            assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{p:?}");
        }
    }
});

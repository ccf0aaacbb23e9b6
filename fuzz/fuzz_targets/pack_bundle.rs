//! Content pack bundles: any bytes load as a pack or a list of problems,
//! never a panic; a pack that loads bundles to a value that loads to the
//! same pack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pack) = plinth_content::pack::Pack::from_bytes(data) {
        let again = plinth_content::pack::Pack::from_bundle(&pack.to_bundle()).expect("a loaded pack re-loads");
        assert_eq!(again, pack);
    }
});

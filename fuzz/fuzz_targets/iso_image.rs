//! ISO 9660 reading: any bytes as an image, opened, walked, its claims
//! checked as an import checks them, and every file copied, end in entries
//! or an error, never a panic or a hang; every name is one safe path
//! component.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_iso::Iso;

fuzz_target!(|data: &[u8]| {
    let Ok(mut iso) = Iso::open(std::io::Cursor::new(data)) else { return };
    let Ok(entries) = iso.walk() else { return };
    // What an import checks before it writes: duplicates, shared data,
    // claims past the image's end; an answer, never a panic.
    let _ = plinth_iso::check_claims(&entries, data.len() as u64);
    for (path, entry) in entries.iter().take(1000) {
        for c in path {
            assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('/') && !c.contains('\0'), "{c:?}");
        }
        let _ = iso.copy(entry, &mut std::io::sink());
    }
});

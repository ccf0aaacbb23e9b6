//! TFTP codec: parse never panics and round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_tftp::Packet;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::parse(data) else { return };
    let mut buf = Vec::new();
    p.encode(&mut buf);
    assert_eq!(Packet::parse(&buf).expect("encoded packet parses"), p);
});

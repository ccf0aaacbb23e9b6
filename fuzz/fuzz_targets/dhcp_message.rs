//! DHCP codec: parse never panics; what parses re-encodes to something that
//! parses to the same message; the server core never panics on it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_dhcp::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else { return };
    let again = Message::parse(&m.encode()).expect("encoded message parses");
    assert_eq!(again, m);
    let _ = plinth_dhcp::pxe::classify(&m);
    let _ = plinth_dhcp::server::requested_address(&m);
});

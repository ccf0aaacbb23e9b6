//! DHCP codec: parse never panics; what parses re-encodes to something that
//! parses to the same message; the server core's decisions (every message
//! type, INFORM's subnet check among them) never panic on it, direct or
//! proxy, known address or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_dhcp::Message;
use plinth_dhcp::pxe::BootFiles;
use plinth_dhcp::server::{Facts, Owner, SubnetView};
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else { return };
    let again = Message::parse(&m.encode()).expect("encoded message parses");
    assert_eq!(again, m);
    let _ = plinth_dhcp::pxe::classify(&m);
    let _ = plinth_dhcp::server::requested_address(&m);
    let boot = BootFiles::default();
    let options = [(3u8, vec![10, 0, 0, 1])];
    let subnet = SubnetView {
        name: "fuzz",
        network: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 24,
        lease_secs: 600,
        options: &options,
        next_server: None,
        only_reservations: data.first().is_some_and(|b| b & 1 == 1),
        boot_files: &boot,
        range: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199))),
    };
    for (owner, free) in [(Owner::Free, Some(Ipv4Addr::new(10, 0, 0, 100))), (Owner::ThisClient, None), (Owner::Other, None)] {
        let facts = Facts {
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            http_base: "http://10.0.0.1:8091",
            reservation: None,
            current: free,
            requested_owner: owner,
            free,
            now: 1_800_000_000,
            netboot: true,
        };
        let decision = plinth_dhcp::server::decide(&m, &subnet, &facts);
        if m.message_type() == Some(plinth_dhcp::MessageType::Inform) && !subnet.contains(m.ciaddr) {
            assert!(
                matches!(decision, plinth_dhcp::server::Decision::Ignore(_)),
                "an INFORM from outside the subnet was answered"
            );
        }
        let _ = plinth_dhcp::server::decide_proxy(&m, &subnet, &facts, false);
        let _ = plinth_dhcp::server::decide_proxy(&m, &subnet, &facts, true);
    }
});

//! Real packets from real clients, decoded and answered by the core.

use plinth_dhcp::pxe::{BootFiles, Firmware, classify};
use plinth_dhcp::server::{Decision, Facts, Owner, SubnetView, decide};
use plinth_dhcp::{Message, MessageType, code};
use std::net::Ipv4Addr;

fn capture(name: &str) -> Message {
    let bytes = std::fs::read(format!("{}/captures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let m = Message::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = Message::parse(&m.encode()).unwrap();
    assert_eq!(again, m, "{name} round-trips");
    m
}

fn offer_for(m: &Message) -> Message {
    let boot = BootFiles::default();
    let subnet = SubnetView {
        name: "lab",
        network: Ipv4Addr::new(10, 77, 0, 0),
        prefix: 24,
        lease_secs: 600,
        options: &[],
        next_server: None,
        only_reservations: false,
        boot_files: &boot,
        range: Some((Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 199))),
    };
    let facts = Facts {
        server_id: Ipv4Addr::new(10, 77, 0, 1),
        http_base: "http://10.77.0.1:8091",
        reservation: None,
        current: None,
        requested_owner: Owner::Free,
        free: Some(Ipv4Addr::new(10, 77, 0, 100)),
        now: 0,
        netboot: true,
    };
    match decide(m, &subnet, &facts) {
        Decision::Reply { message, .. } => *message,
        other => panic!("expected an offer, got {other:?}"),
    }
}

#[test]
fn every_capture_is_a_discover_from_an_ethernet_client() {
    for name in [
        "ipxe-bios-discover.bin",
        "ovmf-x64-discover.bin",
        "udhcpc-discover.bin",
        "dhclient-discover.bin",
        "perfdhcp-discover.bin",
    ] {
        let m = capture(name);
        assert_eq!(m.message_type(), Some(MessageType::Discover), "{name}");
        assert!(m.mac().is_some(), "{name}");
        let offer = offer_for(&m);
        assert_eq!(offer.message_type(), Some(MessageType::Offer), "{name}");
        assert_eq!(offer.xid, m.xid);
        assert_eq!(offer.chaddr, m.chaddr);
    }
}

#[test]
fn ipxe_rom_is_sent_its_script_url() {
    let m = capture("ipxe-bios-discover.bin");
    let c = classify(&m);
    assert_eq!((c.firmware, c.ipxe, c.pxe), (Some(Firmware::Bios), true, true));
    assert_eq!(c.ndi, Some((1, 2, 1)), "UNDI 2.1");
    assert_eq!(offer_for(&m).file, b"http://10.77.0.1:8091/ipxe/52-54-00-cc-00-01");
}

#[test]
fn ovmf_is_sent_the_uefi_loader_with_its_uuid_echoed() {
    let m = capture("ovmf-x64-discover.bin");
    let c = classify(&m);
    assert_eq!((c.firmware, c.ipxe), (Some(Firmware::UefiX64), false));
    assert_eq!(c.ndi, Some((1, 3, 0)));
    assert_eq!(c.uuid.as_ref().map(Vec::len), Some(17), "type byte and GUID");
    let offer = offer_for(&m);
    assert_eq!(offer.file, b"ipxe.efi");
    assert_eq!(offer.siaddr, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(offer.option(code::VENDOR_CLASS), Some(&b"PXEClient"[..]));
    assert_eq!(offer.option(code::CLIENT_UUID), m.option(code::CLIENT_UUID));
}

#[test]
fn os_clients_get_no_boot_file() {
    for name in ["udhcpc-discover.bin", "dhclient-discover.bin", "perfdhcp-discover.bin"] {
        let m = capture(name);
        assert_eq!(classify(&m).firmware, None, "{name}");
        let offer = offer_for(&m);
        assert!(offer.file.is_empty() && offer.option(code::BOOTFILE).is_none(), "{name}");
    }
}

//! Real requests from real clients, decoded and answered by the core.

use plinth_tftp::{Action, Limits, Packet, Transfer};
use std::time::Instant;

fn capture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/captures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn tftp_hpa_read_request_starts_a_lockstep_transfer() {
    let bytes = capture("tftp-hpa-rrq.bin");
    let Packet::Rrq { filename, mode, options } = Packet::parse(&bytes).unwrap() else { panic!("not an RRQ") };
    assert_eq!((filename, mode), (&b"pxelinux.0"[..], &b"octet"[..]));
    assert!(options.is_empty());
    let (_, actions) = Transfer::start(&options, 26_000, &Limits::default(), Instant::now());
    assert_eq!(actions, [Action::SendBlock { block: 1, offset: 0, len: 512 }], "no options: data at once");
}

#[test]
fn tftp_hpa_netascii_and_write_requests_decode() {
    let bytes = capture("tftp-hpa-netascii-rrq.bin");
    assert!(matches!(
        Packet::parse(&bytes).unwrap(),
        Packet::Rrq { filename: b"pxelinux.cfg/default", mode: b"netascii", .. }
    ));
    let bytes = capture("tftp-hpa-wrq.bin");
    assert!(matches!(Packet::parse(&bytes).unwrap(), Packet::Wrq { filename: b"up.txt", .. }));
}

#[test]
fn atftp_options_are_negotiated() {
    let bytes = capture("atftp-rrq-options.bin");
    let Packet::Rrq { filename, options, .. } = Packet::parse(&bytes).unwrap() else { panic!("not an RRQ") };
    assert_eq!(filename, b"boot/ipxe.efi");
    let (t, actions) = Transfer::start(&options, 1_000_000, &Limits::default(), Instant::now());
    let Action::Send(oack) = &actions[0] else { panic!("{actions:?}") };
    let Packet::Oack { options: acked } = Packet::parse(oack).unwrap() else { panic!() };
    let names: Vec<&[u8]> = acked.iter().map(|(k, _)| *k).collect();
    assert!(names.contains(&&b"blksize"[..]) && names.contains(&&b"tsize"[..]) && names.contains(&&b"windowsize"[..]));
    assert!(acked.contains(&(&b"tsize"[..], &b"1000000"[..])));
    assert_eq!((t.blksize(), t.windowsize()), (1468, 8));
    let mut buf = Vec::new();
    Packet::parse(&bytes).unwrap().encode(&mut buf);
    assert_eq!(buf, bytes, "re-encodes byte for byte");
}

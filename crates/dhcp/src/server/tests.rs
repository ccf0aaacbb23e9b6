use super::*;
use crate::message::tests_support::discover as udhcpc_discover;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

const RANGE: Option<(Ipv4Addr, Ipv4Addr)> = Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199)));

fn with_subnet<T>(f: impl FnOnce(&SubnetView<'_>) -> T) -> T {
    let options = vec![(code::ROUTER, vec![10, 0, 0, 1]), (code::DNS, vec![10, 0, 0, 2, 10, 0, 0, 3])];
    let boot = BootFiles::default();
    let s = SubnetView {
        name: "lab",
        network: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 24,
        lease_secs: 3600,
        options: &options,
        next_server: None,
        only_reservations: false,
        boot_files: &boot,
        range: RANGE,
    };
    f(&s)
}

fn facts() -> Facts<'static> {
    Facts {
        server_id: SERVER,
        http_base: "http://10.0.0.1:8091",
        reservation: None,
        current: None,
        requested_owner: Owner::Free,
        free: Some(Ipv4Addr::new(10, 0, 0, 100)),
        now: 1_000_000,
        netboot: true,
    }
}

fn msg(kind: MessageType, opts: &[(u8, &[u8])]) -> Message {
    let mut m = Message::parse(&udhcpc_discover()).unwrap();
    m.set_option(code::MESSAGE_TYPE, vec![kind as u8]);
    for (c, v) in opts {
        m.set_option(*c, v.to_vec());
    }
    m
}

fn reply(d: Decision) -> (Message, Destination, Option<LeaseWrite>) {
    match d {
        Decision::Reply { message, to, lease } => (*message, to, lease),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn discover_gets_an_offer_with_the_subnet_options() {
    let (m, to, lease) = with_subnet(|s| reply(decide(&msg(MessageType::Discover, &[]), s, &facts())));
    assert_eq!(m.message_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(m.option_ip(code::SERVER_ID), Some(SERVER));
    assert_eq!(m.option(code::SUBNET_MASK), Some(&[255, 255, 255, 0][..]));
    assert_eq!(m.option(code::ROUTER), Some(&[10, 0, 0, 1][..]));
    assert_eq!(m.option(code::LEASE_TIME), Some(&3600u32.to_be_bytes()[..]));
    assert_eq!(m.option(code::RENEWAL_TIME), Some(&1800u32.to_be_bytes()[..]));
    assert!(m.option(code::BOOTFILE).is_none(), "an OS client gets no boot file");
    assert_eq!(to, Destination::Direct { ip: Ipv4Addr::new(10, 0, 0, 100), mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56] });
    assert_eq!(lease.unwrap().state, LeaseState::Offered);
}

#[test]
fn offers_prefer_reservation_then_current_then_requested_then_free() {
    let res_opts = vec![(code::DNS, vec![9, 9, 9, 9])];
    let mut f = facts();
    f.current = Some(Ipv4Addr::new(10, 0, 0, 150));
    let requested: &[(u8, &[u8])] = &[(code::REQUESTED_IP, &[10, 0, 0, 160])];
    let (m, ..) = with_subnet(|s| reply(decide(&msg(MessageType::Discover, requested), s, &f)));
    assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 0, 150), "the client's current address");
    f.current = None;
    let (m, ..) = with_subnet(|s| reply(decide(&msg(MessageType::Discover, requested), s, &f)));
    assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 0, 160), "the requested address when free");
    f.requested_owner = Owner::Other;
    let (m, ..) = with_subnet(|s| reply(decide(&msg(MessageType::Discover, requested), s, &f)));
    assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 0, 100), "a taken requested address is not offered");
    f.reservation = Some(ReservationView {
        address: Ipv4Addr::new(10, 0, 0, 5),
        hostname: Some("db-1"),
        options: &res_opts,
        next_server: None,
    });
    let (m, ..) = with_subnet(|s| reply(decide(&msg(MessageType::Discover, requested), s, &f)));
    assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 0, 5), "reservations win, even outside the range");
    assert_eq!(m.option(code::HOSTNAME), Some(&b"db-1"[..]));
    assert_eq!(m.option(code::DNS), Some(&[9, 9, 9, 9][..]), "reservation options override the subnet's");
    f.reservation = None;
    f.free = None;
    f.requested_owner = Owner::Other;
    assert_eq!(
        with_subnet(|s| decide(&msg(MessageType::Discover, &[]), s, &f)),
        Decision::Ignore("no free address in the subnet")
    );
}

#[test]
fn request_in_selecting_state_is_acked_and_bound() {
    let mut f = facts();
    f.requested_owner = Owner::ThisClient;
    let req = msg(
        MessageType::Request,
        &[(code::SERVER_ID, &[10, 0, 0, 1]), (code::REQUESTED_IP, &[10, 0, 0, 100]), (code::HOSTNAME, b"web-1")],
    );
    let (m, to, lease) = with_subnet(|s| reply(decide(&req, s, &f)));
    assert_eq!(m.message_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(to, Destination::Direct { ip: Ipv4Addr::new(10, 0, 0, 100), mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56] });
    let lease = lease.unwrap();
    assert_eq!(
        (lease.state, lease.expires_at, lease.hostname.as_deref()),
        (LeaseState::Bound, 1_003_600, Some("web-1"))
    );
}

#[test]
fn request_for_another_server_drops_our_offer() {
    let req = msg(MessageType::Request, &[(code::SERVER_ID, &[10, 0, 0, 254]), (code::REQUESTED_IP, &[10, 0, 0, 100])]);
    assert_eq!(with_subnet(|s| decide(&req, s, &facts())), Decision::OtherServer);
}

#[test]
fn request_for_someone_elses_address_is_naked() {
    let mut f = facts();
    f.requested_owner = Owner::Other;
    let req = msg(MessageType::Request, &[(code::SERVER_ID, &[10, 0, 0, 1]), (code::REQUESTED_IP, &[10, 0, 0, 100])]);
    let (m, to, lease) = with_subnet(|s| reply(decide(&req, s, &f)));
    assert_eq!(m.message_type(), Some(MessageType::Nak));
    assert_eq!((m.yiaddr, to, lease), (Ipv4Addr::UNSPECIFIED, Destination::Broadcast, None));
}

#[test]
fn init_reboot_follows_rfc_2131() {
    let on_net: &[(u8, &[u8])] = &[(code::REQUESTED_IP, &[10, 0, 0, 120])];
    let mut f = facts();
    f.requested_owner = Owner::ThisClient;
    let (m, ..) = with_subnet(|s| reply(decide(&msg(MessageType::Request, on_net), s, &f)));
    assert_eq!(m.message_type(), Some(MessageType::Ack), "its own lease: ACK");
    let wrong_net: &[(u8, &[u8])] = &[(code::REQUESTED_IP, &[192, 168, 1, 20])];
    let (m, ..) = with_subnet(|s| reply(decide(&msg(MessageType::Request, wrong_net), s, &f)));
    assert_eq!(m.message_type(), Some(MessageType::Nak), "moved to another network: NAK");
    f.requested_owner = Owner::Free;
    let outside: &[(u8, &[u8])] = &[(code::REQUESTED_IP, &[10, 0, 0, 20])];
    assert!(
        matches!(with_subnet(|s| decide(&msg(MessageType::Request, outside), s, &f)), Decision::Ignore(_)),
        "no record: silent"
    );
}

#[test]
fn renewal_is_unicast_to_the_client_and_extends_the_lease() {
    let mut f = facts();
    f.requested_owner = Owner::ThisClient;
    let mut req = msg(MessageType::Request, &[]);
    req.ciaddr = Ipv4Addr::new(10, 0, 0, 100);
    let (m, to, lease) = with_subnet(|s| reply(decide(&req, s, &f)));
    assert_eq!(m.message_type(), Some(MessageType::Ack));
    assert_eq!(to, Destination::Unicast(Ipv4Addr::new(10, 0, 0, 100)));
    assert_eq!(lease.unwrap().state, LeaseState::Bound);
}

#[test]
fn relayed_requests_go_back_to_the_relay_with_option_82() {
    let mut req = msg(MessageType::Discover, &[(code::RELAY_AGENT, &[1, 4, b'p', b'o', b'r', b't'])]);
    req.giaddr = Ipv4Addr::new(10, 0, 0, 254);
    let (m, to, _) = with_subnet(|s| reply(decide(&req, s, &facts())));
    assert_eq!(to, Destination::Relay(Ipv4Addr::new(10, 0, 0, 254)));
    assert_eq!(m.giaddr, Ipv4Addr::new(10, 0, 0, 254));
    assert_eq!(m.option(code::RELAY_AGENT), Some(&[1, 4, b'p', b'o', b'r', b't'][..]));
}

#[test]
fn release_and_decline_are_recorded() {
    let mut f = facts();
    f.requested_owner = Owner::ThisClient;
    let mut rel = msg(MessageType::Release, &[]);
    rel.ciaddr = Ipv4Addr::new(10, 0, 0, 100);
    assert!(matches!(
        with_subnet(|s| decide(&rel, s, &f)),
        Decision::Record(LeaseWrite { state: LeaseState::Released, .. })
    ));
    let dec = msg(MessageType::Decline, &[(code::REQUESTED_IP, &[10, 0, 0, 100])]);
    let Decision::Record(w) = with_subnet(|s| decide(&dec, s, &f)) else { panic!() };
    assert_eq!((w.state, w.expires_at), (LeaseState::Declined, 1_000_000 + DECLINE_HOLD_SECS));
    f.requested_owner = Owner::Other;
    assert!(matches!(with_subnet(|s| decide(&rel, s, &f)), Decision::Ignore(_)), "cannot release another's lease");
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut req = msg(MessageType::Inform, &[]);
    req.ciaddr = Ipv4Addr::new(10, 0, 0, 50);
    let (m, to, lease) = with_subnet(|s| reply(decide(&req, s, &facts())));
    assert_eq!(m.message_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert!(m.option(code::LEASE_TIME).is_none());
    assert_eq!((to, lease), (Destination::Unicast(Ipv4Addr::new(10, 0, 0, 50)), None));
    // About an address of another network: none of this subnet's options.
    req.ciaddr = Ipv4Addr::new(192, 168, 9, 9);
    assert!(matches!(with_subnet(|s| decide(&req, s, &facts())), Decision::Ignore(_)));
}

#[test]
fn pxe_clients_get_their_loader_and_ipxe_gets_its_script() {
    let bios = msg(
        MessageType::Discover,
        &[(code::VENDOR_CLASS, b"PXEClient:Arch:00000:UNDI:002001"), (code::CLIENT_ARCH, &[0, 0])],
    );
    let (m, ..) = with_subnet(|s| reply(decide(&bios, s, &facts())));
    assert_eq!(m.file, b"undionly.kpxe");
    assert_eq!(m.siaddr, SERVER);
    assert_eq!(m.option(code::VENDOR_CLASS), Some(&b"PXEClient"[..]));
    let efi = msg(
        MessageType::Discover,
        &[(code::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003000"), (code::CLIENT_ARCH, &[0, 7])],
    );
    assert_eq!(with_subnet(|s| reply(decide(&efi, s, &facts()))).0.file, b"ipxe.efi");
    let http = msg(
        MessageType::Discover,
        &[(code::VENDOR_CLASS, b"HTTPClient:Arch:00016:UNDI:003001"), (code::CLIENT_ARCH, &[0, 16])],
    );
    let (m, ..) = with_subnet(|s| reply(decide(&http, s, &facts())));
    assert_eq!(m.file, b"http://10.0.0.1:8091/files/ipxe.efi");
    assert_eq!(m.option(code::VENDOR_CLASS), Some(&b"HTTPClient"[..]), "UEFI HTTP boot needs option 60 echoed");
    let ipxe = msg(MessageType::Discover, &[(code::USER_CLASS, b"iPXE"), (code::CLIENT_ARCH, &[0, 0])]);
    assert_eq!(
        with_subnet(|s| reply(decide(&ipxe, s, &facts()))).0.file,
        b"http://10.0.0.1:8091/ipxe/52-54-00-12-34-56"
    );
    // A machine that boots from its disk: an address, no boot information.
    let local = Facts { netboot: false, ..facts() };
    let (m, ..) = with_subnet(|s| reply(decide(&bios, s, &local)));
    assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 0, 100));
    assert!(m.file.iter().all(|b| *b == 0) && m.option(code::BOOTFILE).is_none(), "{m:?}");
    assert!(m.option(code::VENDOR_CLASS).is_none());
    assert!(matches!(with_subnet(|s| decide_proxy(&bios, s, &local, false)), Decision::Ignore(_)));
}

#[test]
fn only_reservations_ignores_unknown_clients() {
    let options = vec![];
    let boot = BootFiles::default();
    let s = SubnetView {
        name: "strict",
        network: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 24,
        lease_secs: 3600,
        options: &options,
        next_server: None,
        only_reservations: true,
        boot_files: &boot,
        range: RANGE,
    };
    assert!(matches!(decide(&msg(MessageType::Discover, &[]), &s, &facts()), Decision::Ignore(_)));
}

#[test]
fn proxy_answers_pxe_clients_with_boot_information_only() {
    let pxe = msg(
        MessageType::Discover,
        &[
            (code::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003000"),
            (code::CLIENT_ARCH, &[0, 7]),
            (code::CLIENT_UUID, &[0; 17]),
        ],
    );
    let (m, to, lease) = with_subnet(|s| reply(decide_proxy(&pxe, s, &facts(), false)));
    assert_eq!(m.message_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr, Ipv4Addr::UNSPECIFIED, "never an address");
    assert!(m.option(code::LEASE_TIME).is_none() && m.option(code::ROUTER).is_none());
    assert_eq!(m.file, b"ipxe.efi");
    assert_eq!(m.option(code::VENDOR_CLASS), Some(&b"PXEClient"[..]));
    assert_eq!(m.option(code::CLIENT_UUID), Some(&[0u8; 17][..]), "UUID echoed");
    assert_eq!((to, lease), (Destination::Broadcast, None));

    let ipxe_req = msg(
        MessageType::Request,
        &[(code::USER_CLASS, b"iPXE"), (code::VENDOR_CLASS, b"PXEClient:Arch:00000:UNDI:002001")],
    );
    let (m, to, _) = with_subnet(|s| reply(decide_proxy(&ipxe_req, s, &facts(), true)));
    assert_eq!(m.message_type(), Some(MessageType::Ack));
    assert_eq!(m.file, b"http://10.0.0.1:8091/ipxe/52-54-00-12-34-56");
    assert_eq!(to, Destination::Source, "4011 answers go back to the sender");

    let os = msg(MessageType::Discover, &[]);
    assert!(
        matches!(with_subnet(|s| decide_proxy(&os, s, &facts(), false)), Decision::Ignore(_)),
        "OS clients are left alone"
    );
    assert!(
        matches!(with_subnet(|s| decide_proxy(&ipxe_req, s, &facts(), false)), Decision::Ignore(_)),
        "REQUEST on 67 is the other server's"
    );
}

/// RFC 2131 §4.1's order for where an OFFER or ACK goes.
#[test]
fn replies_go_where_rfc_2131_says() {
    let given = Ipv4Addr::new(10, 0, 0, 100);
    let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let to = |edit: &dyn Fn(&mut Message)| {
        let mut m = msg(MessageType::Discover, &[]);
        edit(&mut m);
        with_subnet(|s| reply(decide(&m, s, &facts())).1)
    };
    // No address, no broadcast flag: unicast at the hardware address.
    assert_eq!(to(&|_| {}), Destination::Direct { ip: given, mac });
    // The broadcast flag asks for broadcast.
    assert_eq!(to(&|m| m.flags = 0x8000), Destination::Broadcast);
    // A hardware address that is not Ethernet cannot be unicast to.
    assert_eq!(to(&|m| m.htype = 6), Destination::Broadcast);
    assert_eq!(to(&|m| m.hlen = 8), Destination::Broadcast);
    // A client with an address gets it there; a relay, at the relay, even
    // with the flag.
    assert_eq!(to(&|m| m.ciaddr = Ipv4Addr::new(10, 0, 0, 7)), Destination::Unicast(Ipv4Addr::new(10, 0, 0, 7)));
    assert_eq!(
        to(&|m| {
            m.giaddr = Ipv4Addr::new(10, 0, 0, 254);
            m.flags = 0x8000;
        }),
        Destination::Relay(Ipv4Addr::new(10, 0, 0, 254))
    );
}

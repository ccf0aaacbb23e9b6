//! Packet tables: each case is a subnet and a sequence of requests (time,
//! client, what it sends) with what the index must answer.

use super::*;
use crate::message::tests_support::discover as udhcpc_discover;
use crate::server::DECLINE_HOLD_SECS;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const T0: u64 = 1_000_000;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, n]
}

/// A subnet 10.0.0.0/24 on `eth0` whose range is .100 to .(100 + size - 1).
fn subnet(size: u8) -> SubnetConfig {
    SubnetConfig {
        name: "lab".into(),
        network: ip(0),
        prefix: 24,
        interface: Some("eth0".into()),
        proxy: false,
        range: Some((ip(100), ip(100 + size - 1))),
        lease_secs: 3600,
        options: vec![(code::ROUTER, vec![10, 0, 0, 1])],
        next_server: None,
        only_reservations: false,
        boot_files: BootFiles::default(),
        relays: vec![],
        match_client_id: false,
        unknown_share: 100,
        max_pending_offers: 0,
        new_clients_per_minute: 0,
    }
}

#[derive(Default)]
struct Fleet {
    known: HashSet<[u8; 6]>,
}

impl Machines for Fleet {
    fn known(&self, mac: [u8; 6]) -> bool {
        self.known.contains(&mac)
    }
    fn netboot(&self, _: Option<[u8; 6]>) -> bool {
        true
    }
}

/// What a client sends.
#[derive(Debug, Clone, Copy)]
enum Sends {
    Discover,
    /// SELECTING: a REQUEST for this address naming our server.
    Select(u8),
    /// SELECTING another server's offer.
    SelectOther(u8),
    /// INIT-REBOOT: a REQUEST for this address naming no server.
    Reboot(u8),
    Release(u8),
    Decline(u8),
    /// A DISCOVER relayed with `giaddr` 10.0.0.254 from this source.
    Relayed([u8; 4]),
}

/// What the index must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Offer(u8),
    Ack(u8),
    Nak,
    Ignored,
    Starved,
    Refused,
    Recorded(LeaseState),
    OtherServer,
}

/// A request arriving on `eth0` from `source` at `now`.
fn request(message: &Message, source: Option<Ipv4Addr>, now: u64) -> Request<'_> {
    Request {
        message,
        interface: "eth0",
        source,
        boot_port: false,
        server_id: SERVER,
        http_base: "http://10.0.0.1:8091",
        now,
    }
}

fn message(client: u8, send: Sends) -> Message {
    let mut m = Message::parse(&udhcpc_discover()).unwrap();
    m.chaddr[..6].copy_from_slice(&mac(client));
    m.options.retain(|(c, _)| *c != code::CLIENT_ID);
    let kind = match send {
        Sends::Discover | Sends::Relayed(_) => MessageType::Discover,
        Sends::Select(_) | Sends::SelectOther(_) | Sends::Reboot(_) => MessageType::Request,
        Sends::Release(_) => MessageType::Release,
        Sends::Decline(_) => MessageType::Decline,
    };
    m.set_option(code::MESSAGE_TYPE, vec![kind as u8]);
    match send {
        Sends::Select(a) => {
            m.set_option(code::REQUESTED_IP, ip(a).octets().to_vec());
            m.set_option(code::SERVER_ID, SERVER.octets().to_vec());
        }
        Sends::SelectOther(a) => {
            m.set_option(code::REQUESTED_IP, ip(a).octets().to_vec());
            m.set_option(code::SERVER_ID, vec![10, 0, 0, 2]);
        }
        Sends::Reboot(a) | Sends::Decline(a) => m.set_option(code::REQUESTED_IP, ip(a).octets().to_vec()),
        Sends::Release(a) => m.ciaddr = ip(a),
        Sends::Relayed(_) => m.giaddr = ip(254),
        Sends::Discover => {}
    }
    m
}

/// Runs `steps` (seconds after T0, client, what it sends, what it must get)
/// against `index`, storing every change and sweeping as time passes, as
/// the shell does.
fn run(index: &mut Index, fleet: &Fleet, steps: &[(u64, u8, Sends, Want)]) {
    let mut last = 0;
    for (n, &(t, client, send, want)) in steps.iter().enumerate() {
        if t != last {
            index.sweep(T0 + t);
            last = t;
        }
        let m = message(client, send);
        let source = match send {
            Sends::Relayed(from) => Some(Ipv4Addr::from(from)),
            _ => None,
        };
        let req = request(&m, source, T0 + t);
        let outcome = index.handle(&req, fleet);
        let got = match &outcome {
            Outcome::Ignored(_) => Want::Ignored,
            Outcome::Refused { .. } => Want::Refused,
            Outcome::Starved(_) => Want::Starved,
            Outcome::OtherServer => Want::OtherServer,
            Outcome::Record { change, .. } => Want::Recorded(change.state),
            Outcome::Reply { message, .. } => {
                let last = message.yiaddr.octets()[3];
                match message.message_type() {
                    Some(MessageType::Offer) => Want::Offer(last),
                    Some(MessageType::Ack) => Want::Ack(last),
                    Some(MessageType::Nak) => Want::Nak,
                    other => panic!("step {n}: unexpected reply {other:?}"),
                }
            }
        };
        assert_eq!(got, want, "step {n}: client {client} sent {send:?} at +{t} s: {outcome:?}");
        // Offers are memory only; every other change is stored before its
        // reply, and the index learns the store's revision.
        if let Outcome::Reply { change: Some(c), .. } | Outcome::Record { change: c, .. } = &outcome {
            assert_ne!(c.state, LeaseState::Offered);
            let next = index.revision(c.address).map_or(1, |r| r + 1);
            index.committed(c.address, next);
        }
        if let Outcome::Reply { change, message, .. } = &outcome {
            assert_eq!(change.is_some(), message.message_type() == Some(MessageType::Ack), "step {n}");
        }
    }
}

fn index(s: SubnetConfig) -> Index {
    Index::new(vec![s], vec![], vec![], &Fleet::default(), T0)
}

use Sends::*;
use Want::*;

#[test]
fn four_way_exchanges_hand_out_distinct_addresses_and_keep_them() {
    run(
        &mut index(subnet(3)),
        &Fleet::default(),
        &[
            (0, 1, Discover, Offer(100)),
            (0, 2, Discover, Offer(101)),
            (0, 1, Discover, Offer(100)), // a retransmission: the same offer
            (0, 1, Select(100), Ack(100)),
            (0, 2, Select(101), Ack(101)),
            (1, 1, Discover, Offer(100)), // its lease, again
            (1, 3, Discover, Offer(102)),
            (1, 3, Select(100), Nak),  // someone else's address
            (1, 4, Discover, Ignored), // the range is dry: .102 is offered
            (2, 1, Reboot(100), Ack(100)),
        ],
    );
}

#[test]
fn released_addresses_return_to_the_pool_and_declined_ones_are_held_back() {
    run(
        &mut index(subnet(2)),
        &Fleet::default(),
        &[
            (0, 1, Discover, Offer(100)),
            (0, 1, Select(100), Ack(100)),
            (0, 2, Discover, Offer(101)),
            (0, 2, Select(101), Ack(101)),
            (1, 3, Discover, Ignored),
            (2, 1, Release(100), Recorded(LeaseState::Released)),
            (3, 3, Discover, Offer(100)),
            (3, 3, Decline(100), Recorded(LeaseState::Declined)),
            (4, 4, Discover, Ignored),
            (4, 2, Release(101), Recorded(LeaseState::Released)),
            (5, 4, Discover, Offer(101)),
            (5, 4, Select(101), Ack(101)),
            (DECLINE_HOLD_SECS, 5, Discover, Ignored), // .100 is held back
            (DECLINE_HOLD_SECS + 3, 5, Discover, Offer(100)), // the hold ended
        ],
    );
}

#[test]
fn an_offer_not_taken_expires_and_another_client_may_have_it() {
    let hold = crate::server::OFFER_HOLD_SECS;
    run(
        &mut index(subnet(1)),
        &Fleet::default(),
        &[
            (0, 1, Discover, Offer(100)),
            (hold - 1, 2, Discover, Ignored),
            (hold, 2, Discover, Offer(100)),
            (hold, 1, Select(100), Nak), // its offer went to 2
            (hold, 2, Select(100), Ack(100)),
        ],
    );
}

#[test]
fn choosing_another_server_withdraws_our_offer() {
    run(
        &mut index(subnet(1)),
        &Fleet::default(),
        &[
            (0, 1, Discover, Offer(100)),
            (0, 2, Discover, Ignored),
            (0, 1, SelectOther(100), OtherServer),
            (0, 2, Discover, Offer(100)),
        ],
    );
}

#[test]
fn offers_not_taken_hold_at_most_max_pending_offers_addresses_and_new_clients_are_rate_capped() {
    let mut s = subnet(4);
    s.max_pending_offers = 2;
    run(
        &mut index(s),
        &Fleet::default(),
        &[
            (0, 1, Discover, Offer(100)),
            (1, 2, Discover, Offer(101)),
            (2, 3, Discover, Offer(102)),  // 1's offer, the oldest, is withdrawn
            (2, 1, Select(100), Ack(100)), // still free: the client may have it
            (2, 4, Discover, Offer(103)),  // 2's offer is withdrawn
            (3, 5, Discover, Offer(101)),  // and its address reused; 3's withdrawn
            (3, 6, Discover, Offer(102)),
            (3, 2, Select(101), Nak), // 2 waited too long: now 5's
            (3, 7, Discover, Offer(103)),
        ],
    );
    let mut s = subnet(50);
    s.new_clients_per_minute = 2;
    run(
        &mut index(s),
        &Fleet::default(),
        &[
            (0, 1, Discover, Offer(100)),
            (10, 2, Discover, Offer(101)),
            (20, 3, Discover, Starved),
            (20, 1, Select(100), Ack(100)), // known clients are not new
            (60, 3, Discover, Offer(102)),
            (65, 4, Discover, Starved),
            (70, 4, Discover, Offer(103)),
        ],
    );
}

#[test]
fn unknown_clients_hold_at_most_their_share_and_known_ones_still_get_addresses() {
    let mut s = subnet(10);
    s.unknown_share = 20; // 2 of 10
    let fleet = Fleet { known: [mac(9)].into_iter().collect() };
    let mut ix = Index::new(vec![s], vec![], vec![], &fleet, T0);
    run(
        &mut ix,
        &fleet,
        &[
            (0, 1, Discover, Offer(100)),
            (0, 2, Discover, Offer(101)),
            (0, 3, Discover, Refused),
            (0, 9, Discover, Offer(102)),
            (0, 1, Select(100), Ack(100)),
            (1, 3, Discover, Refused),     // 1's lease still counts
            (61, 3, Discover, Offer(103)), // 2's offer expired
        ],
    );
}

#[test]
fn relayed_requests_are_answered_only_from_trusted_relays() {
    let mut s = subnet(10);
    s.interface = Some("eth1".into()); // not the interface the requests come in on
    s.relays = vec![Ipv4Addr::new(192, 168, 0, 1)];
    let mut ix = index(s);
    run(
        &mut ix,
        &Fleet::default(),
        &[
            (0, 1, Relayed([192, 168, 0, 9]), Refused),
            (0, 1, Relayed([192, 168, 0, 1]), Offer(100)),
            (0, 2, Discover, Ignored),
        ],
    );
}

#[test]
fn reservations_give_their_address_to_their_mac_only() {
    let reservation = ReservationConfig {
        mac: mac(7),
        address: ip(105),
        hostname: Some("r7".into()),
        options: vec![],
        next_server: None,
    };
    let mut ix = Index::new(vec![subnet(6)], vec![reservation], vec![], &Fleet::default(), T0);
    let mut steps: Vec<(u64, u8, Sends, Want)> = (1..=5).map(|c| (0, c, Discover, Offer(99 + c))).collect();
    steps.extend([
        (0, 6, Discover, Ignored), // .105 is reserved
        (0, 6, Reboot(105), Nak),
        (0, 7, Discover, Offer(105)),
        (0, 7, Select(105), Ack(105)),
    ]);
    run(&mut ix, &Fleet::default(), &steps);
}

#[test]
fn stored_leases_survive_a_restart_and_carry_their_revision() {
    let stored = StoredLease {
        address: ip(101),
        mac: mac(1),
        client_id: None,
        subnet: "lab".into(),
        state: LeaseState::Bound,
        expires_at: T0 + 3600,
        revision: 41,
    };
    let mut ix = Index::new(vec![subnet(2)], vec![], vec![stored], &Fleet::default(), T0);
    assert_eq!(ix.revision(ip(101)), Some(41), "the precondition of the next write");
    assert_eq!(ix.revision(ip(100)), None, "no lease stored there: the write must find none");
    run(
        &mut ix,
        &Fleet::default(),
        &[
            (0, 2, Discover, Offer(100)),
            (0, 1, Discover, Offer(101)),
            (0, 1, Select(101), Ack(101)),
            (0, 3, Discover, Ignored),
        ],
    );
    assert_eq!(ix.revision(ip(101)), Some(42));
    // A reload (another writer changed something) keeps the live offer.
    ix.reload(
        vec![subnet(2)],
        vec![],
        vec![StoredLease { revision: 42, ..ix_lease(101, 1) }],
        &Fleet::default(),
        T0 + 1,
    );
    run(&mut ix, &Fleet::default(), &[(1, 3, Discover, Ignored), (1, 2, Select(100), Ack(100))]);
}

fn ix_lease(last: u8, client: u8) -> StoredLease {
    StoredLease {
        address: ip(last),
        mac: mac(client),
        client_id: None,
        subnet: "lab".into(),
        state: LeaseState::Bound,
        expires_at: T0 + 3600,
        revision: 1,
    }
}

#[test]
fn matching_by_client_id_keeps_one_lease_per_identifier() {
    let mut s = subnet(5);
    s.match_client_id = true;
    let mut ix = index(s);
    let fleet = Fleet::default();
    let ask = |ix: &mut Index, id: &[u8], m: u8, kind: MessageType, want: Option<u8>| {
        let mut msg = message(m, Discover);
        msg.set_option(code::MESSAGE_TYPE, vec![kind as u8]);
        msg.set_option(code::CLIENT_ID, id.to_vec());
        if let Some(a) = want.filter(|_| kind == MessageType::Request) {
            msg.set_option(code::REQUESTED_IP, ip(a).octets().to_vec());
            msg.set_option(code::SERVER_ID, SERVER.octets().to_vec());
        }
        let req = request(&msg, None, T0);
        ix.handle(&req, &fleet)
    };
    let yiaddr = |o: Outcome| match o {
        Outcome::Reply { message, .. } => message.yiaddr.octets()[3],
        other => panic!("{other:?}"),
    };
    assert_eq!(yiaddr(ask(&mut ix, b"\xffvm-a", 1, MessageType::Discover, None)), 100);
    assert_eq!(yiaddr(ask(&mut ix, b"\xffvm-a", 1, MessageType::Request, Some(100))), 100);
    // The same identifier from another NIC is the same client.
    assert_eq!(yiaddr(ask(&mut ix, b"\xffvm-a", 2, MessageType::Discover, None)), 100);
    assert_eq!(yiaddr(ask(&mut ix, b"\xffvm-b", 1, MessageType::Discover, None)), 101);
    // An identifier naming another MAC than the packet's is refused.
    let spoof = [1, 0x52, 0x54, 0, 0, 0, 9];
    assert!(matches!(ask(&mut ix, &spoof, 1, MessageType::Discover, None), Outcome::Refused { .. }));
}

#[test]
fn a_large_flood_of_new_clients_gets_distinct_addresses_until_the_range_is_dry() {
    // 20,000 clients in a /16 range of 16,384: every offer distinct, and
    // the index answers without scanning (this runs in well under a second).
    let mut s = subnet(1);
    s.network = Ipv4Addr::new(10, 1, 0, 0);
    s.prefix = 16;
    s.range = Some((Ipv4Addr::new(10, 1, 0, 0), Ipv4Addr::new(10, 1, 63, 255)));
    let mut ix = index(s);
    let fleet = Fleet::default();
    let mut seen = HashSet::new();
    let mut dry = 0;
    for n in 0..20_000u32 {
        let mut m = message(0, Discover);
        m.chaddr[2..6].copy_from_slice(&n.to_be_bytes());
        let req = request(&m, None, T0);
        match ix.handle(&req, &fleet) {
            Outcome::Reply { message, .. } => assert!(seen.insert(message.yiaddr), "{} twice", message.yiaddr),
            Outcome::Ignored(_) => dry += 1,
            other => panic!("{other:?}"),
        }
    }
    // The network and broadcast addresses are never handed out.
    assert_eq!(seen.len(), 16_384 - 1);
    assert_eq!(dry, 20_000 - 16_383);
}

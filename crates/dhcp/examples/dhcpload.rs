//! A light DHCPv4 load generator for `bench/boot.sh`: four-way exchanges
//! (DISCOVER, OFFER, REQUEST, ACK) at a fixed offered rate, sent as a relay
//! would (`giaddr` set, from and to port 67), as perfdhcp does. perfdhcp
//! saturates its core near 6,500 exchanges/s on the bench machine, below
//! what the servers under test do; this one costs a few microseconds per
//! exchange, so the server, not the generator, sets the knee.
//!
//! ```text
//! dhcpload LOCAL SERVER RATE SECS CLIENTS MAC-PREFIX
//! dhcpload 10.99.0.2 10.99.0.1 10000 10 150000 02:00:01
//! ```
//!
//! Exchange `i` is client `i % CLIENTS` (its MAC is the prefix and the
//! client number), with transaction id `i`. Each OFFER that comes within
//! 1 s of its DISCOVER is answered with a REQUEST at once (perfdhcp's drop
//! time); an exchange counts when its ACK comes within 2 s of its
//! DISCOVER, and replies are awaited 2 s past the offered period. The last
//! line says what happened: `discovers D offers O acks A lost L% rate R`
//! (R = ACKs ÷ SECS).

use plinth_dhcp::{Message, MessageType, code};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// An OFFER later than this after its DISCOVER is too late (perfdhcp's
/// default drop time), and so is an ACK later than twice this.
const DROP_MS: u32 = 1000;

const SENT: u8 = 1;
const REQUESTED: u8 = 2;
const ACKED: u8 = 3;

fn usage() -> ! {
    eprintln!(
        "usage: dhcpload LOCAL SERVER RATE SECS CLIENTS MAC-PREFIX (e.g. 10.99.0.2 10.99.0.1 10000 10 150000 02:00:01)"
    );
    std::process::exit(2)
}

fn request(kind: MessageType, xid: u32, mac: [u8; 6], giaddr: Ipv4Addr, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&mac);
    let mut m = Message {
        op: 1,
        htype: 1,
        hlen: 6,
        hops: 1,
        xid,
        secs: 0,
        flags: 0,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr,
        chaddr,
        sname: Vec::new(),
        file: Vec::new(),
        options: Vec::new(),
    };
    m.set_option(code::MESSAGE_TYPE, vec![kind as u8]);
    for (c, v) in extra {
        m.set_option(*c, v.clone());
    }
    m.set_option(code::PARAMETER_LIST, vec![code::SUBNET_MASK, code::ROUTER, code::DNS]);
    m.encode()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [local, server, rate, secs, clients, prefix] = args.as_slice() else { usage() };
    let (Ok(local), Ok(server), Ok(rate), Ok(secs), Ok(clients)) = (
        local.parse::<Ipv4Addr>(),
        server.parse::<Ipv4Addr>(),
        rate.parse::<u64>(),
        secs.parse::<u64>(),
        clients.parse::<u64>(),
    ) else {
        usage()
    };
    let prefix: Vec<u8> = prefix.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    let Ok(prefix) = <[u8; 3]>::try_from(prefix) else { usage() };
    if rate == 0 || secs == 0 || clients == 0 || clients > 1 << 24 {
        usage()
    }
    let mac = move |i: u64| {
        let n = (i % clients) as u32;
        [prefix[0], prefix[1], prefix[2], (n >> 16) as u8, (n >> 8) as u8, n as u8]
    };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .and_then(|s| {
            s.set_reuse_address(true)?;
            let _ = s.set_recv_buffer_size(8 << 20);
            let _ = s.set_send_buffer_size(8 << 20);
            s.bind(&SocketAddrV4::new(local, 67).into())?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(UdpSocket::from(s))
        })
        .unwrap_or_else(|e| {
            eprintln!("dhcpload: cannot bind {local}:67: {e}");
            std::process::exit(1)
        });
    let socket = Arc::new(socket);
    let total = rate * secs;
    let state: Arc<Vec<AtomicU8>> = Arc::new((0..total).map(|_| AtomicU8::new(0)).collect());
    // When each DISCOVER left, in ms from the start.
    let sent_at: Arc<Vec<AtomicU32>> = Arc::new((0..total).map(|_| AtomicU32::new(0)).collect());
    let to = SocketAddrV4::new(server, 67);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);

    // The sender paces DISCOVERs to the offered rate.
    let sender = {
        let (socket, state, sent_at) = (socket.clone(), state.clone(), sent_at.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while sent < total {
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while sent < due {
                    let bytes = request(MessageType::Discover, sent as u32, mac(sent), local, &[]);
                    state[sent as usize].store(SENT, Relaxed);
                    sent_at[sent as usize].store(start.elapsed().as_millis() as u32, Relaxed);
                    let _ = socket.send_to(&bytes, to);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        })
    };

    let (offers, acks) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut buf = [0u8; 1500];
    let grace = end + Duration::from_millis(u64::from(2 * DROP_MS));
    while Instant::now() < grace {
        let Ok((n, _)) = socket.recv_from(&mut buf) else { continue };
        let Ok(m) = Message::parse(&buf[..n]) else { continue };
        let Some(slot) = state.get(m.xid as usize) else { continue };
        let age = (start.elapsed().as_millis() as u32).saturating_sub(sent_at[m.xid as usize].load(Relaxed));
        match m.message_type() {
            Some(MessageType::Offer) if slot.load(Relaxed) == SENT && age <= DROP_MS => {
                offers.fetch_add(1, Relaxed);
                slot.store(REQUESTED, Relaxed);
                let mut extra = vec![(code::REQUESTED_IP, m.yiaddr.octets().to_vec())];
                if let Some(sid) = m.option(code::SERVER_ID) {
                    extra.push((code::SERVER_ID, sid.to_vec()));
                }
                let bytes = request(MessageType::Request, m.xid, mac(u64::from(m.xid)), local, &extra);
                let _ = socket.send_to(&bytes, to);
            }
            Some(MessageType::Ack) if slot.load(Relaxed) == REQUESTED && age <= 2 * DROP_MS => {
                slot.store(ACKED, Relaxed);
                acks.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
    let discovers = sender.join().unwrap_or(0);
    let (offers, acks) = (offers.load(Relaxed), acks.load(Relaxed));
    let lost = if discovers > 0 { 100.0 * (discovers - acks.min(discovers)) as f64 / discovers as f64 } else { 0.0 };
    println!("discovers {discovers} offers {offers} acks {acks} lost {lost:.1}% rate {:.0}", acks as f64 / secs as f64);
}

//! The server's decisions. The caller (the async shell) finds the subnet,
//! looks up what it knows about the client and the address it asks for, and
//! passes those [`Facts`] in; [`decide`] answers with a [`Decision`]. The
//! caller must make a [`LeaseWrite`] of a bound, released or declined lease
//! durable *before* sending the reply.

use crate::pxe::{BootFiles, classify};
use crate::{Message, MessageType, code};
use std::net::Ipv4Addr;

/// How long a declined address is held back before it is offered again.
pub const DECLINE_HOLD_SECS: u64 = 600;
/// How long an offer holds its address for the client.
pub const OFFER_HOLD_SECS: u64 = 60;

/// The subnet a request belongs to, with its options prepared.
#[derive(Debug, Clone)]
pub struct SubnetView<'a> {
    pub name: &'a str,
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub lease_secs: u32,
    /// Options sent to every client (router, DNS, domain, NTP, custom), in order.
    pub options: &'a [(u8, Vec<u8>)],
    pub next_server: Option<Ipv4Addr>,
    pub only_reservations: bool,
    pub boot_files: &'a BootFiles,
    /// The dynamic range, inclusive.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
}

impl SubnetView<'_> {
    fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) })
    }

    /// Whether `ip` is in the dynamic range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.range.is_some_and(|(a, b)| (u32::from(a)..=u32::from(b)).contains(&u32::from(ip)))
    }

    /// Whether `ip` belongs to this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network)
    }
}

/// A fixed assignment for this client.
#[derive(Debug, Clone)]
pub struct ReservationView<'a> {
    pub address: Ipv4Addr,
    pub hostname: Option<&'a str>,
    pub options: &'a [(u8, Vec<u8>)],
    pub next_server: Option<Ipv4Addr>,
}

/// Who holds an address, as far as the caller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Nobody: free to give to this client.
    Free,
    /// This client (an offer or an unexpired lease).
    ThisClient,
    /// Someone else, or held back (declined).
    Other,
}

/// What the caller knows when it asks for a decision.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// Our address as the client sees it (option 54).
    pub server_id: Ipv4Addr,
    /// Base URL of the boot HTTP server, e.g. `http://10.0.0.1:8091`.
    pub http_base: &'a str,
    pub reservation: Option<ReservationView<'a>>,
    /// The address this client currently holds (offer or lease) in the subnet.
    pub current: Option<Ipv4Addr>,
    /// The owner of [`requested_address`], when there is one.
    pub requested_owner: Owner,
    /// A free address from the pool, for a new offer.
    pub free: Option<Ipv4Addr>,
    /// Seconds since the Unix epoch.
    pub now: u64,
    /// Whether this client is to network-boot. `false` for a known machine
    /// whose bootenv boots from its disk: it gets an address and no boot
    /// information (and no proxyDHCP answer), so its firmware goes straight
    /// on to the next boot device.
    pub netboot: bool,
}

/// Lease states the shell records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held for an offer (memory only).
    Offered,
    /// Acknowledged (durable before the ACK is sent).
    Bound,
    Released,
    Declined,
}

/// A lease change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    pub address: Ipv4Addr,
    pub state: LeaseState,
    pub expires_at: u64,
    pub hostname: Option<String>,
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To the relay agent at `giaddr`, port 67.
    Relay(Ipv4Addr),
    /// To 255.255.255.255, port 68.
    Broadcast,
    /// To this address, port 68.
    Unicast(Ipv4Addr),
    /// To the address being given, port 68, at the client's hardware
    /// address: the client has no address yet and did not ask for
    /// broadcast, so it cannot answer ARP and the sender has to make the
    /// link-layer address known itself (RFC 2131 §4.1).
    Direct { ip: Ipv4Addr, mac: [u8; 6] },
    /// Back to the request's source address and port (proxyDHCP on 4011).
    Source,
}

/// The outcome of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Do nothing; the reason is for the log.
    Ignore(&'static str),
    /// The client chose another server's offer: drop ours.
    OtherServer,
    /// Record a lease change and send nothing (RELEASE, DECLINE).
    Record(LeaseWrite),
    /// Send `message` to `to`, after making `lease` durable.
    Reply { message: Box<Message>, to: Destination, lease: Option<LeaseWrite> },
}

/// The address a REQUEST (or DECLINE) is about: option 50, else `ciaddr`.
pub fn requested_address(m: &Message) -> Option<Ipv4Addr> {
    m.option_ip(code::REQUESTED_IP).or((!m.ciaddr.is_unspecified()).then_some(m.ciaddr))
}

/// Decides what to do with a request from a client in `subnet`.
pub fn decide(m: &Message, subnet: &SubnetView<'_>, facts: &Facts<'_>) -> Decision {
    if m.op != 1 {
        return Decision::Ignore("not a request");
    }
    let Some(kind) = m.message_type() else { return Decision::Ignore("no message type (BOOTP is not served)") };
    if facts.reservation.is_none() && subnet.only_reservations && kind != MessageType::Inform {
        return Decision::Ignore("subnet serves reserved clients only");
    }
    match kind {
        MessageType::Discover => discover(m, subnet, facts),
        MessageType::Request => request(m, subnet, facts),
        MessageType::Release => match (requested_address(m), facts.requested_owner) {
            (Some(address), Owner::ThisClient) => Decision::Record(LeaseWrite {
                address,
                state: LeaseState::Released,
                expires_at: facts.now,
                hostname: None,
            }),
            _ => Decision::Ignore("release of an address the client does not hold"),
        },
        MessageType::Decline => match (m.option_ip(code::REQUESTED_IP), facts.requested_owner) {
            (Some(address), Owner::ThisClient) => Decision::Record(LeaseWrite {
                address,
                state: LeaseState::Declined,
                expires_at: facts.now + DECLINE_HOLD_SECS,
                hostname: None,
            }),
            _ => Decision::Ignore("decline of an address the client was not given"),
        },
        // An INFORM is about the address the client holds: one outside this
        // subnet gets none of its options.
        MessageType::Inform if !subnet.contains(m.ciaddr) => {
            Decision::Ignore("INFORM for an address outside the subnet")
        }
        MessageType::Inform => {
            let mut r = build(m, MessageType::Inform, Ipv4Addr::UNSPECIFIED, subnet, facts, false);
            r.set_option(code::MESSAGE_TYPE, vec![MessageType::Ack as u8]);
            let to = destination(m, Ipv4Addr::UNSPECIFIED);
            Decision::Reply { message: Box::new(r), to, lease: None }
        }
        MessageType::Offer | MessageType::Ack | MessageType::Nak => {
            Decision::Ignore("server message sent to the server port")
        }
    }
}

fn discover(m: &Message, subnet: &SubnetView<'_>, facts: &Facts<'_>) -> Decision {
    let requested =
        m.option_ip(code::REQUESTED_IP).filter(|ip| subnet.in_range(*ip) && facts.requested_owner != Owner::Other);
    let address = facts.reservation.as_ref().map(|r| r.address).or(facts.current).or(requested).or(facts.free);
    let Some(address) = address else { return Decision::Ignore("no free address in the subnet") };
    let message = build(m, MessageType::Offer, address, subnet, facts, true);
    let to = destination(m, address);
    let lease = LeaseWrite {
        address,
        state: LeaseState::Offered,
        expires_at: facts.now + OFFER_HOLD_SECS,
        hostname: hostname(m),
    };
    Decision::Reply { message: Box::new(message), to, lease: Some(lease) }
}

fn request(m: &Message, subnet: &SubnetView<'_>, facts: &Facts<'_>) -> Decision {
    if let Some(sid) = m.option_ip(code::SERVER_ID)
        && sid != facts.server_id
    {
        return Decision::OtherServer;
    }
    let selecting = m.option_ip(code::SERVER_ID).is_some();
    let Some(address) = requested_address(m) else { return Decision::Ignore("request names no address") };
    let reserved = facts.reservation.as_ref().map(|r| r.address);
    let acceptable = match reserved {
        Some(r) => r == address,
        None => {
            facts.requested_owner == Owner::ThisClient
                || (facts.requested_owner == Owner::Free && subnet.in_range(address))
        }
    };
    if !subnet.contains(address) {
        // INIT-REBOOT on the wrong network must be told; a rebinding
        // client may be talking to another server's network.
        return if selecting || m.ciaddr.is_unspecified() {
            nak(m, facts, "address not on this network")
        } else {
            Decision::Ignore("renewal for another network")
        };
    }
    if !acceptable {
        if !selecting && m.ciaddr.is_unspecified() && facts.requested_owner == Owner::Free && reserved.is_none() {
            return Decision::Ignore("init-reboot for an address outside the range: not ours to judge");
        }
        return nak(m, facts, "address not available to this client");
    }
    let message = build(m, MessageType::Ack, address, subnet, facts, true);
    let to = destination(m, address);
    let lease = LeaseWrite {
        address,
        state: LeaseState::Bound,
        expires_at: facts.now + u64::from(subnet.lease_secs),
        hostname: hostname(m),
    };
    Decision::Reply { message: Box::new(message), to, lease: Some(lease) }
}

fn hostname(m: &Message) -> Option<String> {
    m.option(code::HOSTNAME)
        .map(|h| String::from_utf8_lossy(h).chars().filter(|c| c.is_ascii_graphic()).take(63).collect())
}

fn nak(m: &Message, facts: &Facts<'_>, why: &str) -> Decision {
    let mut r = m.reply(MessageType::Nak);
    r.set_option(code::SERVER_ID, facts.server_id.octets().to_vec());
    r.set_option(code::MESSAGE, why.as_bytes().to_vec());
    if let Some(ra) = m.option(code::RELAY_AGENT) {
        r.set_option(code::RELAY_AGENT, ra.to_vec());
    }
    let to = if m.giaddr.is_unspecified() {
        Destination::Broadcast
    } else {
        // Relays must broadcast a NAK to the client (RFC 2131 §4.3.2).
        r.flags |= 0x8000;
        Destination::Relay(m.giaddr)
    };
    Decision::Reply { message: Box::new(r), to, lease: None }
}

/// RFC 2131 §4.1: relay first; then a client with an address; then the
/// broadcast bit; else unicast to the address being given (`yiaddr`) at
/// the client's Ethernet address. A client with no Ethernet address or
/// nothing being given gets a broadcast.
fn destination(req: &Message, yiaddr: Ipv4Addr) -> Destination {
    if !req.giaddr.is_unspecified() {
        Destination::Relay(req.giaddr)
    } else if !req.ciaddr.is_unspecified() {
        Destination::Unicast(req.ciaddr)
    } else if req.broadcast_flag() || yiaddr.is_unspecified() {
        Destination::Broadcast
    } else {
        match req.mac() {
            Some(mac) => Destination::Direct { ip: yiaddr, mac },
            None => Destination::Broadcast,
        }
    }
}

fn build(
    m: &Message,
    kind: MessageType,
    yiaddr: Ipv4Addr,
    subnet: &SubnetView<'_>,
    facts: &Facts<'_>,
    with_lease: bool,
) -> Message {
    let mut r = m.reply(kind);
    r.yiaddr = yiaddr;
    if kind == MessageType::Inform {
        r.ciaddr = m.ciaddr;
    }
    r.set_option(code::SERVER_ID, facts.server_id.octets().to_vec());
    if with_lease {
        let t = subnet.lease_secs;
        r.set_option(code::LEASE_TIME, t.to_be_bytes().to_vec());
        r.set_option(code::RENEWAL_TIME, (t / 2).to_be_bytes().to_vec());
        r.set_option(code::REBINDING_TIME, (t / 8 * 7).to_be_bytes().to_vec());
    }
    r.set_option(code::SUBNET_MASK, subnet.mask().octets().to_vec());
    for (c, v) in subnet.options {
        r.set_option(*c, v.clone());
    }
    let reservation = facts.reservation.as_ref();
    if let Some(res) = reservation {
        for (c, v) in res.options {
            r.set_option(*c, v.clone());
        }
        if let Some(h) = res.hostname {
            r.set_option(code::HOSTNAME, h.as_bytes().to_vec());
        }
    }
    let next_server = reservation.and_then(|x| x.next_server).or(subnet.next_server).unwrap_or(facts.server_id);
    if facts.netboot {
        add_boot(&mut r, m, subnet, facts, next_server, false);
    }
    if let Some(ra) = m.option(code::RELAY_AGENT) {
        r.set_option(code::RELAY_AGENT, ra.to_vec());
    }
    r
}

/// Puts the boot file for `m`'s client into `r`. Returns whether there was
/// one. `always_vendor` marks the reply as a PXE one even for clients that
/// did not say PXEClient (proxyDHCP replies must).
fn add_boot(
    r: &mut Message,
    m: &Message,
    subnet: &SubnetView<'_>,
    facts: &Facts<'_>,
    next_server: Ipv4Addr,
    always_vendor: bool,
) -> bool {
    let client = classify(m);
    let mac = m.mac().map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join("-")).unwrap_or_default();
    let Some(file) = subnet.boot_files.choose(&client, facts.http_base, &facts.server_id.to_string(), &mac) else {
        return false;
    };
    r.siaddr = next_server;
    if file.len() < 128 {
        r.file = file.as_bytes().to_vec();
    }
    r.set_option(code::BOOTFILE, file.into_bytes());
    if client.firmware.is_some_and(|f| f.is_http()) {
        r.set_option(code::VENDOR_CLASS, b"HTTPClient".to_vec());
    } else if client.pxe || always_vendor {
        r.set_option(code::VENDOR_CLASS, b"PXEClient".to_vec());
        // PXE discovery control: use the boot file in this reply.
        r.set_option(code::VENDOR_SPECIFIC, vec![6, 1, 8, 255]);
    }
    if let Some(uuid) = &client.uuid {
        r.set_option(code::CLIENT_UUID, uuid.clone());
    }
    true
}

/// proxyDHCP (PXE 2.1): next to another DHCP server, answer PXE and iPXE
/// clients with boot information only, never an address. DISCOVERs on port
/// 67 get a proxy offer (broadcast); REQUESTs to the boot server port 4011
/// get an ACK sent back to their source.
pub fn decide_proxy(m: &Message, subnet: &SubnetView<'_>, facts: &Facts<'_>, boot_server_port: bool) -> Decision {
    if m.op != 1 {
        return Decision::Ignore("not a request");
    }
    let client = classify(m);
    if client.firmware.is_none() && !client.ipxe {
        return Decision::Ignore("not a network-boot client; the other DHCP server serves it");
    }
    if !facts.netboot {
        return Decision::Ignore("the machine boots from its disk (its bootenv does not network-boot)");
    }
    let kind = match (m.message_type(), boot_server_port) {
        (Some(MessageType::Discover), false) => MessageType::Offer,
        (Some(MessageType::Request), true) => MessageType::Ack,
        (Some(MessageType::Request), false) => return Decision::Ignore("address request: for the other DHCP server"),
        _ => return Decision::Ignore("not a proxyDHCP exchange"),
    };
    let mut r = m.reply(kind);
    r.set_option(code::SERVER_ID, facts.server_id.octets().to_vec());
    let next_server = subnet.next_server.unwrap_or(facts.server_id);
    if !add_boot(&mut r, m, subnet, facts, next_server, true) {
        return Decision::Ignore("no boot file for this kind of client");
    }
    let to = if boot_server_port {
        Destination::Source
    } else if !m.giaddr.is_unspecified() {
        Destination::Relay(m.giaddr)
    } else {
        Destination::Broadcast
    };
    Decision::Reply { message: Box::new(r), to, lease: None }
}

#[cfg(test)]
mod tests;

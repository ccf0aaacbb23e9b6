//! The server's memory, sans-I/O: subnets, reservations, leases, offers and
//! address pools, and the rules that use them — which subnet a request is
//! for (and whether its relay is trusted), who a client is, who holds an
//! address, the starvation guards and the unknown-client share.
//!
//! The caller feeds it each parsed request with the time and what it knows
//! of machines ([`Machines`]); [`Index::handle`] answers with an [`Outcome`]
//! and updates the index at once, so the next request sees the offer or
//! lease just made. A [`LeaseChange`] in an outcome must be made durable
//! before its reply is sent; once stored, [`Index::committed`] records the
//! store's revision, which is the precondition of the next write to that
//! address ([`Index::revision`]).
//!
//! Every lookup on the request path is a hash or bitmap lookup: nothing
//! scans the leases or the offers per packet.

use crate::pxe::BootFiles;
use crate::server::{self, Decision, Destination, Facts, LeaseState, LeaseWrite, Owner, ReservationView, SubnetView};
use crate::{Message, MessageType, Pool, code};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;

/// Who a client is: `[1, MAC…]` (hardware type and address) or its client
/// identifier (option 61) on subnets that match by it.
pub type ClientKey = Box<[u8]>;

/// The PXE boot server port (proxyDHCP requests).
pub const BOOT_SERVER_PORT: u16 = 4011;

/// A subnet as the index serves it.
#[derive(Debug, Clone)]
pub struct SubnetConfig {
    pub name: String,
    pub network: Ipv4Addr,
    pub prefix: u8,
    /// The interface whose direct (unrelayed) requests are this subnet's.
    pub interface: Option<String>,
    /// proxyDHCP: boot information only, never an address.
    pub proxy: bool,
    /// The dynamic range, inclusive.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_secs: u32,
    /// Options for every client, in order.
    pub options: Vec<(u8, Vec<u8>)>,
    pub next_server: Option<Ipv4Addr>,
    pub only_reservations: bool,
    pub boot_files: BootFiles,
    /// Relay agents trusted to speak for this subnet, by source address.
    pub relays: Vec<Ipv4Addr>,
    pub match_client_id: bool,
    /// Percent of the range clients no machine or reservation knows may hold.
    pub unknown_share: u8,
    /// At most this many addresses held by offers not yet requested; a new
    /// offer beyond it withdraws the oldest (0: no limit).
    pub max_pending_offers: u32,
    /// At most this many new clients offered per minute (0: no limit).
    pub new_clients_per_minute: u32,
}

impl SubnetConfig {
    fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix.min(32)) }
    }

    /// Whether `ip` belongs to this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network) & self.mask()
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    fn range_size(&self) -> u64 {
        match self.range {
            Some((a, b)) => u64::from(u32::from(b).saturating_sub(u32::from(a))) + 1,
            None => 0,
        }
    }
}

/// A fixed address for one MAC.
#[derive(Debug, Clone)]
pub struct ReservationConfig {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub hostname: Option<String>,
    pub options: Vec<(u8, Vec<u8>)>,
    pub next_server: Option<Ipv4Addr>,
}

/// A lease as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredLease {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    pub client_id: Option<Vec<u8>>,
    pub subnet: String,
    /// `Bound`, `Released` or `Declined`.
    pub state: LeaseState,
    pub expires_at: u64,
    pub revision: u64,
}

/// What the index needs to know of machines, kept by the caller.
pub trait Machines {
    /// Whether a machine has this MAC.
    fn known(&self, mac: [u8; 6]) -> bool;
    /// Whether the client with this MAC is to network-boot (a known
    /// machine whose bootenv boots from disk is not).
    fn netboot(&self, mac: Option<[u8; 6]>) -> bool;
}

/// One received request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub message: &'a Message,
    /// The interface it arrived on.
    pub interface: &'a str,
    /// Its source address (for relay trust); `None` when not IPv4.
    pub source: Option<Ipv4Addr>,
    /// Whether it arrived on the PXE boot server port ([`BOOT_SERVER_PORT`]).
    pub boot_port: bool,
    /// Our address on that interface (option 54).
    pub server_id: Ipv4Addr,
    /// The boot HTTP base URL as clients there reach it.
    pub http_base: &'a str,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// A lease change to make durable, with everything the stored lease holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseChange {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    pub client_id: Option<Vec<u8>>,
    pub subnet: String,
    /// `Bound`, `Released` or `Declined`.
    pub state: LeaseState,
    pub expires_at: u64,
    pub hostname: Option<String>,
    /// Option 93.
    pub client_arch: Option<u16>,
    /// Option 82, as received.
    pub relay_info: Option<Vec<u8>>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing; why, for a debug log.
    Ignored(&'static str),
    /// Not answered, on purpose: the boot log says why. `from` is the
    /// address to record it under (a refused relay's).
    Refused { why: String, from: Option<Ipv4Addr> },
    /// A new client not answered by a starvation guard (counted, not logged
    /// per packet: under a flood that log would be the flood).
    Starved(&'static str),
    /// The client took another server's offer; ours is withdrawn.
    OtherServer,
    /// Record this change and send nothing (RELEASE, DECLINE).
    Record { change: LeaseChange, event: String },
    /// Send `message` to `to`, once `change` (if any) is durable.
    Reply { message: Box<Message>, to: Destination, change: Option<LeaseChange>, event: String },
}

#[derive(Debug, Clone)]
struct LeaseRec {
    client: ClientKey,
    mac: [u8; 6],
    state: LeaseState,
    expires_at: u64,
    /// The store's revision; `None` until first stored.
    revision: Option<u64>,
}

#[derive(Debug, Clone)]
struct Offer {
    client: ClientKey,
    expires_at: u64,
    subnet: usize,
}

#[derive(Debug)]
struct SubnetState {
    config: SubnetConfig,
    pool: Pool,
    /// Live offers in this subnet (for `max_pending_offers`).
    pending: usize,
    /// This subnet's offers in the order they expire (all are held
    /// equally long), some perhaps already taken or withdrawn.
    offer_expiry: VecDeque<(u64, Ipv4Addr)>,
    /// When new clients were offered an address in the last minute.
    new_clients: VecDeque<u64>,
    /// Addresses offered or leased to clients nobody knows.
    unknown: HashSet<Ipv4Addr>,
    /// When `unknown` was last pruned of what ended (at most once a second).
    unknown_pruned: u64,
}

impl SubnetState {
    fn view(&self) -> SubnetView<'_> {
        let s = &self.config;
        SubnetView {
            name: &s.name,
            network: s.network,
            prefix: s.prefix,
            lease_secs: s.lease_secs,
            options: &s.options,
            next_server: s.next_server,
            only_reservations: s.only_reservations && !s.proxy,
            boot_files: &s.boot_files,
            range: if s.proxy { None } else { s.range },
        }
    }
}

/// The in-memory state of a DHCPv4 server. See the module documentation.
#[derive(Debug, Default)]
pub struct Index {
    subnets: Vec<SubnetState>,
    reservations: HashMap<[u8; 6], ReservationConfig>,
    reserved: HashMap<Ipv4Addr, [u8; 6]>,
    leases: HashMap<Ipv4Addr, LeaseRec>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    offers: HashMap<Ipv4Addr, Offer>,
    offer_of: HashMap<ClientKey, Ipv4Addr>,
}

/// Who sent `m`. By default its hardware address (Ethernet, six bytes:
/// anything else is refused); with `match_client_id`, its client identifier
/// when it sends one, unless that names another hardware address than the
/// packet's.
pub fn client_key(m: &Message, match_client_id: bool) -> Result<ClientKey, &'static str> {
    let Some(mac) = m.mac() else {
        return Err("a hardware type or address length Plinth does not serve (Ethernet, six bytes)");
    };
    let hw = || {
        let mut k = vec![1];
        k.extend_from_slice(&mac);
        k.into_boxed_slice()
    };
    if !match_client_id {
        return Ok(hw());
    }
    match m.option(code::CLIENT_ID) {
        Some([1, named @ ..]) if named.len() == 6 && named != mac => {
            Err("a client identifier that names another hardware address than the packet's")
        }
        Some(id) if !id.is_empty() => Ok(id.into()),
        _ => Ok(hw()),
    }
}

/// The client a stored lease is for, by the rule of [`client_key`].
fn key_of_lease(l: &StoredLease, match_client_id: bool) -> ClientKey {
    match &l.client_id {
        Some(id) if match_client_id && !id.is_empty() => id.clone().into_boxed_slice(),
        _ => {
            let mut k = vec![1];
            k.extend_from_slice(&l.mac);
            k.into_boxed_slice()
        }
    }
}

impl Index {
    /// An index of these subnets (disabled ones left out by the caller),
    /// reservations and stored leases. Offers of the index this replaces
    /// can be carried over with [`Index::reload`].
    pub fn new(
        subnets: Vec<SubnetConfig>,
        reservations: Vec<ReservationConfig>,
        leases: Vec<StoredLease>,
        machines: &impl Machines,
        now: u64,
    ) -> Index {
        let mut ix = Index::default();
        ix.load(subnets, reservations, leases, machines, now);
        ix
    }

    /// Rebuilds from the store's current content, keeping live offers.
    pub fn reload(
        &mut self,
        subnets: Vec<SubnetConfig>,
        reservations: Vec<ReservationConfig>,
        leases: Vec<StoredLease>,
        machines: &impl Machines,
        now: u64,
    ) {
        self.load(subnets, reservations, leases, machines, now);
    }

    fn load(
        &mut self,
        subnets: Vec<SubnetConfig>,
        reservations: Vec<ReservationConfig>,
        leases: Vec<StoredLease>,
        machines: &impl Machines,
        now: u64,
    ) {
        self.reservations.clear();
        self.reserved.clear();
        for r in reservations {
            self.reserved.insert(r.address, r.mac);
            self.reservations.insert(r.mac, r);
        }
        self.leases.clear();
        self.by_client.clear();
        let by_client_id: HashSet<&str> =
            subnets.iter().filter(|s| s.match_client_id).map(|s| s.name.as_str()).collect();
        let mut unknown = Vec::new();
        for l in leases {
            let client = key_of_lease(&l, by_client_id.contains(l.subnet.as_str()));
            if !self.known(machines, Some(l.mac)) {
                unknown.push(l.address);
            }
            self.by_client.insert(client.clone(), l.address);
            self.leases.insert(
                l.address,
                LeaseRec { client, mac: l.mac, state: l.state, expires_at: l.expires_at, revision: Some(l.revision) },
            );
        }
        self.subnets = subnets
            .into_iter()
            .map(|config| {
                let mut pool = match config.range {
                    Some((a, b)) if !config.proxy => Pool::new(a, b),
                    _ => Pool::new(Ipv4Addr::new(0, 0, 0, 1), Ipv4Addr::UNSPECIFIED),
                };
                pool.take(config.network);
                pool.take(config.broadcast());
                let unknown = unknown.iter().copied().filter(|ip| config.contains(*ip)).collect();
                SubnetState {
                    config,
                    pool,
                    pending: 0,
                    offer_expiry: VecDeque::new(),
                    new_clients: VecDeque::new(),
                    unknown,
                    unknown_pruned: 0,
                }
            })
            .collect();
        // Offers carry over, re-attached to their subnet (or dropped with it).
        let offers = std::mem::take(&mut self.offers);
        self.offer_of.clear();
        for (ip, mut o) in offers {
            if o.expires_at <= now {
                continue;
            }
            let Some(si) = self.subnets.iter().position(|s| s.config.contains(ip)) else { continue };
            o.subnet = si;
            self.subnets[si].pending += 1;
            self.subnets[si].offer_expiry.push_back((o.expires_at, ip));
            self.offer_of.insert(o.client.clone(), ip);
            self.offers.insert(ip, o);
        }
        for s in &mut self.subnets {
            s.offer_expiry.make_contiguous().sort_unstable();
        }
        let held: Vec<Ipv4Addr> = self
            .leases
            .keys()
            .chain(self.offers.keys())
            .chain(self.reserved.keys())
            .copied()
            .filter(|ip| self.held(*ip, now))
            .collect();
        for s in &mut self.subnets {
            for ip in &held {
                s.pool.take(*ip);
            }
        }
    }

    /// The subnets served, in order.
    pub fn subnets(&self) -> impl Iterator<Item = &SubnetConfig> {
        self.subnets.iter().map(|s| &s.config)
    }

    /// Leases indexed (for logs).
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// The precondition of the next write to `address`: the revision the
    /// store last reported, or `None` when it holds no lease there.
    pub fn revision(&self, address: Ipv4Addr) -> Option<u64> {
        self.leases.get(&address).and_then(|l| l.revision)
    }

    /// Records that the lease at `address` is stored at `revision`.
    pub fn committed(&mut self, address: Ipv4Addr, revision: u64) {
        if let Some(l) = self.leases.get_mut(&address) {
            l.revision = Some(revision);
        }
    }

    fn known(&self, machines: &impl Machines, mac: Option<[u8; 6]>) -> bool {
        mac.is_some_and(|m| machines.known(m) || self.reservations.contains_key(&m))
    }

    fn held(&self, ip: Ipv4Addr, now: u64) -> bool {
        let leased = self
            .leases
            .get(&ip)
            .is_some_and(|l| l.expires_at > now && matches!(l.state, LeaseState::Bound | LeaseState::Declined));
        leased || self.offers.get(&ip).is_some_and(|o| o.expires_at > now) || self.reserved.contains_key(&ip)
    }

    fn owner(&self, ip: Ipv4Addr, client: &[u8], mac: Option<[u8; 6]>, now: u64) -> Owner {
        let mine = |yes: bool| if yes { Owner::ThisClient } else { Owner::Other };
        if let Some(holder) = self.reserved.get(&ip) {
            return mine(Some(*holder) == mac);
        }
        if let Some(o) = self.offers.get(&ip)
            && o.expires_at > now
        {
            return mine(&*o.client == client);
        }
        match self.leases.get(&ip) {
            Some(l) if l.expires_at > now && matches!(l.state, LeaseState::Bound | LeaseState::Declined) => {
                mine(&*l.client == client)
            }
            _ => Owner::Free,
        }
    }

    /// Drops offers that have expired and gives their addresses back.
    fn expire_offers(&mut self, now: u64) {
        for si in 0..self.subnets.len() {
            while let Some(&(at, _)) = self.subnets[si].offer_expiry.front() {
                if at > now {
                    break;
                }
                self.withdraw_oldest(si, now);
            }
        }
    }

    /// Withdraws subnet `si`'s oldest live offer (skipping entries of offers
    /// already taken or withdrawn) and gives its address back.
    fn withdraw_oldest(&mut self, si: usize, now: u64) {
        while let Some((at, ip)) = self.subnets[si].offer_expiry.pop_front() {
            if self.offers.get(&ip).is_some_and(|o| o.expires_at == at) {
                self.withdraw(ip);
                if !self.held(ip, now) {
                    self.free(ip);
                }
                return;
            }
        }
    }

    /// Removes the offer of `ip`, if any.
    fn withdraw(&mut self, ip: Ipv4Addr) -> Option<Offer> {
        let o = self.offers.remove(&ip)?;
        if let Some(s) = self.subnets.get_mut(o.subnet) {
            s.pending = s.pending.saturating_sub(1);
        }
        if self.offer_of.get(&o.client) == Some(&ip) {
            self.offer_of.remove(&o.client);
        }
        Some(o)
    }

    fn free(&mut self, ip: Ipv4Addr) {
        for s in &mut self.subnets {
            s.pool.free(ip);
        }
    }

    fn take(&mut self, ip: Ipv4Addr) {
        for s in &mut self.subnets {
            s.pool.take(ip);
        }
    }

    /// Gives expired leases' and offers' addresses back to the pools (the
    /// lease records stay, so a returning client gets its old address while
    /// nobody else took it). Call now and then (every few seconds).
    pub fn sweep(&mut self, now: u64) {
        self.expire_offers(now);
        let ended: Vec<Ipv4Addr> = self.leases.iter().filter(|(_, l)| l.expires_at <= now).map(|(ip, _)| *ip).collect();
        for ip in ended {
            if !self.held(ip, now) {
                self.free(ip);
            }
        }
    }

    /// The subnet a request is for: a relayed one's by its `giaddr`, but
    /// only from a relay that subnet trusts (anyone can write a `giaddr`);
    /// a direct one's by the interface it came in on.
    fn subnet_for(&self, req: &Request<'_>) -> Result<usize, Box<Outcome>> {
        let m = req.message;
        let direct = self.subnets.iter().position(|s| s.config.interface.as_deref() == Some(req.interface));
        if m.giaddr.is_unspecified() {
            return direct.ok_or(Box::new(Outcome::Ignored("no subnet for this interface")));
        }
        // A relay on the interface's own segment asks for what a direct
        // client would get: nothing another subnet has.
        if let Some(d) = direct
            && self.subnets[d].config.contains(m.giaddr)
        {
            return Ok(d);
        }
        let si = self
            .subnets
            .iter()
            .position(|s| s.config.contains(m.giaddr))
            .ok_or(Box::new(Outcome::Ignored("no subnet for the relay's giaddr")))?;
        let Some(sender) = req.source else { return Err(Box::new(Outcome::Ignored("relayed request not over IPv4"))) };
        if !self.subnets[si].config.relays.contains(&sender) {
            let why = format!(
                "relayed request (giaddr {}) from {sender} on {} refused: {sender} is not a relay subnet `{}` trusts",
                m.giaddr, req.interface, self.subnets[si].config.name
            );
            return Err(Box::new(Outcome::Refused { why, from: Some(sender) }));
        }
        Ok(si)
    }

    /// Why subnet `si` takes no new client now, or `None` when it does (and
    /// then the client counts against the rate).
    fn starved(&mut self, si: usize, now: u64) -> Option<&'static str> {
        let s = &mut self.subnets[si];
        let rate = s.config.new_clients_per_minute as usize;
        if rate > 0 {
            while s.new_clients.front().is_some_and(|t| *t + 60 <= now) {
                s.new_clients.pop_front();
            }
            if s.new_clients.len() >= rate {
                return Some("new_clients_per_minute reached (possible starvation attempt)");
            }
            s.new_clients.push_back(now);
        }
        None
    }

    /// Whether unknown clients hold their share of subnet `si`'s range.
    fn unknown_full(&mut self, si: usize, machines: &impl Machines, now: u64) -> bool {
        let share = u64::from(self.subnets[si].config.unknown_share);
        if share >= 100 {
            return false;
        }
        let cap = (self.subnets[si].config.range_size() * share / 100) as usize;
        if self.subnets[si].unknown.len() >= cap && self.subnets[si].unknown_pruned < now {
            // Drop what has ended, or become a known machine's, since.
            let unknown = std::mem::take(&mut self.subnets[si].unknown);
            let live = unknown
                .into_iter()
                .filter(|ip| {
                    let offered = self.offers.get(ip).is_some_and(|o| o.expires_at > now);
                    let leased = self.leases.get(ip).is_some_and(|l| {
                        l.expires_at > now && l.state == LeaseState::Bound && !self.known(machines, Some(l.mac))
                    });
                    offered || leased
                })
                .collect();
            let s = &mut self.subnets[si];
            s.unknown = live;
            s.unknown_pruned = now;
        }
        self.subnets[si].unknown.len() >= cap
    }

    fn next_free(&mut self, si: usize, now: u64) -> Option<Ipv4Addr> {
        // The pool may still mark as free an address whose holder it has not
        // heard of; it never hands out one that is held.
        for _ in 0..64 {
            let ip = self.subnets[si].pool.next_free()?;
            self.subnets[si].pool.take(ip);
            if !self.held(ip, now) {
                return Some(ip);
            }
        }
        None
    }

    /// Decides what to do with `req` and updates the index for it.
    pub fn handle(&mut self, req: &Request<'_>, machines: &impl Machines) -> Outcome {
        let m = req.message;
        let now = req.now;
        self.expire_offers(now);
        let si = match self.subnet_for(req) {
            Ok(si) => si,
            Err(o) => return *o,
        };
        if self.subnets[si].config.proxy {
            return self.proxy(req, si, machines);
        }
        if req.boot_port {
            return Outcome::Ignored("boot server port request on a subnet that is not proxyDHCP");
        }
        let client = match client_key(m, self.subnets[si].config.match_client_id) {
            Ok(c) => c,
            Err(why) => return Outcome::Refused { why: format!("{:?} refused: {why}", m.message_type()), from: None },
        };
        let mac = m.mac();
        let kind = m.message_type();
        let requested_owner = server::requested_address(m).map_or(Owner::Free, |ip| self.owner(ip, &client, mac, now));
        let current = {
            let s = &self.subnets[si].config;
            self.by_client
                .get(&client)
                .copied()
                .filter(|ip| s.contains(*ip) && self.owner(*ip, &client, mac, now) != Owner::Other)
                .or_else(|| {
                    self.offer_of
                        .get(&client)
                        .copied()
                        .filter(|ip| self.offers.get(ip).is_some_and(|o| o.expires_at > now))
                })
        };
        let has_reservation = mac.is_some_and(|m| self.reservations.contains_key(&m));
        let new_client = kind == Some(MessageType::Discover) && !has_reservation && current.is_none();
        if new_client && let Some(why) = self.starved(si, now) {
            return Outcome::Starved(why);
        }
        let unknown = !self.known(machines, mac);
        if new_client && unknown && self.unknown_full(si, machines, now) {
            let s = &self.subnets[si].config;
            let why = format!(
                "DISCOVER not answered: clients Plinth does not know hold their share ({} %) of subnet `{}`",
                s.unknown_share, s.name
            );
            return Outcome::Refused { why, from: None };
        }
        let free = if new_client { self.next_free(si, now) } else { None };
        let decision = {
            let s = &self.subnets[si];
            let reservation = mac.and_then(|m| self.reservations.get(&m));
            let facts = Facts {
                server_id: req.server_id,
                http_base: req.http_base,
                reservation: reservation.map(|r| ReservationView {
                    address: r.address,
                    hostname: r.hostname.as_deref(),
                    options: &r.options,
                    next_server: r.next_server,
                }),
                current,
                requested_owner,
                free,
                now,
                netboot: machines.netboot(mac),
            };
            server::decide(m, &s.view(), &facts)
        };
        if let Some(f) = free
            && !matches!(&decision, Decision::Reply { lease: Some(LeaseWrite { address, .. }), .. } if *address == f)
        {
            // Not used after all.
            self.subnets[si].pool.free(f);
        }
        match decision {
            Decision::Ignore(why) => Outcome::Ignored(why),
            Decision::OtherServer => {
                if let Some(ip) = self.offer_of.get(&client).copied() {
                    self.withdraw(ip);
                    if !self.held(ip, now) {
                        self.free(ip);
                    }
                }
                Outcome::OtherServer
            }
            Decision::Record(w) => {
                let event = format!("{kind:?} {} ({:?})", w.address, w.state);
                Outcome::Record { change: self.stage(si, &w, m, client, now), event }
            }
            Decision::Reply { message, to, lease } => {
                let mut change = None;
                if let Some(w) = &lease {
                    if unknown {
                        self.subnets[si].unknown.insert(w.address);
                    }
                    if w.state == LeaseState::Offered {
                        self.offer(si, w.address, client, w.expires_at);
                    } else {
                        change = Some(self.stage(si, w, m, client, now));
                    }
                }
                let file = String::from_utf8_lossy(&message.file);
                let event = format!(
                    "{kind:?} -> {:?} {} subnet {}{}",
                    message.message_type(),
                    message.yiaddr,
                    self.subnets[si].config.name,
                    if file.is_empty() { String::new() } else { format!(" file {file}") }
                );
                Outcome::Reply { message, to, change, event }
            }
        }
    }

    fn offer(&mut self, si: usize, ip: Ipv4Addr, client: ClientKey, expires_at: u64) {
        if let Some(old) = self.offer_of.get(&client).copied()
            && old != ip
        {
            self.withdraw(old);
        }
        self.withdraw(ip);
        self.offer_of.insert(client.clone(), ip);
        self.offers.insert(ip, Offer { client, expires_at, subnet: si });
        let s = &mut self.subnets[si];
        s.pending += 1;
        s.offer_expiry.push_back((expires_at, ip));
        s.pool.take(ip);
        // Offers not taken hold at most `max_pending_offers` addresses: a
        // flood of DISCOVERs that never REQUEST recycles the same few
        // instead of draining the range, and no client is refused for it.
        let cap = s.config.max_pending_offers as usize;
        if cap > 0 && s.pending > cap {
            self.withdraw_oldest(si, expires_at.saturating_sub(server::OFFER_HOLD_SECS));
        }
    }

    /// Records a lease change in the index and returns it for the store.
    fn stage(&mut self, si: usize, w: &LeaseWrite, m: &Message, client: ClientKey, now: u64) -> LeaseChange {
        let state = match w.state {
            LeaseState::Offered | LeaseState::Bound => LeaseState::Bound,
            s => s,
        };
        let mac = m.mac().unwrap_or_default();
        self.withdraw(w.address);
        if let Some(old) = self.offer_of.get(&client).copied() {
            self.withdraw(old);
            if !self.held(old, now) {
                self.free(old);
            }
        }
        if let Some(old) = self.by_client.get(&client).copied()
            && old != w.address
        {
            self.free(old);
        }
        self.by_client.insert(client.clone(), w.address);
        let revision = self.leases.get(&w.address).and_then(|l| l.revision);
        self.leases.insert(w.address, LeaseRec { client, mac, state, expires_at: w.expires_at, revision });
        if state == LeaseState::Released {
            self.free(w.address);
        } else {
            self.take(w.address);
        }
        LeaseChange {
            address: w.address,
            mac,
            client_id: m.option(code::CLIENT_ID).map(<[u8]>::to_vec),
            subnet: self.subnets[si].config.name.clone(),
            state,
            expires_at: w.expires_at,
            hostname: w.hostname.clone(),
            client_arch: m.option(code::CLIENT_ARCH).filter(|v| v.len() >= 2).map(|v| u16::from_be_bytes([v[0], v[1]])),
            relay_info: m.option(code::RELAY_AGENT).map(<[u8]>::to_vec),
        }
    }

    fn proxy(&self, req: &Request<'_>, si: usize, machines: &impl Machines) -> Outcome {
        let m = req.message;
        let s = &self.subnets[si];
        let facts = Facts {
            server_id: req.server_id,
            http_base: req.http_base,
            reservation: None,
            current: None,
            requested_owner: Owner::Other,
            free: None,
            now: req.now,
            netboot: machines.netboot(m.mac()),
        };
        match server::decide_proxy(m, &s.view(), &facts, req.boot_port) {
            Decision::Reply { message, to, .. } => {
                let event = format!(
                    "proxy {:?} -> {:?} file {}",
                    m.message_type(),
                    message.message_type(),
                    String::from_utf8_lossy(&message.file)
                );
                Outcome::Reply { message, to, change: None, event }
            }
            Decision::Ignore(why) => Outcome::Ignored(why),
            _ => Outcome::Ignored("not a proxyDHCP exchange"),
        }
    }
}

#[cfg(test)]
mod tests;

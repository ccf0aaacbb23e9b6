//! The DHCP listener around `plinth_dhcp`'s core.
//!
//! Subnets, reservations and leases come from the store and are kept current
//! through its change events. Plinth answers only on the interfaces that an
//! enabled subnet names (`Subnet.interface`), each through its own socket
//! bound to that device, so no other interface ever sees an answer; relayed
//! requests arriving on those interfaces are matched to a subnet by
//! `giaddr`. With no subnet configured, nothing is opened and nothing is
//! handed out.
//!
//! Requests are handled one at a time by one task, which owns the in-memory
//! index (pools, leases by address and by client, offers): allocation never
//! races within a server, and across servers the store's per-object
//! revision preconditions decide. A bound lease is written to the store
//! before its ACK is sent.

use plinth_dhcp::pxe::BootFiles;
use plinth_dhcp::server::{
    self, Decision, Destination, Facts, LeaseState, LeaseWrite, Owner, ReservationView, SubnetView,
};
use plinth_dhcp::{Message, MessageType, Pool, code};
use plinth_model::{Kind, Lease, Reservation, Subnet};
use plinth_store::{Expect, Store, StoreExt};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// DHCP listener settings.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Server port (67).
    pub server_port: u16,
    /// Client port (68).
    pub client_port: u16,
    /// Port of the boot HTTP server, for boot URLs.
    pub http_port: u16,
    /// The boot HTTP server's URL as machines reach it (`--boot-url`); else
    /// `http://<the interface's address>:<http_port>`.
    pub http_url: Option<String>,
    /// Queue of received packets; beyond it packets are dropped.
    pub queue: usize,
}

impl Default for DhcpConfig {
    fn default() -> DhcpConfig {
        DhcpConfig { server_port: 67, client_port: 68, http_port: 8091, http_url: None, queue: 4096 }
    }
}

impl DhcpConfig {
    /// The boot HTTP base URL for a client reaching us at `server_id`.
    fn http_base(&self, server_id: Ipv4Addr) -> String {
        self.http_url.clone().unwrap_or_else(|| format!("http://{server_id}:{}", self.http_port))
    }
}

type ClientKey = Vec<u8>;

struct SubnetState {
    subnet: Subnet,
    pool: Pool,
    options: Vec<(u8, Vec<u8>)>,
    boot: BootFiles,
    /// When new clients were last offered an address (the last minute's).
    new_clients: std::collections::VecDeque<i64>,
    /// Addresses offered or leased to clients Plinth does not know, which
    /// may hold at most the subnet's `unknown_share` of the range.
    unknown: std::collections::HashSet<Ipv4Addr>,
}

impl SubnetState {
    /// The core's view of this subnet.
    fn view(&self) -> SubnetView<'_> {
        let s = &self.subnet;
        SubnetView {
            name: s.name.as_str(),
            network: s.cidr.addr,
            prefix: s.cidr.prefix,
            lease_secs: s.lease_secs,
            options: &self.options,
            next_server: s.next_server,
            only_reservations: s.only_reservations && !s.proxy,
            boot_files: &self.boot,
            range: if s.proxy { None } else { s.range_start.zip(s.range_end) },
        }
    }
}

#[derive(Debug, Clone)]
struct LeaseRec {
    client: ClientKey,
    state: plinth_model::LeaseState,
    expires_at: i64,
    revision: u64,
}

struct ReservationRec {
    reservation: Reservation,
    options: Vec<(u8, Vec<u8>)>,
}

struct Listener {
    /// Server port (67).
    socket: Arc<UdpSocket>,
    /// PXE boot server port (4011), for proxy subnets.
    boot_socket: Option<Arc<UdpSocket>>,
    address: Ipv4Addr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Most requests handled in one batch (one store transaction).
const BATCH: usize = 128;

/// The PXE boot server port (proxyDHCP requests).
pub const BOOT_SERVER_PORT: u16 = 4011;

struct Packet {
    interface: String,
    /// Local port it arrived on.
    port: u16,
    from: SocketAddr,
    bytes: Vec<u8>,
}

fn option_bytes(opts: &[plinth_model::DhcpOption]) -> Vec<(u8, Vec<u8>)> {
    opts.iter().filter_map(|o| o.bytes().ok().map(|b| (o.code, b))).collect()
}

fn subnet_options(s: &Subnet) -> Vec<(u8, Vec<u8>)> {
    let ips = |v: &[Ipv4Addr]| v.iter().flat_map(|i| i.octets()).collect::<Vec<u8>>();
    let mut out = Vec::new();
    if let Some(r) = s.router {
        out.push((code::ROUTER, r.octets().to_vec()));
    }
    if !s.dns_servers.is_empty() {
        out.push((code::DNS, ips(&s.dns_servers)));
    }
    if let Some(d) = &s.domain_name {
        out.push((code::DOMAIN_NAME, d.as_bytes().to_vec()));
    }
    out.push((code::BROADCAST, s.cidr.broadcast().octets().to_vec()));
    if !s.ntp_servers.is_empty() {
        out.push((code::NTP, ips(&s.ntp_servers)));
    }
    for (c, v) in option_bytes(&s.options) {
        match out.iter_mut().find(|(k, _)| *k == c) {
            Some((_, old)) => *old = v,
            None => out.push((c, v)),
        }
    }
    out
}

/// Who a request is from. By default its hardware address (Ethernet, six
/// bytes: anything else is refused); with the subnet's `match_client_id`,
/// its client identifier (option 61) when it sends one, unless that names
/// a hardware address other than the packet's.
fn client_key(m: &Message, match_client_id: bool) -> Result<ClientKey, &'static str> {
    let Some(mac) = m.mac() else {
        return Err("a hardware type or address length Plinth does not serve (Ethernet, six bytes)");
    };
    let mut hw = vec![1];
    hw.extend_from_slice(&mac);
    if !match_client_id {
        return Ok(hw);
    }
    match m.option(code::CLIENT_ID) {
        Some([1, named @ ..]) if named.len() == 6 && named != mac => {
            Err("a client identifier that names another hardware address than the packet's")
        }
        Some(id) if !id.is_empty() => Ok(id.to_vec()),
        _ => Ok(hw),
    }
}

/// The client a stored lease is for, by the same rule as [`client_key`].
fn key_of_lease(l: &Lease, match_client_id: bool) -> ClientKey {
    match l.client_id.as_deref().and_then(hex_decode) {
        Some(id) if match_client_id && !id.is_empty() => id,
        _ => {
            let mut k = vec![1];
            k.extend_from_slice(&l.mac.0);
            k
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The in-memory view of subnets, reservations, leases and offers.
struct Engine {
    store: Arc<dyn Store>,
    config: DhcpConfig,
    subnets: Vec<SubnetState>,
    reservations: HashMap<[u8; 6], ReservationRec>,
    leases: HashMap<Ipv4Addr, LeaseRec>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    offers: HashMap<Ipv4Addr, (ClientKey, i64)>,
    listeners: HashMap<String, Listener>,
    tx: mpsc::Sender<Packet>,
    log: crate::events::BootLog,
    /// Lease writes of the batch being handled: key, body, precondition.
    staged: Vec<(String, serde_json::Value, Expect)>,
    /// Replies of the batch, sent once its leases are durable.
    outbox: Vec<(Arc<UdpSocket>, Vec<u8>, SocketAddr)>,
    /// Which machines boot from their disk: see [`BootTargets`].
    targets: BootTargets,
}

/// What DHCP needs to know of machines: which MACs belong to a machine
/// whose bootenv does not network-boot (`local`), so they get an address and
/// no boot information. Kept current from the change stream.
#[derive(Default)]
struct BootTargets {
    /// Bootenvs with `netboot: false`.
    disk_envs: std::collections::HashSet<String>,
    /// Machine id to (MACs, bootenv).
    machines: HashMap<String, (Vec<[u8; 6]>, String)>,
    /// The machines holding each MAC: one, except in a store from before
    /// MACs were unique, where DHCP does not guess which one boots.
    by_mac: HashMap<[u8; 6], Vec<String>>,
}

impl BootTargets {
    fn set_machine(&mut self, id: &str, body: Option<&serde_json::Value>) {
        if let Some((macs, _)) = self.machines.remove(id) {
            for m in macs {
                if let Some(ids) = self.by_mac.get_mut(&m) {
                    ids.retain(|i| i != id);
                    if ids.is_empty() {
                        self.by_mac.remove(&m);
                    }
                }
            }
        }
        let Some(m) = body.and_then(|b| plinth_model::decode::<plinth_model::Machine>(b.clone()).ok()) else { return };
        let macs: Vec<[u8; 6]> = m.macs.iter().map(|m| m.0).collect();
        for mac in &macs {
            self.by_mac.entry(*mac).or_default().push(id.to_owned());
        }
        self.machines.insert(id.to_owned(), (macs, m.bootenv.to_string()));
    }

    fn set_bootenv(&mut self, name: &str, body: Option<&serde_json::Value>) {
        let netboot = body.and_then(|b| b.get("netboot")).and_then(|n| n.as_bool()).unwrap_or(true);
        if netboot {
            self.disk_envs.remove(name);
        } else {
            self.disk_envs.insert(name.to_owned());
        }
    }

    /// Whether the client with `mac` is to network-boot.
    fn netboot(&self, mac: Option<[u8; 6]>) -> bool {
        let env = match mac.and_then(|m| self.by_mac.get(&m)).map(Vec::as_slice) {
            Some([id]) => self.machines.get(id).map(|(_, e)| e),
            // Unknown, or claimed by several machines: the boot script then
            // says which (see `generated`), so it network-boots.
            _ => None,
        };
        !env.is_some_and(|e| self.disk_envs.contains(e))
    }
}

impl Engine {
    fn held(&self, ip: Ipv4Addr, now: i64) -> bool {
        let lease_held = self.leases.get(&ip).is_some_and(|l| {
            l.expires_at > now
                && matches!(l.state, plinth_model::LeaseState::Bound | plinth_model::LeaseState::Declined)
        });
        let offered = self.offers.get(&ip).is_some_and(|(_, exp)| *exp > now);
        let reserved = self.reservations.values().any(|r| r.reservation.address == ip);
        lease_held || offered || reserved
    }

    /// Rebuilds everything from the store and reconciles listeners.
    async fn reload(&mut self) {
        let load = async {
            let subnets = self.store.list_all(Kind::Subnet, vec![]).await?;
            let reservations = self.store.list_all(Kind::Reservation, vec![]).await?;
            let leases = self.store.list_all(Kind::Lease, vec![]).await?;
            let bootenvs = self.store.list_all(Kind::BootEnv, vec![]).await?;
            let machines = self.store.list_all(Kind::Machine, vec![]).await?;
            Ok::<_, plinth_store::StoreError>((subnets, reservations, leases, bootenvs, machines))
        };
        let (subnets, reservations, leases, bootenvs, machines) = match load.await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "dhcp: cannot load configuration; keeping the previous one");
                return;
            }
        };
        self.targets = BootTargets::default();
        for r in bootenvs {
            self.targets.set_bootenv(&r.key, Some(&r.body));
        }
        for r in machines {
            self.targets.set_machine(&r.key, Some(&r.body));
        }
        self.reservations.clear();
        for r in reservations {
            if let Ok(res) = plinth_model::decode::<Reservation>(r.body) {
                let options = option_bytes(&res.options);
                self.reservations.insert(res.mac.0, ReservationRec { reservation: res, options });
            }
        }
        self.leases.clear();
        self.by_client.clear();
        let by_client_id: std::collections::HashSet<String> = subnets
            .iter()
            .filter(|r| r.body.get("match_client_id").and_then(|v| v.as_bool()) == Some(true))
            .map(|r| r.key.clone())
            .collect();
        let mut unknown_leases = Vec::new();
        for r in leases {
            let revision = r.revision;
            if let Ok(l) = plinth_model::decode::<Lease>(r.body) {
                let client = key_of_lease(&l, by_client_id.contains(l.subnet.as_str()));
                if !self.known(Some(l.mac.0)) {
                    unknown_leases.push(l.address);
                }
                self.by_client.insert(client.clone(), l.address);
                self.leases.insert(
                    l.address,
                    LeaseRec { client, state: l.state, expires_at: l.expires_at.timestamp(), revision },
                );
            }
        }
        let now = now_secs();
        self.subnets.clear();
        for r in subnets {
            let Ok(s) = plinth_model::decode::<Subnet>(r.body) else { continue };
            if !s.enabled {
                continue;
            }
            let mut pool = match (s.range_start, s.range_end) {
                (Some(a), Some(b)) if !s.proxy => Pool::new(a, b),
                _ => Pool::new(Ipv4Addr::new(0, 0, 0, 1), Ipv4Addr::UNSPECIFIED),
            };
            for ip in [s.cidr.addr, s.cidr.broadcast()] {
                pool.take(ip);
            }
            let options = subnet_options(&s);
            let boot = BootFiles::with_overrides(&s.boot_files);
            let unknown = unknown_leases.iter().copied().filter(|ip| s.cidr.contains(*ip)).collect();
            self.subnets.push(SubnetState { subnet: s, pool, options, boot, new_clients: Default::default(), unknown });
        }
        let held: Vec<Ipv4Addr> = self
            .leases
            .keys()
            .chain(self.offers.keys())
            .copied()
            .chain(self.reservations.values().map(|r| r.reservation.address))
            .filter(|ip| self.held(*ip, now))
            .collect();
        for s in &mut self.subnets {
            for ip in &held {
                s.pool.take(*ip);
            }
        }
        self.reconcile_listeners();
        tracing::info!(
            subnets = self.subnets.len(),
            reservations = self.reservations.len(),
            leases = self.leases.len(),
            "dhcp: configuration loaded"
        );
    }

    fn reconcile_listeners(&mut self) {
        let wanted: Vec<String> = self.subnets.iter().filter_map(|s| s.subnet.interface.clone()).collect();
        let proxied =
            |name: &str| self.subnets.iter().any(|s| s.subnet.proxy && s.subnet.interface.as_deref() == Some(name));
        let stale: Vec<String> = self
            .listeners
            .iter()
            .filter(|(name, l)| !wanted.contains(name) || l.boot_socket.is_some() != proxied(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(l) = self.listeners.remove(&name) {
                l.tasks.iter().for_each(|t| t.abort());
                tracing::info!(interface = %name, "dhcp: stopped listening");
            }
        }
        let addrs = if_addrs::get_if_addrs().unwrap_or_default();
        for name in wanted {
            if self.listeners.contains_key(&name) {
                continue;
            }
            let cidrs: Vec<plinth_model::Ipv4Cidr> = self
                .subnets
                .iter()
                .filter(|s| s.subnet.interface.as_deref() == Some(&name))
                .map(|s| s.subnet.cidr)
                .collect();
            let address = addrs
                .iter()
                .filter(|a| a.name == name)
                .filter_map(|a| match a.ip() {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    _ => None,
                })
                .max_by_key(|ip| cidrs.iter().any(|c| c.contains(*ip)));
            let Some(address) = address else {
                tracing::error!(interface = %name, "dhcp: interface has no IPv4 address (or does not exist); not listening there");
                continue;
            };
            let proxy =
                self.subnets.iter().any(|s| s.subnet.proxy && s.subnet.interface.as_deref() == Some(name.as_str()));
            let opened = open_socket(&name, self.config.server_port).and_then(|s| {
                let boot = if proxy { Some(open_socket(&name, BOOT_SERVER_PORT)?) } else { None };
                Ok((s, boot))
            });
            match opened {
                Ok((socket, boot)) => {
                    let socket = Arc::new(socket);
                    let mut tasks = vec![tokio::spawn(receive(
                        socket.clone(),
                        name.clone(),
                        self.config.server_port,
                        self.tx.clone(),
                    ))];
                    let boot_socket = boot.map(Arc::new);
                    if let Some(b) = &boot_socket {
                        tasks.push(tokio::spawn(receive(b.clone(), name.clone(), BOOT_SERVER_PORT, self.tx.clone())));
                    }
                    tracing::info!(service = "dhcp", interface = %name, %address, port = self.config.server_port, proxy, "listening");
                    self.listeners.insert(name, Listener { socket, boot_socket, address, tasks });
                }
                Err(e) => {
                    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        " (needs root or CAP_NET_BIND_SERVICE and CAP_NET_RAW)"
                    } else {
                        ""
                    };
                    tracing::error!(interface = %name, error = %e, "dhcp: cannot listen{hint}; continuing without it");
                }
            }
        }
    }

    /// The subnet a request is for: a relayed one's by its `giaddr`, but
    /// only when it comes from a relay that subnet trusts (anyone can write
    /// a `giaddr`); a direct one's by the interface it came in on.
    fn subnet_for(&self, m: &Message, interface: &str, from: SocketAddr) -> Option<usize> {
        let direct = self.subnets.iter().position(|s| s.subnet.interface.as_deref() == Some(interface));
        if !m.giaddr.is_unspecified() {
            // A relay on the interface's own segment (a `giaddr` in the
            // subnet the interface serves) asks for what a direct client
            // would get: nothing another subnet has.
            if let Some(d) = direct
                && self.subnets[d].subnet.cidr.contains(m.giaddr)
            {
                return Some(d);
            }
            let si = self.subnets.iter().position(|s| s.subnet.cidr.contains(m.giaddr))?;
            let sender = match from.ip() {
                std::net::IpAddr::V4(v4) => v4,
                std::net::IpAddr::V6(_) => return None,
            };
            if !self.subnets[si].subnet.relays.contains(&sender) {
                let name = &self.subnets[si].subnet.name;
                let why = format!(
                    "relayed request (giaddr {}) from {sender} on {interface} refused: {sender} is not a relay subnet `{name}` trusts",
                    m.giaddr
                );
                tracing::info!(mac = ?m.mac().map(plinth_model::MacAddr), "dhcp: {why}");
                self.log.record(m.mac().map(plinth_model::MacAddr), Some(sender), "dhcp", why);
                return None;
            }
            return Some(si);
        }
        direct
    }

    /// Whether a machine or a reservation holds `mac`.
    fn known(&self, mac: Option<[u8; 6]>) -> bool {
        mac.is_some_and(|m| self.targets.by_mac.contains_key(&m) || self.reservations.contains_key(&m))
    }

    /// Whether subnet `si`'s clients Plinth does not know already hold
    /// their share of its range (counting only live offers and leases).
    fn unknown_full(&mut self, si: usize, now: i64) -> bool {
        let share = u64::from(self.subnets[si].subnet.unknown_share);
        let size = match (self.subnets[si].subnet.range_start, self.subnets[si].subnet.range_end) {
            (Some(a), Some(b)) => u64::from(u32::from(b).saturating_sub(u32::from(a))) + 1,
            _ => 0,
        };
        let cap = (size * share / 100) as usize;
        if share >= 100 {
            return false;
        }
        if self.subnets[si].unknown.len() >= cap {
            // Drop what has ended, or become a known machine's, since.
            let live: Vec<Ipv4Addr> = self.subnets[si]
                .unknown
                .iter()
                .copied()
                .filter(|ip| {
                    let offered = self.offers.get(ip).is_some_and(|(_, exp)| *exp > now);
                    let leased = self.leases.get(ip).is_some_and(|l| {
                        l.expires_at > now
                            && l.state == plinth_model::LeaseState::Bound
                            && !self.known(l.client.get(1..7).and_then(|m| m.try_into().ok()))
                    });
                    offered || leased
                })
                .collect();
            self.subnets[si].unknown = live.into_iter().collect();
        }
        self.subnets[si].unknown.len() >= cap
    }

    fn owner(&self, ip: Ipv4Addr, client: &ClientKey, mac: Option<[u8; 6]>, now: i64) -> Owner {
        if let Some(r) = self.reservations.values().find(|r| r.reservation.address == ip) {
            return if Some(r.reservation.mac.0) == mac { Owner::ThisClient } else { Owner::Other };
        }
        if let Some((who, exp)) = self.offers.get(&ip)
            && *exp > now
        {
            return if who == client { Owner::ThisClient } else { Owner::Other };
        }
        match self.leases.get(&ip) {
            Some(l) if l.expires_at > now && l.state == plinth_model::LeaseState::Bound => {
                if &l.client == client {
                    Owner::ThisClient
                } else {
                    Owner::Other
                }
            }
            Some(l) if l.expires_at > now && l.state == plinth_model::LeaseState::Declined => {
                if &l.client == client {
                    Owner::ThisClient
                } else {
                    Owner::Other
                }
            }
            _ => Owner::Free,
        }
    }

    fn handle(&mut self, p: Packet) {
        let m = match Message::parse(&p.bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(from = %p.from, error = %e, "dhcp: malformed packet");
                return;
            }
        };
        let Some(listener) = self.listeners.get(&p.interface) else { return };
        let on_boot_port = p.port == BOOT_SERVER_PORT;
        let socket = if on_boot_port { listener.boot_socket.clone() } else { Some(listener.socket.clone()) };
        let (Some(socket), server_id) = (socket, listener.address) else { return };
        let Some(si) = self.subnet_for(&m, &p.interface, p.from) else {
            tracing::debug!(interface = %p.interface, giaddr = %m.giaddr, "dhcp: no subnet for request; ignoring");
            return;
        };
        if self.subnets[si].subnet.proxy {
            self.handle_proxy(&m, si, server_id, on_boot_port, socket, p.from);
            return;
        }
        if on_boot_port {
            return;
        }
        let now = now_secs();
        let client = match client_key(&m, self.subnets[si].subnet.match_client_id) {
            Ok(c) => c,
            Err(why) => {
                let why = format!("{:?} refused: {why}", m.message_type());
                tracing::info!(from = %p.from, "dhcp: {why}");
                self.log.record(m.mac().map(plinth_model::MacAddr), None, "dhcp", why);
                return;
            }
        };
        let mac = m.mac();
        let kind = m.message_type();
        let requested = server::requested_address(&m);
        let requested_owner = requested.map_or(Owner::Free, |ip| self.owner(ip, &client, mac, now));
        let subnet_cidr = self.subnets[si].subnet.cidr;
        let current = self
            .by_client
            .get(&client)
            .copied()
            .filter(|ip| subnet_cidr.contains(*ip) && self.owner(*ip, &client, mac, now) != Owner::Other)
            .or_else(|| self.offers.iter().find(|(_, (who, exp))| who == &client && *exp > now).map(|(ip, _)| *ip));
        let has_reservation = mac.is_some_and(|m| self.reservations.contains_key(&m));
        let new_client = kind == Some(MessageType::Discover) && !has_reservation && current.is_none();
        if new_client && let Some(why) = self.starved(si, now) {
            tracing::warn!(subnet = %self.subnets[si].subnet.name, mac = ?mac.map(plinth_model::MacAddr), why, "dhcp: new client not answered");
            return;
        }
        let unknown = !self.known(mac);
        if new_client && unknown && self.unknown_full(si, now) {
            let s = &self.subnets[si].subnet;
            let why = format!(
                "DISCOVER not answered: clients Plinth does not know hold their share ({} %) of subnet `{}`",
                s.unknown_share, s.name
            );
            tracing::warn!(mac = ?mac.map(plinth_model::MacAddr), "dhcp: {why}");
            self.log.record(mac.map(plinth_model::MacAddr), None, "dhcp", why);
            return;
        }
        let free = if new_client { self.next_free(si, now) } else { None };
        let reservation = mac.and_then(|m| self.reservations.get(&m));
        let http_base = self.config.http_base(server_id);
        let s = &self.subnets[si];
        let view = s.view();
        let facts = Facts {
            server_id,
            http_base: &http_base,
            reservation: reservation.map(|r| ReservationView {
                address: r.reservation.address,
                hostname: r.reservation.hostname.as_ref().map(|h| h.as_str()),
                options: &r.options,
                next_server: r.reservation.next_server,
            }),
            current,
            requested_owner,
            free,
            now: now.max(0) as u64,
            netboot: self.targets.netboot(mac),
        };
        let decision = server::decide(&m, &view, &facts);
        let subnet_name = s.subnet.name.to_string();
        let mac_text = mac.map(|b| plinth_model::MacAddr(b).to_string()).unwrap_or_default();
        if let Some(f) = free
            && !matches!(&decision, Decision::Reply { lease: Some(LeaseWrite { address, .. }), .. } if *address == f)
        {
            // Not used after all.
            self.subnets[si].pool.free(f);
        }
        match decision {
            Decision::Ignore(why) => tracing::debug!(mac = %mac_text, ?kind, why, "dhcp: ignored"),
            Decision::OtherServer => {
                self.offers.retain(|ip, (who, _)| {
                    let drop = *who == client;
                    if drop {
                        for s in &mut self.subnets {
                            s.pool.free(*ip);
                        }
                    }
                    !drop
                });
            }
            Decision::Record(w) => {
                self.log.record(
                    mac.map(plinth_model::MacAddr),
                    Some(w.address),
                    "dhcp",
                    format!("{kind:?} {} ({:?})", w.address, w.state),
                );
                if let Err(e) = self.stage(&w, &m, &client, &subnet_name) {
                    tracing::warn!(mac = %mac_text, error = %e, "dhcp: cannot record lease change");
                }
            }
            Decision::Reply { message, to, lease } => {
                if let Some(w) = &lease {
                    if unknown {
                        self.subnets[si].unknown.insert(w.address);
                    }
                    if w.state == LeaseState::Offered {
                        self.offers.insert(w.address, (client.clone(), w.expires_at as i64));
                        self.subnets[si].pool.take(w.address);
                    } else if let Err(e) = self.stage(w, &m, &client, &subnet_name) {
                        // Cannot be made durable: do not acknowledge. The client retries.
                        tracing::warn!(mac = %mac_text, address = %w.address, error = %e, "dhcp: lease not stored; reply withheld");
                        return;
                    }
                }
                let dest = self.destination(to, p.from);
                let reply_kind = message.message_type();
                self.outbox.push((socket.clone(), message.encode(), dest));
                let file = String::from_utf8_lossy(&message.file).into_owned();
                tracing::info!(mac = %mac_text, request = ?kind, reply = ?reply_kind, address = %message.yiaddr, subnet = %subnet_name, %file, "dhcp");
                let address = if message.yiaddr.is_unspecified() { None } else { Some(message.yiaddr) };
                self.log.record(
                    mac.map(plinth_model::MacAddr),
                    address,
                    "dhcp",
                    format!(
                        "{kind:?} -> {reply_kind:?} {} subnet {subnet_name}{}",
                        message.yiaddr,
                        if file.is_empty() { String::new() } else { format!(" file {file}") }
                    ),
                );
            }
        }
    }

    fn destination(&self, to: Destination, from: SocketAddr) -> SocketAddr {
        match to {
            Destination::Relay(ip) => SocketAddrV4::new(ip, self.config.server_port).into(),
            Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, self.config.client_port).into(),
            Destination::Unicast(ip) => SocketAddrV4::new(ip, self.config.client_port).into(),
            Destination::Source => from,
        }
    }

    fn handle_proxy(
        &mut self,
        m: &Message,
        si: usize,
        server_id: Ipv4Addr,
        on_boot_port: bool,
        socket: Arc<UdpSocket>,
        from: SocketAddr,
    ) {
        let s = &self.subnets[si];
        let http_base = self.config.http_base(server_id);
        let view = s.view();
        let facts = Facts {
            server_id,
            http_base: &http_base,
            reservation: None,
            current: None,
            requested_owner: Owner::Other,
            free: None,
            now: now_secs().max(0) as u64,
            netboot: self.targets.netboot(m.mac()),
        };
        let mac = m.mac().map(|b| plinth_model::MacAddr(b).to_string()).unwrap_or_default();
        match server::decide_proxy(m, &view, &facts, on_boot_port) {
            Decision::Reply { message, to, .. } => {
                let dest = self.destination(to, from);
                self.outbox.push((socket, message.encode(), dest));
                self.log.record(
                    m.mac().map(plinth_model::MacAddr),
                    None,
                    "dhcp",
                    format!(
                        "proxy {:?} -> {:?} file {}",
                        m.message_type(),
                        message.message_type(),
                        String::from_utf8_lossy(&message.file)
                    ),
                );
                tracing::info!(%mac, request = ?m.message_type(), reply = ?message.message_type(), subnet = %s.subnet.name, proxy = true,
                    port = if on_boot_port { BOOT_SERVER_PORT } else { self.config.server_port },
                    file = %String::from_utf8_lossy(&message.file), "dhcp");
            }
            Decision::Ignore(why) => tracing::debug!(%mac, why, "dhcp: proxy ignored"),
            _ => {}
        }
    }

    /// Why subnet `si` takes no new client now (its starvation guards), or
    /// `None` when it does; a `None` counts the client against the rate.
    fn starved(&mut self, si: usize, now: i64) -> Option<&'static str> {
        let s = &self.subnets[si];
        let cap = s.subnet.max_pending_offers as usize;
        if cap > 0 {
            let cidr = s.subnet.cidr;
            let pending = self.offers.iter().filter(|(ip, (_, exp))| *exp > now && cidr.contains(**ip)).count();
            if pending >= cap {
                return Some("max_pending_offers reached (possible starvation attempt)");
            }
        }
        let s = &mut self.subnets[si];
        let rate = s.subnet.new_clients_per_minute as usize;
        if rate > 0 {
            while s.new_clients.front().is_some_and(|t| *t <= now - 60) {
                s.new_clients.pop_front();
            }
            if s.new_clients.len() >= rate {
                return Some("new_clients_per_minute reached (possible starvation attempt)");
            }
            s.new_clients.push_back(now);
        }
        None
    }

    fn next_free(&mut self, si: usize, now: i64) -> Option<Ipv4Addr> {
        // The pool may still mark addresses whose lease or offer has since
        // expired; it never hands out one that is held.
        for _ in 0..64 {
            let ip = self.subnets[si].pool.next_free()?;
            if self.held(ip, now) {
                self.subnets[si].pool.take(ip);
                continue;
            }
            self.subnets[si].pool.take(ip);
            return Some(ip);
        }
        None
    }

    /// Makes the batch's lease writes durable in one transaction, then sends
    /// the batch's replies. If the store refuses (another writer changed a
    /// lease), nothing is sent: the index is reloaded and clients retry.
    async fn commit(&mut self) {
        if !self.staged.is_empty() {
            let ops = self
                .staged
                .drain(..)
                .map(|(key, body, expect)| plinth_store::WriteOp::Put { kind: Kind::Lease, key, body, expect })
                .collect();
            match self.store.apply(ops).await {
                Ok(changes) => {
                    for c in changes {
                        if let Some(l) = c.key.parse::<Ipv4Addr>().ok().and_then(|ip| self.leases.get_mut(&ip)) {
                            l.revision = c.revision;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, dropped = self.outbox.len(), "dhcp: leases not stored; replies withheld, reloading");
                    self.outbox.clear();
                    self.reload().await;
                    return;
                }
            }
        }
        for (socket, bytes, dest) in self.outbox.drain(..) {
            if let Err(e) = socket.send_to(&bytes, dest).await {
                tracing::warn!(%dest, error = %e, "dhcp: send failed");
            }
        }
    }

    /// Stages a lease write for the batch being handled and updates the
    /// in-memory index at once, so later packets of the batch see it. Writes
    /// to one address within a batch are coalesced, keeping the precondition
    /// from before the batch.
    fn stage(
        &mut self,
        w: &LeaseWrite,
        m: &Message,
        client: &ClientKey,
        subnet: &str,
    ) -> Result<(), plinth_store::StoreError> {
        let state = match w.state {
            LeaseState::Offered | LeaseState::Bound => plinth_model::LeaseState::Bound,
            LeaseState::Released => plinth_model::LeaseState::Released,
            LeaseState::Declined => plinth_model::LeaseState::Declined,
        };
        let expires = chrono::DateTime::from_timestamp(w.expires_at as i64, 0).unwrap_or_default();
        // Built from typed values, so it needs no validation round trip.
        let lease = Lease {
            address: w.address,
            mac: plinth_model::MacAddr(m.mac().unwrap_or_default()),
            client_id: m.option(code::CLIENT_ID).map(hex),
            subnet: subnet.parse().map_err(plinth_store::StoreError::Query)?,
            state,
            expires_at: expires,
            hostname: w.hostname.clone(),
            client_arch: m.option(code::CLIENT_ARCH).filter(|v| v.len() >= 2).map(|v| u16::from_be_bytes([v[0], v[1]])),
            relay_info: m.option(code::RELAY_AGENT).map(hex),
            meta: Default::default(),
            revision: 0,
            created_at: None,
            updated_at: None,
        };
        let key = w.address.to_string();
        let body = serde_json::to_value(&lease).map_err(|e| plinth_store::StoreError::Query(e.to_string()))?;
        match self.staged.iter_mut().find(|(k, _, _)| *k == key) {
            Some(staged) => staged.1 = body,
            None => {
                let expect = match self.leases.get(&w.address) {
                    Some(l) => Expect::Revision(l.revision),
                    None => Expect::Absent,
                };
                self.staged.push((key, body, expect));
            }
        }
        let revision = self.leases.get(&w.address).map_or(0, |l| l.revision);
        self.offers.remove(&w.address);
        if let Some(old) = self.by_client.iter().find(|(k, ip)| *k == client && **ip != w.address).map(|(_, ip)| *ip) {
            for s in &mut self.subnets {
                s.pool.free(old);
            }
        }
        self.by_client.insert(client.clone(), w.address);
        self.leases
            .insert(w.address, LeaseRec { client: client.clone(), state, expires_at: w.expires_at as i64, revision });
        for s in &mut self.subnets {
            if state == plinth_model::LeaseState::Released {
                s.pool.free(w.address);
            } else {
                s.pool.take(w.address);
            }
        }
        Ok(())
    }
}

fn open_socket(interface: &str, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    // Only this interface's packets, and replies leave through it.
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

async fn receive(socket: Arc<UdpSocket>, interface: String, port: u16, tx: mpsc::Sender<Packet>) {
    let mut buf = vec![0u8; 1500];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let p = Packet { interface: interface.clone(), port, from, bytes: buf[..n].to_vec() };
                // A full queue means a flood: drop rather than grow.
                if tx.try_send(p).is_err() {
                    tracing::debug!(%interface, "dhcp: queue full, dropping a packet");
                }
            }
            Err(e) => {
                tracing::debug!(%interface, error = %e, "dhcp: receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs the DHCP service until `shutdown` resolves.
pub async fn serve(
    store: Arc<dyn Store>,
    config: DhcpConfig,
    log: crate::events::BootLog,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::channel(config.queue);
    let mut changes = store.subscribe();
    let mut engine = Engine {
        store,
        config,
        subnets: Vec::new(),
        reservations: HashMap::new(),
        leases: HashMap::new(),
        by_client: HashMap::new(),
        offers: HashMap::new(),
        listeners: HashMap::new(),
        tx,
        log,
        staged: Vec::new(),
        outbox: Vec::new(),
        targets: BootTargets::default(),
    };
    engine.reload().await;
    if engine.subnets.is_empty() {
        tracing::info!("dhcp: no subnet configured; not answering anywhere until one is created");
    }
    tokio::pin!(shutdown);
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(p) = rx.recv() => {
                // Handle what has queued up as one batch: one transaction
                // (one fsync) makes all its leases durable before any reply.
                engine.handle(p);
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(p) => engine.handle(p),
                        Err(_) => break,
                    }
                }
                engine.commit().await;
            }
            change = changes.recv() => match change {
                Ok(c) if matches!(c.kind, Kind::Subnet | Kind::Reservation) => engine.reload().await,
                Ok(c) if c.kind == Kind::Machine => {
                    let body = (c.action != plinth_store::Action::Deleted).then_some(&c.object);
                    engine.targets.set_machine(&c.key, body);
                }
                Ok(c) if c.kind == Kind::BootEnv => {
                    let body = (c.action != plinth_store::Action::Deleted).then_some(&c.object);
                    engine.targets.set_bootenv(&c.key, body);
                }
                Ok(c) if c.kind == Kind::Lease => {
                    // Our own writes are already indexed; another writer's
                    // (the API, a second server) needs a reload.
                    let ours = c.object.get("address").and_then(|a| a.as_str()).and_then(|a| a.parse::<Ipv4Addr>().ok())
                        .and_then(|ip| engine.leases.get(&ip)).is_some_and(|l| l.revision == c.revision);
                    if !ours {
                        engine.reload().await;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => engine.reload().await,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = sweep.tick() => {
                let now = now_secs();
                // Expired offers and leases give their addresses back to the
                // pools (the lease records stay, so a returning client gets
                // its old address while nobody else took it).
                let expired_offers: Vec<Ipv4Addr> = engine.offers.iter().filter(|(_, (_, e))| *e <= now).map(|(ip, _)| *ip).collect();
                for ip in &expired_offers {
                    engine.offers.remove(ip);
                }
                let expired_leases = engine.leases.iter().filter(|(_, l)| l.expires_at <= now).map(|(ip, _)| *ip);
                let candidates: Vec<Ipv4Addr> = expired_offers.iter().copied().chain(expired_leases).collect();
                for ip in candidates {
                    if !engine.held(ip, now) {
                        for s in &mut engine.subnets {
                            s.pool.free(ip);
                        }
                    }
                }
            }
        }
    }
    for (_, l) in engine.listeners.drain() {
        l.tasks.iter().for_each(|t| t.abort());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn machines_in_a_disk_bootenv_do_not_netboot_and_changes_apply_at_once() {
        let mut t = BootTargets::default();
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        let machine = |bootenv: &str| json!({"id": "0b5e1c1e-0000-4000-8000-000000000001", "name": "m", "macs": ["52:54:00:00:00:01"], "bootenv": bootenv});
        t.set_bootenv("local", Some(&json!({"name": "local", "netboot": false})));
        t.set_bootenv("debian-12", Some(&json!({"name": "debian-12"})));
        assert!(t.netboot(Some(mac)), "unknown machines network-boot");
        t.set_machine("m1", Some(&machine("local")));
        assert!(!t.netboot(Some(mac)));
        assert!(t.netboot(Some([0x52, 0x54, 0, 0, 0, 2])) && t.netboot(None));
        t.set_machine("m1", Some(&machine("debian-12")));
        assert!(t.netboot(Some(mac)), "switched to an installer");
        t.set_machine("m1", Some(&machine("local")));
        t.set_bootenv("local", Some(&json!({"name": "local", "netboot": true})));
        assert!(t.netboot(Some(mac)), "the bootenv itself changed");
        t.set_bootenv("local", Some(&json!({"name": "local", "netboot": false})));
        t.set_machine("m1", None);
        assert!(t.netboot(Some(mac)), "deleted machines are unknown again");
        // Two machines claiming one MAC (a store from before MACs were
        // unique): no guess at whose bootenv applies.
        let other = json!({"id": "0b5e1c1e-0000-4000-8000-000000000002", "name": "n", "macs": ["52:54:00:00:00:01"], "bootenv": "local"});
        t.set_machine("0b5e1c1e-0000-4000-8000-000000000001", Some(&machine("local")));
        assert!(!t.netboot(Some(mac)));
        t.set_machine("0b5e1c1e-0000-4000-8000-000000000002", Some(&other));
        assert!(t.netboot(Some(mac)), "ambiguous: boots the network, where the script refuses");
        t.set_machine("0b5e1c1e-0000-4000-8000-000000000002", None);
        assert!(!t.netboot(Some(mac)), "one holder again");
    }
}

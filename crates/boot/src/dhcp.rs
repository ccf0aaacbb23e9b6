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
//! The receive tasks parse each packet and queue it by what it is worth:
//! a REQUEST (a client holding an offer, or renewing) goes to one bounded
//! queue, a DISCOVER (a new exchange) to another. One task owns the
//! [`Index`] and takes requests first, so under a storm the exchanges
//! already begun are finished and new ones are shed: when a queue is full,
//! and when a DISCOVER has waited longer than a client waits for its offer.
//! Everything shed is counted in [`DhcpStats`].
//!
//! Decisions are made in batches. OFFERs and NAKs leave at once; the leases
//! of a batch's ACKs are written in one store transaction, and those ACKs
//! leave when it has committed (a lease is durable before its ACK). While
//! one batch commits, the next is decided: deciding and committing overlap.
//! Across servers, the store's per-lease revision preconditions decide.

pub use plinth_dhcp::index::BOOT_SERVER_PORT;
use plinth_dhcp::index::{
    Index, LeaseChange, Machines, Outcome, Request, ReservationConfig, StoredLease, SubnetConfig,
};
use plinth_dhcp::pxe::BootFiles;
use plinth_dhcp::server::{Destination, LeaseState};
use plinth_dhcp::{Message, MessageType, code};
use plinth_model::{Kind, Lease, Reservation, Subnet};
use plinth_store::{Expect, Store, StoreExt};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
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
    /// Capacity of the receive queue of requests (DISCOVERs get a quarter
    /// of it); beyond it packets are shed.
    pub queue: usize,
    /// Counters, shared with whoever reports them.
    pub stats: Arc<DhcpStats>,
}

impl Default for DhcpConfig {
    fn default() -> DhcpConfig {
        DhcpConfig {
            server_port: 67,
            client_port: 68,
            http_port: 8091,
            http_url: None,
            queue: 2048,
            stats: Arc::default(),
        }
    }
}

impl DhcpConfig {
    /// The boot HTTP base URL for a client reaching us at `server_id`.
    fn http_base(&self, server_id: Ipv4Addr) -> String {
        self.http_url.clone().unwrap_or_else(|| format!("http://{server_id}:{}", self.http_port))
    }
}

/// What the DHCP service has done since it started. Every packet received
/// is either answered, ignored or refused by the core, or shed here.
#[derive(Debug, Default)]
pub struct DhcpStats {
    /// Packets received (well-formed).
    pub received: AtomicU64,
    /// Packets that did not parse.
    pub malformed: AtomicU64,
    /// DISCOVERs shed because their queue was full.
    pub shed_discovers: AtomicU64,
    /// Other requests shed because their queue was full.
    pub shed_requests: AtomicU64,
    /// Requests shed because they waited longer than their client waits.
    pub shed_stale: AtomicU64,
    /// New clients not answered by a starvation guard.
    pub starved: AtomicU64,
    /// Replies sent.
    pub replies: AtomicU64,
    /// Replies RFC 2131 wants unicast to a client with no address yet,
    /// sent so, and those broadcast instead because the kernel would not
    /// take the client's link-layer address (no `CAP_NET_ADMIN`, or a
    /// full neighbour table).
    pub unicast_direct: AtomicU64,
    pub unicast_fallbacks: AtomicU64,
    /// Lease writes made durable, and the transactions that made them.
    pub lease_writes: AtomicU64,
    pub commits: AtomicU64,
    /// ACKs withheld because their leases could not be stored.
    pub withheld: AtomicU64,
    /// Well-formed packets received, by DHCP message type (the index is
    /// the type's number, 1 to 8; 0 for none or another).
    pub received_by_type: [AtomicU64; 9],
    /// Replies decided, by kind (an ACK counts here when decided, and is
    /// sent once its lease is stored).
    pub offers: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    /// Packets waiting in each queue, as the deciding task last saw them.
    pub queued_requests: AtomicU64,
    pub queued_discovers: AtomicU64,
    /// How long each request waited from its arrival to its decision.
    pub decide_seconds: Seconds,
    /// How long each batch's commit took.
    pub commit_seconds: Seconds,
}

/// A latency histogram in seconds (100 µs to about 6.5 s).
#[derive(Debug, Clone)]
pub struct Seconds(pub prometheus_client::metrics::histogram::Histogram);

impl Default for Seconds {
    fn default() -> Self {
        Seconds(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 4.0, 9),
        ))
    }
}

impl DhcpStats {
    fn shed_total(&self) -> u64 {
        self.shed_discovers.load(Relaxed) + self.shed_requests.load(Relaxed) + self.shed_stale.load(Relaxed)
    }
}

/// Most requests decided in one batch.
const BATCH: usize = 256;
/// ACKs waiting on commits beyond which no new exchange begins.
const ACK_BACKLOG: usize = 64;
/// A DISCOVER older than this is not answered: its client has stopped
/// waiting for this offer (perfdhcp after 1 s; firmware retransmits after
/// about 4 s, with a new transaction).
const STALE_DISCOVER: Duration = Duration::from_millis(1000);
/// A REQUEST older than this is not answered (clients retransmit by then).
const STALE_REQUEST: Duration = Duration::from_secs(4);

struct Listener {
    /// Server port (67).
    socket: Arc<UdpSocket>,
    /// PXE boot server port (4011), for proxy subnets.
    boot_socket: Option<Arc<UdpSocket>>,
    address: Ipv4Addr,
    http_base: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Packet {
    interface: Arc<str>,
    /// Local port it arrived on.
    port: u16,
    from: SocketAddr,
    message: Message,
    at: Instant,
}

/// A reply ready to send.
struct Reply {
    socket: Arc<UdpSocket>,
    bytes: Vec<u8>,
    to: SocketAddr,
    /// A unicast to a client with no address yet, on this interface at
    /// this hardware address: broadcast instead if it cannot be sent so.
    direct: Option<(Arc<str>, [u8; 6])>,
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

fn now_secs() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

fn subnet_config(s: Subnet) -> SubnetConfig {
    SubnetConfig {
        options: subnet_options(&s),
        boot_files: BootFiles::with_overrides(&s.boot_files),
        name: s.name.to_string(),
        network: s.cidr.addr,
        prefix: s.cidr.prefix,
        interface: s.interface,
        proxy: s.proxy,
        range: s.range_start.zip(s.range_end),
        lease_secs: s.lease_secs,
        next_server: s.next_server,
        only_reservations: s.only_reservations,
        relays: s.relays,
        match_client_id: s.match_client_id,
        unknown_share: s.unknown_share,
        max_pending_offers: s.max_pending_offers,
        new_clients_per_minute: s.new_clients_per_minute,
    }
}

fn stored_lease(l: Lease, revision: u64) -> StoredLease {
    StoredLease {
        address: l.address,
        mac: l.mac.0,
        client_id: l.client_id.as_deref().and_then(hex_decode),
        subnet: l.subnet.to_string(),
        state: match l.state {
            plinth_model::LeaseState::Released => LeaseState::Released,
            plinth_model::LeaseState::Declined => LeaseState::Declined,
            _ => LeaseState::Bound,
        },
        expires_at: l.expires_at.timestamp().max(0) as u64,
        revision,
    }
}

/// The stored form of a lease change. Built from typed values, so it needs
/// no validation round trip.
fn lease_body(c: &LeaseChange) -> Result<serde_json::Value, String> {
    let lease = Lease {
        address: c.address,
        mac: plinth_model::MacAddr(c.mac),
        client_id: c.client_id.as_deref().map(hex),
        subnet: c.subnet.parse().map_err(|e| format!("subnet name: {e}"))?,
        state: match c.state {
            LeaseState::Released => plinth_model::LeaseState::Released,
            LeaseState::Declined => plinth_model::LeaseState::Declined,
            _ => plinth_model::LeaseState::Bound,
        },
        expires_at: chrono::DateTime::from_timestamp(c.expires_at.min(i64::MAX as u64) as i64, 0).unwrap_or_default(),
        hostname: c.hostname.clone(),
        client_arch: c.client_arch,
        relay_info: c.relay_info.as_deref().map(hex),
        meta: Default::default(),
        revision: 0,
        created_at: None,
        updated_at: None,
    };
    serde_json::to_value(&lease).map_err(|e| e.to_string())
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

impl Machines for BootTargets {
    fn known(&self, mac: [u8; 6]) -> bool {
        self.by_mac.contains_key(&mac)
    }
    fn netboot(&self, mac: Option<[u8; 6]>) -> bool {
        BootTargets::netboot(self, mac)
    }
}

/// A commit under way: its store call and the ACKs waiting on it.
struct Commit {
    task: tokio::task::JoinHandle<Result<Vec<plinth_store::Change>, plinth_store::StoreError>>,
    acks: Vec<Reply>,
    addresses: std::collections::HashSet<Ipv4Addr>,
    writes: u64,
    started: Instant,
}

/// The DHCPv4 service: sockets, queues and the batch commit around the core's [`Index`].
struct DhcpService {
    store: Arc<dyn Store>,
    config: DhcpConfig,
    index: Index,
    targets: BootTargets,
    listeners: HashMap<Arc<str>, Listener>,
    requests: mpsc::Sender<Packet>,
    discovers: mpsc::Sender<Packet>,
    log: crate::events::BootLog,
    /// Lease writes of the batch being gathered, one per address (the last).
    staged: Vec<LeaseChange>,
    staged_at: HashMap<Ipv4Addr, usize>,
    /// ACKs of the batch being gathered, sent once its writes are durable.
    acks: Vec<Reply>,
    /// Replies that need nothing stored (OFFERs, NAKs), sent after each batch.
    now_out: Vec<Reply>,
    commit: Option<Commit>,
    /// The index may differ from the store (a commit failed): reload.
    stale: bool,
}

impl DhcpService {
    /// Rebuilds the index from the store and reconciles listeners. First
    /// lets every write made or staged land, so the store read includes
    /// them all: a lease the index handed out is never forgotten.
    async fn reload(&mut self) {
        self.settle().await;
        self.stale = false;
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
        let reservations = reservations
            .into_iter()
            .filter_map(|r| plinth_model::decode::<Reservation>(r.body).ok())
            .map(|r| ReservationConfig {
                options: option_bytes(&r.options),
                mac: r.mac.0,
                address: r.address,
                hostname: r.hostname.map(|h| h.to_string()),
                next_server: r.next_server,
            })
            .collect();
        let leases = leases
            .into_iter()
            .filter_map(|r| plinth_model::decode::<Lease>(r.body).ok().map(|l| stored_lease(l, r.revision)))
            .collect();
        let subnets = subnets
            .into_iter()
            .filter_map(|r| plinth_model::decode::<Subnet>(r.body).ok())
            .filter(|s| s.enabled)
            .map(subnet_config)
            .collect();
        self.index.reload(subnets, reservations, leases, &self.targets, now_secs());
        self.reconcile_listeners();
        tracing::info!(
            subnets = self.index.subnets().count(),
            leases = self.index.lease_count(),
            "dhcp: configuration loaded"
        );
    }

    fn reconcile_listeners(&mut self) {
        let wanted: Vec<String> = self.index.subnets().filter_map(|s| s.interface.clone()).collect();
        let proxied = |name: &str| self.index.subnets().any(|s| s.proxy && s.interface.as_deref() == Some(name));
        let stale: Vec<Arc<str>> = self
            .listeners
            .iter()
            .filter(|(name, l)| !wanted.iter().any(|w| w == &***name) || l.boot_socket.is_some() != proxied(name))
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
            if self.listeners.contains_key(name.as_str()) {
                continue;
            }
            let subnets: Vec<&SubnetConfig> =
                self.index.subnets().filter(|s| s.interface.as_deref() == Some(name.as_str())).collect();
            let address = addrs
                .iter()
                .filter(|a| a.name == name)
                .filter_map(|a| match a.ip() {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    _ => None,
                })
                .max_by_key(|ip| subnets.iter().any(|s| s.contains(*ip)));
            let Some(address) = address else {
                tracing::error!(interface = %name, "dhcp: interface has no IPv4 address (or does not exist); not listening there");
                continue;
            };
            let proxy = subnets.iter().any(|s| s.proxy);
            let opened = open_socket(&name, self.config.server_port).and_then(|s| {
                let boot = if proxy { Some(open_socket(&name, BOOT_SERVER_PORT)?) } else { None };
                Ok((s, boot))
            });
            match opened {
                Ok((socket, boot)) => {
                    let socket = Arc::new(socket);
                    let name: Arc<str> = name.into();
                    let queues = Queues {
                        requests: self.requests.clone(),
                        discovers: self.discovers.clone(),
                        stats: self.config.stats.clone(),
                    };
                    let mut tasks = vec![tokio::spawn(receive(
                        socket.clone(),
                        name.clone(),
                        self.config.server_port,
                        queues.clone(),
                    ))];
                    let boot_socket = boot.map(Arc::new);
                    if let Some(b) = &boot_socket {
                        tasks.push(tokio::spawn(receive(b.clone(), name.clone(), BOOT_SERVER_PORT, queues)));
                    }
                    tracing::info!(service = "dhcp", interface = %name, %address, port = self.config.server_port, proxy, "listening");
                    let http_base = self.config.http_base(address);
                    self.listeners.insert(name, Listener { socket, boot_socket, address, http_base, tasks });
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

    fn destination(&self, to: Destination, from: SocketAddr) -> SocketAddr {
        match to {
            Destination::Relay(ip) => SocketAddrV4::new(ip, self.config.server_port).into(),
            Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, self.config.client_port).into(),
            Destination::Unicast(ip) | Destination::Direct { ip, .. } => {
                SocketAddrV4::new(ip, self.config.client_port).into()
            }
            Destination::Source => from,
        }
    }

    /// Decides one request.
    fn handle(&mut self, p: Packet) {
        let stats = &self.config.stats;
        let discover = p.message.message_type() == Some(MessageType::Discover);
        let waited = p.at.elapsed();
        stats.decide_seconds.0.observe(waited.as_secs_f64());
        if waited > if discover { STALE_DISCOVER } else { STALE_REQUEST } {
            stats.shed_stale.fetch_add(1, Relaxed);
            return;
        }
        let Some(listener) = self.listeners.get(&p.interface) else { return };
        let boot_port = p.port == BOOT_SERVER_PORT;
        let socket = if boot_port { listener.boot_socket.clone() } else { Some(listener.socket.clone()) };
        let Some(socket) = socket else { return };
        let m = &p.message;
        let source = match p.from.ip() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        };
        let req = Request {
            message: m,
            interface: &p.interface,
            source,
            boot_port,
            server_id: listener.address,
            http_base: &listener.http_base,
            now: now_secs(),
        };
        let mac = m.mac().map(plinth_model::MacAddr);
        let mac_text = || mac.map(|m| m.to_string()).unwrap_or_default();
        match self.index.handle(&req, &self.targets) {
            Outcome::Ignored(why) => tracing::debug!(mac = %mac_text(), kind = ?m.message_type(), why, "dhcp: ignored"),
            Outcome::Starved(why) => {
                stats.starved.fetch_add(1, Relaxed);
                tracing::debug!(mac = %mac_text(), why, "dhcp: new client not answered");
            }
            Outcome::Refused { why, from } => {
                tracing::info!(mac = %mac_text(), "dhcp: {why}");
                self.log.record(mac, from, "dhcp", why);
            }
            Outcome::OtherServer => tracing::debug!(mac = %mac_text(), "dhcp: the client chose another server"),
            Outcome::Record { change, event } => {
                self.log.record(mac, Some(change.address), "dhcp", event);
                self.stage(change);
            }
            Outcome::Reply { message, to, change, event } => {
                match message.message_type() {
                    Some(MessageType::Offer) => stats.offers.fetch_add(1, Relaxed),
                    Some(MessageType::Ack) => stats.acks.fetch_add(1, Relaxed),
                    Some(MessageType::Nak) => stats.naks.fetch_add(1, Relaxed),
                    _ => 0,
                };
                let direct = match to {
                    Destination::Direct { mac, .. } => Some((p.interface.clone(), mac)),
                    _ => None,
                };
                let reply = Reply { socket, bytes: message.encode(), to: self.destination(to, p.from), direct };
                tracing::info!(mac = %mac_text(), %event, "dhcp");
                let address = (!message.yiaddr.is_unspecified()).then_some(message.yiaddr);
                self.log.record(mac, address, "dhcp", event);
                match change {
                    Some(c) => {
                        self.stage(c);
                        self.acks.push(reply);
                    }
                    None => self.now_out.push(reply),
                }
            }
        }
    }

    /// Adds a write to the batch being gathered; a later write to the same
    /// address replaces an earlier one.
    fn stage(&mut self, c: LeaseChange) {
        match self.staged_at.get(&c.address) {
            Some(&i) => self.staged[i] = c,
            None => {
                self.staged_at.insert(c.address, self.staged.len());
                self.staged.push(c);
            }
        }
    }

    /// Sends what needs nothing stored.
    async fn flush(&mut self) {
        for r in std::mem::take(&mut self.now_out) {
            send(&r, &self.config.stats).await;
        }
    }

    /// Starts committing the gathered writes, unless a commit is under way
    /// (they then go in the next one, which also bounds how stale a
    /// precondition can be: each is read when its commit starts).
    fn start_commit(&mut self) {
        if self.commit.is_some() || (self.staged.is_empty() && self.acks.is_empty()) {
            return;
        }
        self.staged_at.clear();
        let mut ops = Vec::with_capacity(self.staged.len());
        let mut addresses = std::collections::HashSet::new();
        for c in self.staged.drain(..) {
            let body = match lease_body(&c) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(address = %c.address, error = %e, "dhcp: cannot record lease change");
                    continue;
                }
            };
            let expect = self.index.revision(c.address).map_or(Expect::Absent, Expect::Revision);
            addresses.insert(c.address);
            ops.push(plinth_store::WriteOp::Put { kind: Kind::Lease, key: c.address.to_string(), body, expect });
        }
        let writes = ops.len() as u64;
        let store = self.store.clone();
        let task = tokio::spawn(async move { if ops.is_empty() { Ok(vec![]) } else { store.apply(ops).await } });
        self.commit =
            Some(Commit { task, acks: std::mem::take(&mut self.acks), addresses, writes, started: Instant::now() });
    }

    /// Waits for the commit under way and commits what is staged.
    async fn settle(&mut self) {
        loop {
            if let Some(c) = self.commit.take() {
                let result =
                    c.task.await.unwrap_or_else(|e| Err(plinth_store::StoreError::Query(format!("commit task: {e}"))));
                self.finish_commit(c.acks, c.writes, result).await;
            }
            self.start_commit();
            if self.commit.is_none() {
                return;
            }
        }
    }

    /// A commit ended: on success its ACKs go out; if the store refused
    /// (another writer changed a lease), they are withheld, clients retry,
    /// and the index is marked for a reload.
    async fn finish_commit(
        &mut self,
        acks: Vec<Reply>,
        writes: u64,
        result: Result<Vec<plinth_store::Change>, plinth_store::StoreError>,
    ) {
        let stats = &self.config.stats;
        match result {
            Ok(changes) => {
                for ch in changes {
                    if let Ok(ip) = ch.key.parse::<Ipv4Addr>() {
                        self.index.committed(ip, ch.revision);
                    }
                }
                stats.commits.fetch_add(1, Relaxed);
                stats.lease_writes.fetch_add(writes, Relaxed);
                for r in &acks {
                    send(r, stats).await;
                }
            }
            Err(e) => {
                stats.withheld.fetch_add(acks.len() as u64, Relaxed);
                tracing::warn!(error = %e, withheld = acks.len(), "dhcp: leases not stored; ACKs withheld, reloading");
                self.stale = true;
            }
        }
    }

    /// ACKs waiting for their leases to be stored.
    fn ack_backlog(&self) -> usize {
        self.acks.len() + self.commit.as_ref().map_or(0, |c| c.acks.len())
    }

    /// Whether a lease change event is one of ours (already indexed, or in
    /// the commit under way) rather than another writer's.
    fn ours(&self, c: &plinth_store::Change) -> bool {
        let Ok(ip) = c.key.parse::<Ipv4Addr>() else { return false };
        // An older revision than the index holds is one of ours, seen late.
        self.index.revision(ip).is_some_and(|r| c.revision <= r)
            || self.commit.as_ref().is_some_and(|k| k.addresses.contains(&ip))
    }
}

async fn send(r: &Reply, stats: &DhcpStats) {
    let result = match &r.direct {
        Some((interface, mac)) => send_direct(r, interface, *mac, stats).await,
        None => r.socket.send_to(&r.bytes, r.to).await,
    };
    match result {
        Ok(_) => {
            stats.replies.fetch_add(1, Relaxed);
        }
        Err(e) => tracing::warn!(to = %r.to, error = %e, "dhcp: send failed"),
    }
}

/// Unicasts to a client with no address yet: the kernel is told the
/// client's MAC for the address just before the send and forgets it just
/// after (the frame is addressed by then), so a storm of new clients never
/// fills the host's neighbour table. An entry the host already has is
/// used if it names the client's MAC and never replaced if it names
/// another. Without `CAP_NET_ADMIN`, or if the unicast cannot go out, the
/// reply is broadcast.
async fn send_direct(r: &Reply, interface: &str, mac: [u8; 6], stats: &DhcpStats) -> std::io::Result<usize> {
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, r.to.port());
    let std::net::IpAddr::V4(ip) = r.to.ip() else { return r.socket.send_to(&r.bytes, broadcast).await };
    match crate::neighbour::get(r.socket.as_ref(), interface, ip) {
        // The host already knows this client at this address: just send.
        Ok(Some(known)) if known == mac => return count_direct(r.socket.send_to(&r.bytes, r.to).await, stats),
        // The host knows another MAC for the address (a static entry, or
        // a machine still there): never replaced; broadcast.
        Ok(Some(_)) => {
            stats.unicast_fallbacks.fetch_add(1, Relaxed);
            return r.socket.send_to(&r.bytes, broadcast).await;
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%interface, %ip, error = %e, "dhcp: cannot read the ARP table"),
    }
    if let Err(e) = crate::neighbour::set(r.socket.as_ref(), interface, ip, mac) {
        if stats.unicast_fallbacks.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(%interface, error = %e, "dhcp: cannot set the client's ARP entry (needs CAP_NET_ADMIN); replies RFC 2131 wants unicast are broadcast");
        }
        return r.socket.send_to(&r.bytes, broadcast).await;
    }
    let sent = r.socket.send_to(&r.bytes, r.to).await;
    if let Err(e) = crate::neighbour::remove(r.socket.as_ref(), interface, ip) {
        tracing::debug!(%interface, %ip, error = %e, "dhcp: cannot remove the client's ARP entry");
    }
    match sent {
        Ok(n) => count_direct(Ok(n), stats),
        // No route to the new address on this interface: the client still
        // hears a broadcast.
        Err(_) => {
            stats.unicast_fallbacks.fetch_add(1, Relaxed);
            r.socket.send_to(&r.bytes, broadcast).await
        }
    }
}

fn count_direct(sent: std::io::Result<usize>, stats: &DhcpStats) -> std::io::Result<usize> {
    if sent.is_ok() {
        stats.unicast_direct.fetch_add(1, Relaxed);
    }
    sent
}

fn open_socket(interface: &str, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    // Room for a burst while the queues decide what to keep (the kernel
    // caps this at net.core.rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    // Only this interface's packets, and replies leave through it.
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

#[derive(Clone)]
struct Queues {
    requests: mpsc::Sender<Packet>,
    discovers: mpsc::Sender<Packet>,
    stats: Arc<DhcpStats>,
}

async fn receive(socket: Arc<UdpSocket>, interface: Arc<str>, port: u16, q: Queues) {
    let mut buf = vec![0u8; 1500];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                // Parsed here, on whichever core is free, so the deciding
                // task only decides.
                let message = match Message::parse(&buf[..n]) {
                    Ok(m) => m,
                    Err(e) => {
                        q.stats.malformed.fetch_add(1, Relaxed);
                        tracing::debug!(%from, error = %e, "dhcp: malformed packet");
                        continue;
                    }
                };
                q.stats.received.fetch_add(1, Relaxed);
                let t = message.message_type().map_or(0, |t| t as usize);
                q.stats.received_by_type[if t < 9 { t } else { 0 }].fetch_add(1, Relaxed);
                let discover = message.message_type() == Some(MessageType::Discover) && port != BOOT_SERVER_PORT;
                let p = Packet { interface: interface.clone(), port, from, message, at: Instant::now() };
                // A full queue means a storm: shed rather than grow.
                if discover {
                    if q.discovers.try_send(p).is_err() {
                        q.stats.shed_discovers.fetch_add(1, Relaxed);
                    }
                } else if q.requests.try_send(p).is_err() {
                    q.stats.shed_requests.fetch_add(1, Relaxed);
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
    let (requests, mut request_rx) = mpsc::channel(config.queue.max(1));
    // A quarter as many DISCOVERs: one waiting long is worth little (its
    // client is about to retransmit), and a short queue keeps offers prompt.
    let (discovers, mut discover_rx) = mpsc::channel((config.queue / 4).max(1));
    let mut changes = store.subscribe();
    let stats = config.stats.clone();
    let mut svc = DhcpService {
        store,
        config,
        index: Index::default(),
        targets: BootTargets::default(),
        listeners: HashMap::new(),
        requests,
        discovers,
        log,
        staged: Vec::new(),
        staged_at: HashMap::new(),
        acks: Vec::new(),
        now_out: Vec::new(),
        commit: None,
        stale: false,
    };
    svc.reload().await;
    if svc.index.subnets().next().is_none() {
        tracing::info!("dhcp: no subnet configured; not answering anywhere until one is created");
    }
    tokio::pin!(shutdown);
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let mut report = tokio::time::interval(Duration::from_secs(5));
    let mut shed_reported = 0;
    loop {
        let admit = svc.ack_backlog() < ACK_BACKLOG;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            done = async { (&mut svc.commit.as_mut().expect("guarded").task).await }, if svc.commit.is_some() => {
                let c = svc.commit.take().expect("guarded");
                stats.commit_seconds.0.observe(c.started.elapsed().as_secs_f64());
                let result = done.unwrap_or_else(|e| Err(plinth_store::StoreError::Query(format!("commit task: {e}"))));
                svc.finish_commit(c.acks, c.writes, result).await;
            }
            // Change events before packets: under a storm they must not
            // pile up until the channel lags (which costs a full reload).
            change = changes.recv() => match change {
                Ok(c) if matches!(c.kind, Kind::Subnet | Kind::Reservation) => svc.reload().await,
                Ok(c) if c.kind == Kind::Machine => {
                    let body = (c.action != plinth_store::Action::Deleted).then_some(&c.object);
                    svc.targets.set_machine(&c.key, body);
                }
                Ok(c) if c.kind == Kind::BootEnv => {
                    let body = (c.action != plinth_store::Action::Deleted).then_some(&c.object);
                    svc.targets.set_bootenv(&c.key, body);
                }
                // Another writer's lease (the API, a second server) needs a reload.
                Ok(c) if c.kind == Kind::Lease && !svc.ours(&c) => svc.reload().await,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => svc.reload().await,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            first = async {
                // Requests first: they finish exchanges already begun. New
                // exchanges begin only while the ACKs waiting on commits are
                // few, so offers are made no faster than leases can be
                // stored, and a DISCOVER not taken in time is shed.
                tokio::select! {
                    biased;
                    Some(p) = request_rx.recv() => Some(p),
                    Some(p) = discover_rx.recv(), if admit => Some(p),
                    else => None,
                }
            } => {
                let Some(first) = first else { break };
                svc.handle(first);
                let mut n = 1;
                while n < BATCH {
                    let p = match request_rx.try_recv() {
                        Ok(p) => p,
                        Err(_) if svc.ack_backlog() < ACK_BACKLOG => match discover_rx.try_recv() {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                        Err(_) => break,
                    };
                    svc.handle(p);
                    n += 1;
                }
                svc.flush().await;
                stats.queued_requests.store(request_rx.len() as u64, Relaxed);
                stats.queued_discovers.store(discover_rx.len() as u64, Relaxed);
            }
            _ = sweep.tick() => svc.index.sweep(now_secs()),
            _ = report.tick() => {
                let shed = stats.shed_total() + stats.starved.load(Relaxed);
                if shed > shed_reported {
                    tracing::warn!(
                        shed_discovers = stats.shed_discovers.load(Relaxed),
                        shed_requests = stats.shed_requests.load(Relaxed),
                        shed_stale = stats.shed_stale.load(Relaxed),
                        starved = stats.starved.load(Relaxed),
                        replies = stats.replies.load(Relaxed),
                        "dhcp: overloaded; requests shed since start (REQUESTs go first, new DISCOVERs are shed)"
                    );
                    shed_reported = shed;
                }
            }
        }
        if svc.stale {
            svc.reload().await;
        }
        svc.start_commit();
    }
    // Let the last batches land, then answer them: they are durable either way.
    svc.settle().await;
    for (_, l) in svc.listeners.drain() {
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

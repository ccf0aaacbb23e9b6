//! Boot-storm benchmark (not a test): N simulated machines, no VMs, go the
//! whole way at the protocol level against the real server binary: fetch
//! the loader over TFTP, the unknown-machine iPXE script, kernel and initrd
//! over HTTP, register with the join token their script carried, report
//! their inventory, and run a 3-task workflow through the agent API (next,
//! files, start, log, finish). Reports machines per minute and the
//! server's CPU time and peak memory. As root, the run moves into a
//! network namespace of its own, and each machine first gets its address
//! by DHCP (DISCOVER, OFFER, REQUEST, ACK) through a relay on that
//! namespace's loopback (the generator is the relay at 127.0.0.2:67, the
//! server answers a subnet on `lo`), so the lease is stored like any other;
//! without root that step is left out and the table says so. Run with
//! `STORM_N=100,1000,10000 cargo bench -p plinth --bench storm`.

#[path = "../tests/common/mod.rs"]
mod common;

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 64;
/// Set when the benchmark runs inside the namespace it created.
const IN_NETNS: &str = "PLINTH_STORM_IN_NETNS";
const KERNEL: usize = 64 * 1024;
const INITRD: usize = 256 * 1024;
const LOADER: usize = 64 * 1024;

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

/// Fetches `name` over TFTP (blksize 1468) from `client` (each simulated
/// machine has an address of its own on loopback, as machines on a network
/// do: the server limits transfers per client address); returns the bytes
/// received.
async fn tftp_get(server: std::net::SocketAddr, name: &str, client: std::net::Ipv4Addr) -> usize {
    let sock = tokio::net::UdpSocket::bind((client, 0)).await.unwrap();
    let mut rrq = vec![0, 1];
    for part in [name, "octet", "blksize", "1468"] {
        rrq.extend_from_slice(part.as_bytes());
        rrq.push(0);
    }
    sock.send_to(&rrq, server).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let mut got = 0;
    loop {
        let (n, peer) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf)).await.unwrap().unwrap();
        match u16::from_be_bytes([buf[0], buf[1]]) {
            6 => sock.send_to(&[0, 4, 0, 0], peer).await.map(|_| ()).unwrap(),
            3 => {
                let block = [buf[2], buf[3]];
                got += n - 4;
                sock.send_to(&[0, 4, block[0], block[1]], peer).await.unwrap();
                if n - 4 < 1468 {
                    return got;
                }
            }
            op => panic!("tftp opcode {op}"),
        }
    }
}

/// The generator's DHCP relay: one socket at 127.0.0.2:67, replies
/// handed to the waiting machine by transaction id.
struct Relay {
    socket: Arc<tokio::net::UdpSocket>,
    waiting: Arc<std::sync::Mutex<std::collections::HashMap<u32, tokio::sync::oneshot::Sender<plinth_dhcp::Message>>>>,
}

const RELAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

impl Relay {
    async fn start() -> Option<Relay> {
        // The server's DHCP socket holds 0.0.0.0:67 on `lo`; this one takes
        // the relay's own address beside it (both with SO_REUSEADDR).
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
        s.set_reuse_address(true).ok()?;
        s.set_nonblocking(true).ok()?;
        if let Err(e) = s.bind(&std::net::SocketAddr::from((RELAY, 67)).into()) {
            eprintln!("cannot bind the DHCP relay at {RELAY}:67: {e}");
            return None;
        }
        let socket = Arc::new(tokio::net::UdpSocket::from_std(s.into()).ok()?);
        let waiting: Arc<std::sync::Mutex<std::collections::HashMap<u32, tokio::sync::oneshot::Sender<_>>>> =
            Default::default();
        let (rx, w) = (socket.clone(), waiting.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, _)) = rx.recv_from(&mut buf).await {
                if let Ok(m) = plinth_dhcp::Message::parse(&buf[..n])
                    && let Some(tx) = w.lock().unwrap().remove(&m.xid)
                {
                    let _ = tx.send(m);
                }
            }
        });
        Some(Relay { socket, waiting })
    }

    /// Sends `m` to the server and waits for the reply to its xid.
    async fn exchange(&self, m: &plinth_dhcp::Message) -> plinth_dhcp::Message {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().unwrap().insert(m.xid, tx);
        self.socket.send_to(&m.encode(), ("127.0.0.1", 67)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx).await.expect("a DHCP reply").unwrap()
    }

    /// DISCOVER/OFFER/REQUEST/ACK for machine `i`; the address it got.
    async fn lease(&self, i: usize, mac: [u8; 6]) -> std::net::Ipv4Addr {
        let mut m = plinth_dhcp::Message {
            op: 1,
            htype: 1,
            hlen: 6,
            hops: 1,
            xid: 0x5000_0000 | i as u32,
            secs: 0,
            flags: 0,
            ciaddr: std::net::Ipv4Addr::UNSPECIFIED,
            yiaddr: std::net::Ipv4Addr::UNSPECIFIED,
            siaddr: std::net::Ipv4Addr::UNSPECIFIED,
            giaddr: RELAY,
            chaddr: [0; 16],
            sname: Vec::new(),
            file: Vec::new(),
            options: vec![(53, vec![1]), (93, vec![0, 0]), (60, b"PXEClient:Arch:00000:UNDI:002001".to_vec())],
        };
        m.chaddr[..6].copy_from_slice(&mac);
        let offer = self.exchange(&m).await;
        assert_eq!(offer.message_type(), Some(plinth_dhcp::MessageType::Offer), "machine {i}");
        m.options[0] = (53, vec![3]);
        m.set_option(50, offer.yiaddr.octets().to_vec());
        m.set_option(54, offer.option(54).unwrap_or_default().to_vec());
        let ack = self.exchange(&m).await;
        assert_eq!(ack.message_type(), Some(plinth_dhcp::MessageType::Ack), "machine {i}");
        ack.yiaddr
    }
}

struct Target {
    relay: Option<Relay>,
    http: String,
    tftp: std::net::SocketAddr,
    api: String,
    boot: reqwest::Client,
    tls: reqwest::Client,
}

async fn api(c: &reqwest::Client, token: &str, method: reqwest::Method, url: String, body: Value) -> Value {
    for _ in 0..5 {
        let r = c.request(method.clone(), &url).bearer_auth(token).json(&body).send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return v;
        }
        if status.as_u16() != 409 {
            panic!("{url}: {status} {v}");
        }
    }
    panic!("{url}: kept conflicting");
}

/// One machine from power-on to a completed workflow.
async fn machine(t: &Target, i: usize) {
    let mac = format!("52:54:01:{:02x}:{:02x}:{:02x}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff);
    if let Some(relay) = &t.relay {
        let bytes = [0x52, 0x54, 0x01, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        relay.lease(i, bytes).await;
    }
    let client = std::net::Ipv4Addr::new(127, 2, (i >> 8) as u8, i as u8);
    assert_eq!(tftp_get(t.tftp, "undionly.kpxe", client).await, LOADER);
    let script =
        t.boot.get(format!("{}/ipxe/{}", t.http, mac.replace(':', "-"))).send().await.unwrap().text().await.unwrap();
    let join = script.split_whitespace().find_map(|w| w.strip_prefix("plinth.join=")).expect("a join token").to_owned();
    for (f, len) in [("vmlinuz", KERNEL), ("initrd.img", INITRD)] {
        let b = t.boot.get(format!("{}/files/discovery/{f}", t.http)).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(b.len(), len);
    }
    let post = reqwest::Method::POST;
    let who = api(
        &t.tls,
        &join,
        post.clone(),
        format!("{}/api/v1/machines/whoami", t.api),
        json!({"macs": [mac], "inventory": {"cpu": {"count": 2}, "memory_bytes": 1u64 << 32}}),
    )
    .await;
    let id = who["machine"]["id"].as_str().unwrap().to_owned();
    let token = who["token"].as_str().unwrap().to_owned();
    api(
        &t.tls,
        &token,
        post.clone(),
        format!("{}/api/v1/machines/{id}/inventory", t.api),
        json!({"cpu": {"count": 2}}),
    )
    .await;
    loop {
        let next =
            api(&t.tls, &token, post.clone(), format!("{}/api/v1/machines/{id}/next", t.api), json!({"boot_id": "b"}))
                .await;
        match next["action"].as_str() {
            Some("run") => {
                let job = next["job"]["id"].as_str().unwrap().to_owned();
                let base = format!("{}/api/v1/jobs/{job}", t.api);
                let files = t.tls.get(format!("{base}/files")).bearer_auth(&token).send().await.unwrap();
                assert!(files.status().is_success());
                api(&t.tls, &token, post.clone(), format!("{base}/start"), json!({})).await;
                api(&t.tls, &token, post.clone(), format!("{base}/log"), json!({"seq": 0, "text": "ok\n"})).await;
                api(&t.tls, &token, post.clone(), format!("{base}/finish"), json!({"exit_code": 0})).await;
            }
            Some("wait") => {
                assert_eq!(next["state"], "complete", "{next}");
                return;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("STORM_N")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    // DHCP is served only inside a network namespace this run creates: the
    // benchmark re-runs itself there, server and load generator on that
    // namespace's own loopback, and deletes the namespace afterwards.
    let inside = std::env::var_os(IN_NETNS).is_some();
    if root && !inside {
        let ns = plinth::lab::Namespace::create(&format!("plt-storm-{}", std::process::id())).unwrap();
        let status = ns
            .exec(&[std::env::current_exe().unwrap().to_str().unwrap()])
            .args(std::env::args_os().skip(1))
            .env(IN_NETNS, "1")
            .status();
        let _ = ns.delete();
        std::process::exit(status.map_or(1, |s| s.code().unwrap_or(1)));
    }
    println!("| machines | DHCP | wall | machines/min | server CPU | CPU per machine | server peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for n in sizes {
        let tmp = tempfile::tempdir().unwrap();
        // A storm is thousands of unknown machines at once, whose scripts
        // this generator fetches from one address: the join-token budget is
        // raised to let them all through.
        let budget = [
            "--discovery-tokens-max",
            "100000",
            "--discovery-tokens-per-subnet",
            "100000",
            "--discovery-tokens-per-address",
            "10000",
        ];
        let mut flags: Vec<&str> = if inside {
            vec!["--http-addr", "127.0.0.1:0", "--tftp-addr", "127.0.0.1:0", "--dhcp-port", "67"]
        } else {
            vec!["--http-addr", "127.0.0.1:0", "--tftp-addr", "127.0.0.1:0", "--dhcp-port", "off"]
        };
        flags.extend(budget);
        let flags = &flags[..];
        let server = common::Server::start_with(tmp.path(), &[], flags);
        let admin = server.api().await;
        let files = server.files();
        std::fs::create_dir_all(files.join("discovery")).unwrap();
        std::fs::write(files.join("undionly.kpxe"), vec![7u8; LOADER]).unwrap();
        std::fs::write(files.join("discovery/vmlinuz"), vec![1u8; KERNEL]).unwrap();
        std::fs::write(files.join("discovery/initrd.img"), vec![2u8; INITRD]).unwrap();
        for t in ["configure", "install-agent", "report"] {
            admin
                .post(
                    "/api/v1/tasks",
                    json!({"name": t, "templates": [{"name": "run", "contents": "echo {{ machine.name }}"}]}),
                )
                .await;
        }
        admin.post("/api/v1/stages", json!({"name": "s", "tasks": ["configure", "install-agent", "report"]})).await;
        admin.post("/api/v1/workflows", json!({"name": "storm", "stages": ["s"]})).await;
        admin
            .send(
                reqwest::Method::PATCH,
                "/api/v1/profiles/global",
                Some(json!({"params": {"discovery-workflow": "storm"}})),
                None,
            )
            .await;
        let relay = if inside {
            let subnet = json!({"name": "storm", "cidr": "127.0.0.0/8", "interface": "lo", "range_start": "127.1.0.1",
                "range_end": "127.1.255.254", "lease_secs": 3600, "unknown_share": 100});
            assert_eq!(admin.post("/api/v1/subnets", subnet).await.status, 201);
            // The DHCP service picks the new subnet up from the change stream.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Relay::start().await
        } else {
            None
        };
        let with_dhcp = relay.is_some();
        let target = Arc::new(Target {
            relay,
            http: format!("http://{}", server.addr("http")),
            tftp: server.addr("tftp").parse().unwrap(),
            api: server.url.clone(),
            boot: reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().unwrap(),
            tls: server.http(),
        });
        let pid = server.pid();
        let cpu0 = cpu_secs(pid);
        let start = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..CONCURRENCY.min(n) {
            let (t, next) = (target.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    machine(&t, i).await;
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = cpu_secs(pid) - cpu0;
        if with_dhcp {
            let leases = admin.get("/api/v1/leases?limit=10000&state=bound").await.body;
            assert_eq!(leases["items"].as_array().map_or(0, Vec::len), n.min(10_000), "every machine holds a lease");
        }
        println!(
            "| {n} | {} | {wall:.1} s | {:.0} | {cpu:.1} s | {:.1} ms | {:.0} MiB |",
            if with_dhcp { "yes" } else { "no" },
            n as f64 / wall * 60.0,
            cpu / n as f64 * 1000.0,
            peak_rss_mib(pid)
        );
    }
}

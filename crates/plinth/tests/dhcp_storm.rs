//! A DHCP storm against the real server, inside network namespaces the
//! test creates: perfdhcp offers far more than the server can take (the
//! server is held to one core). Exchanges already begun are finished — the
//! REQUESTs of clients holding offers are answered — while new DISCOVERs
//! are shed and counted; and when the server is killed (SIGKILL) in the
//! middle of the storm, every ACK it had sent is for a lease the store
//! holds after the restart.

mod common;

use common::netns::{self, Netns};
use common::{Server, have, ok};
use std::collections::HashMap;
use std::time::Duration;

const SUBNET: &str = r#"{"name": "storm", "cidr": "10.66.0.0/16", "range_start": "10.66.1.0", "range_end": "10.66.255.254",
    "interface": "vs0", "lease_secs": 3600, "unknown_share": 100}"#;

struct Storm {
    srv: Netns,
    cli: Netns,
    dir: tempfile::TempDir,
}

impl Storm {
    fn new() -> Storm {
        let srv = Netns::new("ssrv");
        let cli = Netns::new("scli");
        netns::veth(&srv, "vs0", &cli, "vc0");
        srv.ip(&["addr", "add", "10.66.0.1/16", "dev", "vs0"]);
        cli.ip(&["addr", "add", "10.66.0.2/16", "dev", "vc0"]);
        cli.ip(&["link", "set", "vc0", "up"]);
        Storm { srv, cli, dir: tempfile::tempdir().unwrap() }
    }

    /// The server, on one core so that the storm overloads it anywhere.
    fn server(&self) -> Server {
        let mut prefix = self.srv.prefix();
        prefix.extend(["taskset", "-c", "0"]);
        Server::start_with(self.dir.path(), &prefix, &["--http-addr", "off", "--tftp-addr", "off"])
    }

    fn login(&self, server: &Server) {
        let pw = self.dir.path().join("pw");
        std::fs::write(&pw, common::PASSWORD).unwrap();
        ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    }

    /// perfdhcp (as a relay, from 10.66.0.2) offering `rate` exchanges a
    /// second for `secs` seconds, to clients with MACs from `base`; on the
    /// other core, so that what it counts is the server's doing.
    fn perfdhcp(&self, rate: u32, secs: u32, base: &str) -> std::process::Child {
        let (rate, secs, base) = (rate.to_string(), secs.to_string(), format!("mac={base}"));
        self.cli
            .exec(&[
                "timeout",
                "60",
                "taskset",
                "-c",
                "1",
                "perfdhcp",
                "-4",
                "-l",
                "10.66.0.2",
                "-r",
                &rate,
                "-R",
                "400000",
                "-b",
                &base,
                "-p",
                &secs,
                "10.66.0.1",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn output(child: std::process::Child) -> String {
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The DHCPACKs in a pcap file (Ethernet, IPv4, UDP): address to MAC.
fn acks_in(pcap: &[u8]) -> HashMap<String, String> {
    let mut acks = HashMap::new();
    let mut at = 24; // the file header
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let Some(frame) = pcap.get(at + 16..at + 16 + len) else { break };
        at += 16 + len;
        let Some(ip) = frame.get(14..) else { continue };
        let ihl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
        let Some(Ok(m)) = ip.get(ihl + 8..).map(plinth_dhcp::Message::parse) else { continue };
        if m.message_type() == Some(plinth_dhcp::MessageType::Ack) && !m.yiaddr.is_unspecified() {
            let mac = m.chaddr[..6].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            acks.insert(m.yiaddr.to_string(), mac);
        }
    }
    acks
}

#[test]
fn under_a_storm_requests_go_first_discovers_are_shed_and_every_ack_is_durable() {
    if !netns::available() || !have("perfdhcp") || !have("tcpdump") || !have("taskset") {
        return;
    }
    let storm = Storm::new();
    let mut server = storm.server();
    storm.login(&server);
    ok(server.cli(&["subnets", "create", "--data", SUBNET], None));
    std::thread::sleep(Duration::from_millis(500));

    // Shedding: far more DISCOVERs than the server takes, for 5 s.
    let text = output(storm.perfdhcp(12_000, 5, "02:00:01:00:00:00"));
    std::thread::sleep(Duration::from_secs(6));
    let stats =
        server.log.lock().unwrap().iter().rfind(|l| l.contains("dhcp: overloaded")).cloned().unwrap_or_default();
    let text = format!("{text}\nserver: {stats}");
    let (discovers, offers) = common::perfdhcp_counts(&text, "DISCOVER-OFFER");
    let (requests, acks) = common::perfdhcp_counts(&text, "REQUEST-ACK");
    assert!(offers * 10 < discovers * 9, "an overload: over 10 % of DISCOVERs go unanswered: {text}");
    assert!(requests > 500, "exchanges went on under the storm: {text}");
    // (perfdhcp misses a few replies of its own: it counts one as lost
    // when its socket overflowed or it ended before the reply came.)
    assert!(acks * 100 >= requests * 90, "REQUESTs of clients holding offers are answered (90 %+): {text}");
    assert!(
        !stats.is_empty() && !stats.contains("shed_discovers=0 shed_requests=0 shed_stale=0"),
        "the server counts what it shed: {text}"
    );

    // Durability: capture every reply on the wire, kill the server in the
    // middle of a storm, restart it, and look each ACKed lease up.
    let pcap = storm.dir.path().join("replies.pcap");
    let mut tcpdump = storm
        .cli
        .exec(&[
            "timeout",
            "60",
            "tcpdump",
            "-i",
            "vc0",
            "-n",
            "-U",
            "-B",
            "32768",
            "-w",
            pcap.to_str().unwrap(),
            "udp and src port 67",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let flood = storm.perfdhcp(12_000, 6, "02:00:02:00:00:00");
    std::thread::sleep(Duration::from_secs(3));
    server.kill9();
    let text = output(flood);
    std::thread::sleep(Duration::from_millis(500));
    netns::run(&["kill", "-INT", &tcpdump.id().to_string()]);
    let _ = tcpdump.wait();
    let acked = acks_in(&std::fs::read(&pcap).unwrap());
    assert!(acked.len() > 100, "ACKs were sent before the kill: {} ({text})", acked.len());

    let server = storm.server();
    storm.login(&server);
    let leases: Vec<serde_json::Value> =
        serde_json::from_str(&ok(server.cli(&["leases", "list", "-o", "json", "--limit", "1000000"], None))).unwrap();
    let stored: HashMap<&str, (&str, &str)> = leases
        .iter()
        .map(|l| (l["address"].as_str().unwrap(), (l["mac"].as_str().unwrap(), l["state"].as_str().unwrap())))
        .collect();
    let missing: Vec<_> =
        acked.iter().filter(|(ip, mac)| stored.get(ip.as_str()) != Some(&(mac.as_str(), "bound"))).collect();
    assert!(
        missing.is_empty(),
        "{} of {} ACKed leases not in the store after the kill: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!("storm: {} ACKs seen on the wire, all {} stored", acked.len(), acked.len());
}

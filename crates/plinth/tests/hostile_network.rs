//! The provisioning network is hostile: crafted DHCP packets and requests
//! from addresses whose lease has ended, inside network namespaces the
//! tests create. A direct client's `giaddr` gets nothing from another
//! subnet; an ended lease grants no secure file; a flood of spoofed MACs
//! leaves addresses for the machines Plinth knows; a client identifier
//! naming another client neither moves nor releases its lease.

mod common;

use common::netns::{self, Netns};
use common::{Server, have, ok};
use serde_json::{Value, json};
use std::time::Duration;

struct Lab {
    srv: Netns,
    cli: Netns,
    server: Server,
    _dir: tempfile::TempDir,
}

fn lab(subnets: &[Value]) -> Lab {
    let srv = Netns::new("hsrv");
    let cli = Netns::new("hcli");
    netns::veth(&srv, "vs0", &cli, "vc0");
    srv.ip(&["addr", "add", "10.77.0.1/24", "dev", "vs0"]);
    cli.ip(&["addr", "add", "10.77.0.2/24", "dev", "vc0"]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &srv.prefix(), &["--http-addr", "10.77.0.1:0", "--tftp-addr", "off"]);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    for s in subnets {
        ok(server.cli(&["subnets", "create", "--data", &s.to_string()], None));
    }
    Lab { srv, cli, server, _dir: dir }
}

fn subnet(range_end: &str) -> Value {
    json!({"name": "lab", "cidr": "10.77.0.0/24", "range_start": "10.77.0.100", "range_end": range_end,
        "interface": "vs0", "lease_secs": 600})
}

fn leases(lab: &Lab) -> Vec<Value> {
    serde_json::from_str(&ok(lab.server.cli(&["leases", "list", "-o", "json", "--limit", "10000"], None))).unwrap()
}

/// A BOOTREQUEST of `kind` (DHCP message type) from `chaddr`, broadcast
/// replies asked for, with `giaddr`, `ciaddr` and options as given.
fn packet(kind: u8, chaddr: [u8; 6], giaddr: [u8; 4], ciaddr: [u8; 4], options: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&[0x0c, 0xaf, 0xe0, kind]);
    p[10] = 0x80;
    p[12..16].copy_from_slice(&ciaddr);
    p[24..28].copy_from_slice(&giaddr);
    p[28..34].copy_from_slice(&chaddr);
    p.extend_from_slice(&[99, 130, 83, 99, 53, 1, kind]);
    for (code, value) in options {
        p.push(*code);
        p.push(value.len() as u8);
        p.extend_from_slice(value);
    }
    p.push(255);
    p
}

/// Sends `packets` from `from:68` (or `from:67`, as a relay) to the
/// server, each after the last's answers, and returns every answer's
/// (message type, yiaddr) seen on the client side.
fn exchange(lab: &Lab, from: &str, port: u16, packets: &[Vec<u8>]) -> Vec<(u8, String)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("packets");
    let mut blob = Vec::new();
    for p in packets {
        blob.extend_from_slice(&(p.len() as u32).to_be_bytes());
        blob.extend_from_slice(p);
    }
    std::fs::write(&file, blob).unwrap();
    let script = r#"
import socket, struct, sys, time
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.settimeout(0.4)
i = 0
while i < len(data):
    (n,) = struct.unpack(">I", data[i:i + 4])
    s.sendto(data[i + 4:i + 4 + n], ("10.77.0.1", 67))
    i += 4 + n
    end = time.time() + 0.6
    while time.time() < end:
        try:
            r, _ = s.recvfrom(2048)
        except socket.timeout:
            break
        if len(r) < 240 or r[0] != 2:
            continue
        j, t = 240, 0
        while j < len(r) and r[j] != 255:
            if r[j] == 0:
                j += 1
                continue
            if r[j] == 53:
                t = r[j + 2]
            j += 2 + r[j + 1]
        print(t, socket.inet_ntoa(r[16:20]), flush=True)
"#;
    let o = lab
        .cli
        .exec(&["timeout", "30", "python3", "-c", script, file.to_str().unwrap(), from, &port.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, ip)| (t.parse().unwrap_or(0), ip.to_owned())))
        .collect()
}

const OFFER: u8 = 2;
const ACK: u8 = 5;

fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xee, 0x00, last]
}

fn ip(s: &str) -> Vec<u8> {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets().to_vec()
}

/// A full DORA for `chaddr` (with `extra` options on both), as a direct client.
fn dora(lab: &Lab, chaddr: [u8; 6], extra: &[(u8, Vec<u8>)]) -> Option<String> {
    let offers = exchange(lab, "0.0.0.0", 68, &[packet(1, chaddr, [0; 4], [0; 4], extra)]);
    let (_, offered) = offers.iter().find(|(t, _)| *t == OFFER)?.clone();
    let mut opts = extra.to_vec();
    opts.push((50, ip(&offered)));
    opts.push((54, ip("10.77.0.1")));
    let acks = exchange(lab, "0.0.0.0", 68, &[packet(3, chaddr, [0; 4], [0; 4], &opts)]);
    acks.iter().find(|(t, _)| *t == ACK).map(|(_, a)| a.clone())
}

/// Item 1: a relay address is configured, not claimed.
#[test]
fn a_giaddr_is_believed_only_from_a_trusted_relay() {
    if !netns::available() || !have("python3") {
        return;
    }
    let remote = json!({"name": "remote", "cidr": "10.88.0.0/24", "range_start": "10.88.0.10", "range_end": "10.88.0.20",
        "relays": ["10.88.0.1"]});
    let lab = lab(&[subnet("10.77.0.199"), remote]);
    // A client on lab's wire claims to be a relay for remote: nothing.
    let forged = packet(1, mac(1), [10, 88, 0, 1], [0; 4], &[]);
    let answers = exchange(&lab, "10.77.0.2", 67, std::slice::from_ref(&forged));
    assert!(answers.is_empty(), "{answers:?}");
    std::thread::sleep(Duration::from_millis(300));
    let log = lab.server.log.lock().unwrap().join("\n");
    assert!(log.contains("is not a relay subnet `remote` trusts"), "{log}");
    assert!(leases(&lab).is_empty());
    // From the trusted relay, the same request is answered, and what the
    // relay adds (option 82) is kept with the lease.
    lab.cli.ip(&["addr", "add", "10.88.0.1/24", "dev", "vc0"]);
    lab.srv.ip(&["route", "add", "10.88.0.0/24", "via", "10.77.0.2"]);
    let info = vec![1, 4, b'p', b'o', b'r', b't'];
    let giaddr = [10, 88, 0, 1];
    let offers = exchange(&lab, "10.88.0.1", 67, &[packet(1, mac(2), giaddr, [0; 4], &[(82, info.clone())])]);
    let (_, offered) = offers.iter().find(|(t, _)| *t == OFFER).cloned().unwrap_or_else(|| panic!("{offers:?}"));
    assert!(offered.starts_with("10.88.0."), "{offered}");
    let req = packet(3, mac(2), giaddr, [0; 4], &[(82, info), (50, ip(&offered)), (54, ip("10.77.0.1"))]);
    let acks = exchange(&lab, "10.88.0.1", 67, &[req]);
    assert!(acks.iter().any(|(t, _)| *t == ACK), "{acks:?}");
    let l = leases(&lab);
    let lease = l.iter().find(|l| l["address"] == offered.as_str()).unwrap_or_else(|| panic!("{l:?}"));
    assert_eq!(lease["subnet"], "remote");
    assert_eq!(lease["relay_info"], "0104706f7274", "{lease}");
}

/// Item 2: a lease that has ended grants nothing: no secure file, no
/// machine's files, from the address it once had.
#[test]
fn an_ended_lease_grants_no_secure_file() {
    if !netns::available() || !have("curl") {
        return;
    }
    let lab = lab(&[subnet("10.77.0.199")]);
    let api = |args: &[&str]| ok(lab.server.cli(args, None));
    api(&["params", "create", "--data", r#"{"name": "site-secret", "secure": true, "schema": {"type": "string"}}"#]);
    api(&[
        "bootenvs",
        "create",
        "--data",
        r#"{"name": "sec", "templates": [{"name": "s", "contents": "{{ secure_param('site-secret') }}", "path": "s.txt"}]}"#,
    ]);
    api(&[
        "machines",
        "create",
        "--data",
        r#"{"name": "m1", "macs": ["52:54:00:ee:01:01"], "bootenv": "sec", "params": {"site-secret": "the-secret-value"}}"#,
    ]);
    let lease = |expires: chrono::DateTime<chrono::Utc>| json!({"address": "10.77.0.2", "mac": "52:54:00:ee:01:01", "subnet": "lab", "state": "bound", "expires_at": expires});
    let url = format!("http://{}/machines/52-54-00-ee-01-01/s.txt", lab.server.addr("http"));
    let fetch = || {
        let o = lab.cli.exec(&["curl", "-s", "-w", "\n%{http_code}", &url]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    api(&["leases", "create", "--data", &lease(chrono::Utc::now() + chrono::Duration::minutes(10)).to_string()]);
    let live = fetch();
    assert!(live.starts_with("the-secret-value") && live.ends_with("200"), "{live}");
    // The lease ran out 14 s ago (as in the probe).
    api(&[
        "leases",
        "update",
        "10.77.0.2",
        "--data",
        &lease(chrono::Utc::now() - chrono::Duration::seconds(14)).to_string(),
    ]);
    let ended = fetch();
    assert!(!ended.contains("the-secret-value") && !ended.ends_with("200"), "{ended}");
}

/// Item 3: a full DORA flood of spoofed MACs takes at most the unknown
/// clients' share of the range; a registered machine still gets its lease.
#[test]
fn a_flood_of_spoofed_macs_leaves_addresses_for_known_machines() {
    if !netns::available() || !have("perfdhcp") || !have("python3") {
        return;
    }
    // 100 addresses, the default share (25 %) for clients Plinth does not know.
    let lab = lab(&[subnet("10.77.0.199")]);
    ok(lab.server.cli(&["machines", "create", "--data", r#"{"name": "known", "macs": ["52:54:00:ee:00:77"]}"#], None));
    let o = lab
        .cli
        .exec(&["timeout", "60", "perfdhcp", "-4", "-l", "vc0", "-r", "50", "-n", "400", "-R", "400", "-p", "12"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let flood = leases(&lab).len();
    assert!((20..=25).contains(&flood), "the flood got {flood} leases, at most the unknown share: {text}");
    let log = lab.server.log.lock().unwrap().join("\n");
    assert!(log.contains("hold their share (25 %)"), "{log}");
    // A machine Plinth knows is answered at once.
    let got = dora(&lab, mac(0x77), &[]);
    let addr = got.expect("the known machine got an address");
    assert!(addr.starts_with("10.77.0.1"), "{addr}");
}

/// Item 5: a client identifier naming another client neither moves nor
/// releases that client's lease; odd hardware types are refused; an INFORM
/// about another subnet's address gets nothing.
#[test]
fn a_client_identifier_cannot_take_another_clients_lease() {
    if !netns::available() || !have("python3") {
        return;
    }
    let lab = lab(&[subnet("10.77.0.199")]);
    let victim = mac(0x10);
    let attacker = mac(0x20);
    let victim_addr = dora(&lab, victim, &[]).expect("the victim's lease");
    let mut id = vec![1];
    id.extend_from_slice(&victim);
    // A REQUEST from the attacker's MAC naming the victim as its client.
    let req = packet(3, attacker, [0; 4], [0; 4], &[(61, id.clone()), (50, ip(&victim_addr)), (54, ip("10.77.0.1"))]);
    let answers = exchange(&lab, "0.0.0.0", 68, &[req]);
    assert!(!answers.iter().any(|(t, _)| *t == ACK), "{answers:?}");
    // And a RELEASE with the victim's client identifier.
    let rel = packet(7, attacker, [0; 4], ip(&victim_addr).try_into().unwrap(), &[(61, id), (54, ip("10.77.0.1"))]);
    exchange(&lab, "0.0.0.0", 68, &[rel]);
    std::thread::sleep(Duration::from_millis(300));
    let l = leases(&lab);
    let lease = l.iter().find(|l| l["address"] == victim_addr.as_str()).unwrap();
    assert_eq!((lease["mac"].as_str(), lease["state"].as_str()), (Some("52:54:00:ee:00:10"), Some("bound")), "{lease}");
    // hlen 0 (and a hardware type other than Ethernet): refused, recorded.
    let mut odd = packet(1, [0; 6], [0; 4], [0; 4], &[]);
    odd[2] = 0;
    let mut ib = packet(1, mac(0x30), [0; 4], [0; 4], &[]);
    ib[1] = 32;
    assert!(exchange(&lab, "0.0.0.0", 68, &[odd, ib]).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let log = lab.server.log.lock().unwrap().join("\n");
    assert!(log.contains("hardware type or address length Plinth does not serve"), "{log}");
    // An INFORM whose ciaddr is in another subnet.
    let inform = packet(8, mac(0x40), [0; 4], [192, 168, 9, 9], &[]);
    assert!(exchange(&lab, "0.0.0.0", 68, &[inform]).is_empty());
    assert_eq!(leases(&lab).len(), 1, "nothing else was leased");
}

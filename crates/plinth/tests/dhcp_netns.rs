//! DHCP against real clients inside network namespaces the test creates:
//! udhcpc and dhclient get leases with the configured options, renew and
//! release work, and a relayed request (perfdhcp as a relay) gets a lease
//! from the subnet its giaddr names. Replies to a client with no address
//! yet go unicast to its MAC unless it asks for broadcast (RFC 2131 §4.1).

mod common;

use common::netns::{self, Netns};
use common::{Server, have, ok};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Lab {
    srv: Netns,
    cli: Netns,
    server: Server,
    _dir: tempfile::TempDir,
}

/// Server in one namespace (10.77.0.1/24 on `vs0`), clients in another.
fn lab(subnets: &[Value]) -> Lab {
    lab_as(subnets, &[])
}

/// [`lab`] with the server started behind `wrapper` inside its namespace.
fn lab_as(subnets: &[Value], wrapper: &[&str]) -> Lab {
    let srv = Netns::new("srv");
    let cli = Netns::new("cli");
    netns::veth(&srv, "vs0", &cli, "vc0");
    srv.ip(&["addr", "add", "10.77.0.1/24", "dev", "vs0"]);
    let dir = tempfile::tempdir().unwrap();
    let mut prefix = srv.prefix();
    prefix.extend_from_slice(wrapper);
    let server = Server::start_with(dir.path(), &prefix, &["--http-addr", "10.77.0.1:0", "--tftp-addr", "10.77.0.1:0"]);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    for s in subnets {
        ok(server.cli(&["subnets", "create", "--data", &s.to_string()], None));
    }
    Lab { srv, cli, server, _dir: dir }
}

/// The MAC of the client side's interface.
fn client_mac(lab: &Lab) -> String {
    let out = lab.cli.exec(&["cat", "/sys/class/net/vc0/address"]).output().unwrap().stdout;
    String::from_utf8(out).unwrap().trim().to_owned()
}

fn leases(lab: &Lab) -> Vec<Value> {
    serde_json::from_str(&ok(lab.server.cli(&["leases", "list", "-o", "json"], None))).unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lab_subnet() -> Value {
    serde_json::json!({"name": "lab", "cidr": "10.77.0.0/24", "range_start": "10.77.0.100", "range_end": "10.77.0.199",
        "interface": "vs0", "router": "10.77.0.1", "dns_servers": ["10.77.0.53", "10.77.0.54"], "domain_name": "lab.example",
        "ntp_servers": ["10.77.0.123"], "lease_secs": 600, "options": [{"code": 252, "text": "http://wpad"}]})
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
esac
# Write aside, then rename: the test never reads a half-written event.
env > "$OUT/.partial.$$"
mv "$OUT/.partial.$$" "$OUT/$1.$(date +%s%N)"
"#;

fn events(dir: &std::path::Path, kind: &str) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{kind}.")))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    v.sort();
    v
}

fn env_var<'a>(env: &'a str, name: &str) -> Option<&'a str> {
    env.lines().find_map(|l| l.strip_prefix(&format!("{name}=")))
}

#[test]
fn udhcpc_gets_a_lease_with_options_renews_and_releases() {
    if !netns::available() || !have("udhcpc") {
        return;
    }
    let lab = lab(&[lab_subnet()]);
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("script.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut client = lab
        .cli
        .exec(&[
            "udhcpc",
            "-f",
            "-i",
            "vc0",
            "-s",
            script.to_str().unwrap(),
            "-t",
            "5",
            "-T",
            "1",
            "-x",
            "hostname:web-7",
            "-O",
            "ntpsrv",
            "-O",
            "252",
        ])
        .env("OUT", out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("udhcpc bound", Duration::from_secs(30), || !events(out.path(), "bound").is_empty());
    let bound = events(out.path(), "bound").remove(0);
    let ip = env_var(&bound, "ip").unwrap().to_owned();
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    assert!(ip.starts_with("10.77.0.") && (100..=199).contains(&octets[3]), "address from the range: {ip}");
    assert_eq!(env_var(&bound, "router"), Some("10.77.0.1"));
    assert_eq!(env_var(&bound, "dns"), Some("10.77.0.53 10.77.0.54"));
    assert_eq!(env_var(&bound, "domain"), Some("lab.example"));
    assert_eq!(env_var(&bound, "ntpsrv"), Some("10.77.0.123"));
    assert_eq!(env_var(&bound, "lease"), Some("600"));
    assert_eq!(env_var(&bound, "serverid"), Some("10.77.0.1"));
    assert_eq!(env_var(&bound, "mask"), Some("24"));
    assert_eq!(env_var(&bound, "wpad"), Some("http://wpad"), "custom option by code (252)");

    // The lease is in the store, bound, with the client's hostname.
    let l = leases(&lab);
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0]["address"].as_str(), l[0]["state"].as_str(), l[0]["hostname"].as_str()),
        (Some(ip.as_str()), Some("bound"), Some("web-7"))
    );
    let revision = l[0]["revision"].as_u64().unwrap();

    // SIGUSR1: renew (unicast REQUEST with ciaddr) extends the same lease.
    netns::run(&["kill", "-USR1", &client.id().to_string()]);
    wait_for("renewal", Duration::from_secs(20), || !events(out.path(), "renew").is_empty());
    assert_eq!(env_var(&events(out.path(), "renew")[0], "ip"), Some(ip.as_str()));
    wait_for("renewed lease stored", Duration::from_secs(5), || {
        leases(&lab)[0]["revision"].as_u64().unwrap() > revision
    });

    // SIGUSR2: release.
    netns::run(&["kill", "-USR2", &client.id().to_string()]);
    wait_for("release recorded", Duration::from_secs(10), || leases(&lab)[0]["state"] == "released");
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn dhclient_gets_a_lease_and_a_reservation_wins() {
    if !netns::available() || !have("dhclient") {
        return;
    }
    let lab = lab(&[lab_subnet()]);
    let mac = client_mac(&lab);
    ok(lab.server.cli(
        &[
            "reservations",
            "create",
            "--data",
            &serde_json::json!({"mac": mac, "address": "10.77.0.42", "hostname": "fixed-1",
            "options": [{"code": 6, "ipv4": ["10.77.0.99"]}]})
            .to_string(),
        ],
        None,
    ));
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("dhclient-script");
    // dhclient runs its script with a clean environment: the path is baked in.
    let body = "#!/bin/sh\ncase \"$reason\" in BOUND|RENEW|REBOOT) ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\";; esac\n";
    std::fs::write(
        &script,
        format!(
            "{body}env > \"{0}/.partial.$$\"\nmv \"{0}/.partial.$$\" \"{0}/$reason.$(date +%s%N)\"\n",
            out.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lf = out.path().join("leases");
    let pf = out.path().join("pid");
    // dhclient with its lease, pid and script files in `out`, as `mode` (`-1` or `-r`).
    let dhclient = |mode: &str| {
        let files = [lf.to_str().unwrap(), pf.to_str().unwrap(), script.to_str().unwrap()];
        lab.cli
            .exec(&["timeout", "60", "dhclient", mode, "-4", "-lf", files[0], "-pf", files[1], "-sf", files[2], "vc0"])
            .status()
            .unwrap()
    };
    let st = dhclient("-1");
    assert!(st.success(), "dhclient -1 got a lease");
    let bound = events(out.path(), "BOUND");
    assert_eq!(
        bound.len(),
        1,
        "one BOUND; saw {:?}",
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
    );
    assert_eq!(env_var(&bound[0], "new_ip_address"), Some("10.77.0.42"), "the reserved address");
    assert_eq!(env_var(&bound[0], "new_host_name"), Some("fixed-1"));
    assert_eq!(env_var(&bound[0], "new_domain_name_servers"), Some("10.77.0.99"), "reservation options override");
    assert_eq!(env_var(&bound[0], "new_routers"), Some("10.77.0.1"));
    // Release with -r.
    let _ = dhclient("-r");
    wait_for("release recorded", Duration::from_secs(10), || {
        leases(&lab).iter().any(|l| l["address"] == "10.77.0.42" && l["state"] == "released")
    });
}

#[test]
fn relayed_requests_get_leases_from_the_giaddr_subnet() {
    if !netns::available() || !have("perfdhcp") {
        return;
    }
    let relayed = serde_json::json!({"name": "remote", "cidr": "10.88.0.0/24", "range_start": "10.88.0.10", "range_end": "10.88.0.250", "router": "10.88.0.1", "relays": ["10.88.0.1"], "unknown_share": 100});
    let lab = lab(&[lab_subnet(), relayed]);
    // The "relay" lives in the client namespace with an address on both nets.
    lab.cli.ip(&["addr", "add", "10.77.0.2/24", "dev", "vc0"]);
    lab.cli.ip(&["addr", "add", "10.88.0.1/24", "dev", "vc0"]);
    lab.srv.ip(&["route", "add", "10.88.0.0/24", "via", "10.77.0.2"]);
    let o = lab
        .cli
        .exec(&[
            "timeout",
            "30",
            "perfdhcp",
            "-4",
            "-l",
            "10.88.0.1",
            "-r",
            "20",
            "-n",
            "20",
            "-R",
            "20",
            "-p",
            "10",
            "10.77.0.1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let l = leases(&lab);
    assert!(!l.is_empty(), "relayed clients got leases: {text}");
    for lease in &l {
        assert_eq!(lease["subnet"], "remote", "{lease}");
        assert!(lease["address"].as_str().unwrap().starts_with("10.88.0."), "{lease}");
    }
}

/// perfdhcp's count of `received packets` (OFFERs, with `-i`).
fn received(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("received packets: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in perfdhcp output: {text}"))
}

#[test]
fn starvation_guards_cap_pending_offers_and_new_clients_per_minute() {
    if !netns::available() || !have("perfdhcp") {
        return;
    }
    // A range of 10, all of which clients nobody knows may hold.
    let small = |max_pending: u32| {
        let mut s = lab_subnet();
        s["range_end"] = serde_json::json!("10.77.0.109");
        s["unknown_share"] = serde_json::json!(100);
        s["max_pending_offers"] = serde_json::json!(max_pending);
        s
    };
    // 60 spoofed MACs that DISCOVER and never REQUEST (perfdhcp sends from
    // an address of its own; the server still sees broadcast DISCOVERs).
    let flood = |lab: &Lab, args: &[&str]| {
        let mut cmd = vec!["timeout", "30", "perfdhcp", "-4", "-l", "vc0"];
        cmd.extend_from_slice(args);
        let o = lab.cli.exec(&cmd).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let discovers = ["-i", "-r", "60", "-n", "60", "-R", "60", "-p", "4"];
    // Three new clients that go through the whole exchange afterwards.
    let newcomers = ["-r", "3", "-n", "3", "-R", "3", "-b", "mac=52:54:00:aa:00:00", "-p", "3"];

    // Without the guard the flood takes the whole range for the offers'
    // hold, and a newcomer finds none.
    let lab = lab(&[small(0)]);
    lab.cli.ip(&["addr", "add", "10.77.0.2/24", "dev", "vc0"]);
    let text = flood(&lab, &discovers);
    assert_eq!(received(&text), 10, "the range ran dry: {text}");
    let text = flood(&lab, &newcomers);
    assert!(leases(&lab).is_empty(), "no address was left: {text}");
    drop(lab);

    // With it, offers not taken hold at most 5 addresses: every DISCOVER
    // is answered (the oldest offer gives its address back), and the
    // newcomers still get leases.
    let lab = self::lab(&[small(5)]);
    lab.cli.ip(&["addr", "add", "10.77.0.2/24", "dev", "vc0"]);
    let text = flood(&lab, &discovers);
    // (perfdhcp may pick one of its 60 random clients twice, or end before
    // the last offer arrives.)
    assert!(received(&text) >= 55, "no client is refused (10 addresses, 60 clients): {text}");
    assert!(leases(&lab).is_empty(), "offers are not leases");
    let text = flood(&lab, &newcomers);
    assert!(!leases(&lab).is_empty(), "the newcomers got leases: {text}");
    drop(lab);

    // The rate guard instead, on a fresh server: 7 new clients a minute.
    let mut rated = lab_subnet();
    rated["max_pending_offers"] = serde_json::json!(0);
    rated["new_clients_per_minute"] = serde_json::json!(7);
    let lab = self::lab(&[rated]);
    lab.cli.ip(&["addr", "add", "10.77.0.2/24", "dev", "vc0"]);
    let text = flood(&lab, &discovers);
    assert_eq!(received(&text), 7, "offers stop at new_clients_per_minute: {text}");
}

/// A BOOTREQUEST header (236 bytes) for `mac`, then the magic cookie and
/// `options` as given (raw, possibly malformed).
fn bootp(op: u8, hlen: u8, mac: [u8; 6], cookie: &[u8], options: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = op;
    p[1] = 1;
    p[2] = hlen;
    p[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(cookie);
    p.extend_from_slice(options);
    p
}

#[test]
fn malformed_dhcp_packets_are_ignored_and_the_server_keeps_serving() {
    if !netns::available() || !have("udhcpc") || !have("python3") {
        return;
    }
    let lab = lab(&[lab_subnet()]);
    lab.cli.ip(&["addr", "add", "10.77.0.2/24", "dev", "vc0"]);
    const COOKIE: [u8; 4] = [99, 130, 83, 99];
    let mac = [0x52, 0x54, 0x00, 0xbb, 0x00, 0x01];
    let mut packets: Vec<Vec<u8>> = Vec::new();
    // Truncated and random.
    for len in [0usize, 1, 2, 4, 8, 16, 64, 128, 200, 235, 236, 239] {
        packets.push((0..len).map(|i| (i * 37 % 251) as u8).collect());
    }
    // Header without, or with a wrong, magic cookie.
    packets.push(bootp(1, 6, mac, &[], &[]));
    packets.push(bootp(1, 6, mac, &[1, 2, 3, 4], &[53, 1, 1, 255]));
    packets.push(bootp(1, 6, mac, &COOKIE[..3], &[]));
    // Options that run past the end, lie about their length, or never end.
    for opts in [
        &[53u8][..],
        &[53, 1],
        &[53, 200, 1],
        &[53, 0, 255],
        &[53, 1, 0, 255],
        &[53, 1, 9, 255],
        &[53, 1, 255, 255],
        &[53, 1, 1, 50, 4, 10, 77],
        &[53, 1, 1, 61, 255],
        &[53, 1, 1, 55, 250, 1, 2, 3],
        &[53, 1, 1, 12, 0, 255],
        &[53, 1, 3, 50, 3, 10, 77, 0, 255],
        &[53, 1, 3, 54, 2, 10, 77, 255],
        &[53, 1, 1, 52, 1, 3, 255],
        &[53, 1, 1, 82, 3, 1, 10, 0, 255],
        &[0, 0, 0, 0, 0, 0],
        &[255],
        &[53, 1, 2, 255],
        &[53, 1, 5, 255],
        &[53, 1, 6, 255],
    ] {
        packets.push(bootp(1, 6, mac, &COOKIE, opts));
    }
    // Odd hardware lengths, replies sent as requests, and every message
    // type with no MAC at all.
    for hlen in [0u8, 1, 5, 7, 16, 17, 255] {
        packets.push(bootp(1, hlen, mac, &COOKIE, &[53, 1, 1, 255]));
    }
    for op in [0u8, 2, 3, 255] {
        packets.push(bootp(op, 6, mac, &COOKIE, &[53, 1, 1, 255]));
    }
    for t in 0u8..=20 {
        packets.push(bootp(1, 0, [0; 6], &COOKIE, &[53, 1, t, 255]));
    }
    // Overlong: a full frame of options.
    let mut long = vec![53, 1, 1];
    while long.len() < 1200 {
        long.extend_from_slice(&[60, 255]);
        long.extend(std::iter::repeat_n(b'x', 255));
    }
    packets.push(bootp(1, 6, mac, &COOKIE, &long));
    assert!(packets.len() >= 60, "{}", packets.len());
    // Last, a well-formed DISCOVER: proof the garbage reached the server.
    packets.push(bootp(1, 6, [0x52, 0x54, 0x00, 0xcc, 0x00, 0x01], &COOKIE, &[53, 1, 1, 255]));

    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("packets");
    let mut blob = Vec::new();
    for p in &packets {
        blob.extend_from_slice(&(p.len() as u32).to_be_bytes());
        blob.extend_from_slice(p);
    }
    std::fs::write(&file, blob).unwrap();
    let sender = r#"
import socket, struct, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.2", 68))
i = 0
while i < len(data):
    (n,) = struct.unpack(">I", data[i:i + 4])
    s.sendto(data[i + 4:i + 4 + n], ("10.77.0.1", 67))
    i += 4 + n
"#;
    let o = lab.cli.exec(&["timeout", "20", "python3", "-c", sender, file.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(500));
    let offered = || lab.server.log.lock().unwrap().iter().any(|l| l.contains("52:54:00:cc:00:01"));
    wait_for("the canary DISCOVER answered", Duration::from_secs(5), offered);
    assert!(leases(&lab).is_empty(), "nothing was leased to malformed requests");
    assert!(lab.server.log.lock().unwrap().iter().all(|l| !l.contains("panicked")));
    // Still serving: a real client gets a lease.
    lab.cli.ip(&["addr", "flush", "dev", "vc0"]);
    let st = lab
        .cli
        .exec(&["timeout", "30", "udhcpc", "-f", "-q", "-n", "-i", "vc0", "-t", "5", "-T", "1", "-s", "/bin/true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "udhcpc got a lease after the garbage");
    assert_eq!(leases(&lab).len(), 1);
}

/// One reply seen on the client's link: Ethernet and IP destinations.
fn replies_seen(capture: &str) -> Vec<(String, String)> {
    // `tcpdump -e -n`: "<src mac> > <dst mac>, ethertype IPv4 ..., length N: <src>.67 > <dst>.68: BOOTP/DHCP, Reply"
    capture
        .lines()
        .filter(|l| l.contains("BOOTP/DHCP, Reply"))
        .filter_map(|l| {
            let (link, ip) = l.split_once(": ")?;
            let eth_dst = link.split(" > ").nth(1)?.split(',').next()?.trim().to_owned();
            let ip_dst = ip.split(" > ").nth(1)?.split(':').next()?.trim_end_matches(".68").to_owned();
            Some((eth_dst, ip_dst))
        })
        .collect()
}

/// udhcpc once in the client namespace, with `extra` flags, while tcpdump
/// watches the server's replies: the replies seen and the address bound.
fn udhcpc_watched(lab: &Lab, extra: &[&str]) -> (Vec<(String, String)>, String) {
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("script.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let capture = out.path().join("capture.txt");
    let mut tcpdump = lab
        .cli
        .exec(&["timeout", "60", "tcpdump", "-i", "vc0", "-e", "-n", "-l", "-U", "udp and src port 67"])
        .stdout(std::fs::File::create(&capture).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // tcpdump says "listening on" once its capture is in place.
    let mut err = std::io::BufReader::new(tcpdump.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("listening on") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "tcpdump ended: {said}");
        said.push_str(&line);
    }
    let mut args = vec!["timeout", "30", "udhcpc", "-f", "-q", "-n", "-i", "vc0", "-t", "5", "-T", "1"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-s", script.to_str().unwrap()]);
    let st = lab.cli.exec(&args).env("OUT", out.path()).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(st.success(), "udhcpc {extra:?} got a lease");
    std::thread::sleep(Duration::from_millis(300));
    netns::run(&["kill", "-INT", &tcpdump.id().to_string()]);
    let _ = tcpdump.wait();
    let bound = events(out.path(), "bound").remove(0);
    let ip = env_var(&bound, "ip").unwrap().to_owned();
    lab.cli.ip(&["addr", "flush", "dev", "vc0"]);
    (replies_seen(&std::fs::read_to_string(&capture).unwrap()), ip)
}

#[test]
fn replies_to_clients_without_an_address_are_unicast_unless_they_ask_for_broadcast() {
    if !netns::available() || !have("udhcpc") || !have("tcpdump") || !have("setpriv") {
        return;
    }
    let lab = lab(&[lab_subnet()]);
    let mac = client_mac(&lab);
    // udhcpc sets no broadcast flag: the OFFER and the ACK go to its MAC
    // and to the address being given, as RFC 2131 §4.1 says.
    let (seen, ip) = udhcpc_watched(&lab, &[]);
    assert!(seen.len() >= 2, "an OFFER and an ACK: {seen:?}");
    assert!(seen.iter().all(|(eth, dst)| *eth == mac && *dst == ip), "unicast to {mac} / {ip}: {seen:?}");
    // The ARP entry the server set for the unicast is gone once it is out.
    let neigh = lab.srv.exec(&["ip", "neigh", "show", "to", &ip, "dev", "vs0"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&neigh.stdout).trim(), "", "no ARP entry left for {ip}");
    // An entry the host already has for the address, naming another MAC,
    // is neither used nor replaced: the reply is broadcast.
    lab.srv.ip(&["neigh", "replace", &ip, "lladdr", "02:00:00:00:00:99", "nud", "permanent", "dev", "vs0"]);
    let (seen, again) = udhcpc_watched(&lab, &[]);
    assert_eq!(again, ip, "the same address again");
    assert!(seen.iter().all(|(eth, _)| eth == "ff:ff:ff:ff:ff:ff"), "broadcast past a foreign entry: {seen:?}");
    let neigh = lab.srv.exec(&["ip", "neigh", "show", "to", &ip, "dev", "vs0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&neigh.stdout).contains("02:00:00:00:00:99"), "the entry is untouched");
    lab.srv.ip(&["neigh", "del", &ip, "dev", "vs0"]);
    // With the flag (-B), broadcast.
    let (seen, _) = udhcpc_watched(&lab, &["-B"]);
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter().all(|(eth, dst)| eth == "ff:ff:ff:ff:ff:ff" && dst == "255.255.255.255"),
        "broadcast: {seen:?}"
    );
    drop(lab);

    // A server without CAP_NET_ADMIN cannot tell the kernel the client's
    // MAC: it says so once and broadcasts, and the client still gets its
    // lease.
    let lab = lab_as(&[lab_subnet()], &["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]);
    let (seen, _) = udhcpc_watched(&lab, &[]);
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|(eth, _)| eth == "ff:ff:ff:ff:ff:ff"), "broadcast instead: {seen:?}");
    let log = lab.server.log.lock().unwrap().join("\n");
    assert_eq!(log.matches("cannot set the client's ARP entry").count(), 1, "said once: {log}");
}

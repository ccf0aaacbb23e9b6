//! Debian's Prometheus scrapes Plinth's metrics listener while perfdhcp
//! runs a small storm, and its query API returns the DHCP, boot HTTP, API
//! and machine series with the values the clients and the test's own calls imply.
//! `/healthz` and `/readyz` answer without a token on both listeners, say
//! nothing more, and `/readyz` fails when a configured listener is down.

mod common;

use common::netns::{self, Netns};
use common::{Server, have, ok};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SUBNET: &str = r#"{"name": "m", "cidr": "10.67.0.0/16", "range_start": "10.67.1.0", "range_end": "10.67.255.254",
    "interface": "vs0", "lease_secs": 3600, "unknown_share": 100}"#;

/// The value of an instant query through Prometheus's HTTP API (in the
/// server's namespace), once it has one.
fn query(srv: &Netns, q: &str) -> f64 {
    let url = format!("http://127.0.0.1:19090/api/v1/query?query={}", urlencode(q));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = srv.exec(&["curl", "-sS", "--max-time", "5", &url]).output().unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if let Some(s) = v["data"]["result"][0]["value"][1].as_str() {
            return s.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "Prometheus has no value for {q}: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `curl` inside `ns`: (status, body).
fn curl(ns: &Netns, args: &[&str]) -> (u16, String) {
    let mut all = vec!["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let o = ns.exec(&all).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.trim().to_owned())
}

#[test]
fn prometheus_scrapes_dhcp_api_and_machine_series_during_a_storm() {
    if !netns::available() || !have("prometheus") || !have("perfdhcp") || !have("curl") {
        return;
    }
    let srv = Netns::new("msrv");
    let cli = Netns::new("mcli");
    netns::veth(&srv, "vs0", &cli, "vc0");
    srv.ip(&["addr", "add", "10.67.0.1/16", "dev", "vs0"]);
    cli.ip(&["addr", "add", "10.67.0.2/16", "dev", "vc0"]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &srv.prefix(),
        &["--http-addr", "10.67.0.1:0", "--tftp-addr", "off", "--metrics-addr", "127.0.0.1:0"],
    );
    let metrics = server.services["metrics"].clone();
    std::fs::write(server.files().join("hello.txt"), "hello").unwrap();
    let boot = server.services["http"].clone();
    assert_eq!(curl(&cli, &[&format!("{boot}/files/hello.txt")]), (200, "hello".into()));
    assert_eq!(curl(&cli, &[&format!("{boot}/files/missing.txt")]).0, 404);
    let target = metrics.trim_start_matches("http://").trim_end_matches("/metrics").to_owned();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    ok(server.cli(&["subnets", "create", "--data", SUBNET], None));
    for i in 1..=3 {
        let m = format!(r#"{{"name": "node-{i}", "macs": ["52:54:00:77:00:0{i}"]}}"#);
        ok(server.cli(&["machines", "create", "--data", &m], None));
    }

    // Probes: no token, nothing but the word.
    let ca = server.ca();
    let api = server.url.clone();
    assert_eq!(curl(&srv, &["--cacert", ca.to_str().unwrap(), &format!("{api}/healthz")]), (200, "ok".into()));
    assert_eq!(curl(&srv, &["--cacert", ca.to_str().unwrap(), &format!("{api}/readyz")]), (200, "ready".into()));
    assert_eq!(curl(&srv, &[&format!("http://{target}/readyz")]), (200, "ready".into()));
    let (status, body) = curl(&srv, &["-D", "/dev/stderr", &metrics]);
    assert_eq!(status, 200);
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text: {body}");

    // Prometheus from Debian's package, scraping every second.
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: plinth\n    static_configs: [{{targets: ['{target}']}}]\n"),
    )
    .unwrap();
    let mut prometheus = srv
        .exec(&[
            "timeout",
            "120",
            "prometheus",
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            "--web.listen-address=127.0.0.1:19090",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // A small storm: 300 exchanges a second for 4 s.
    let out = cli
        .exec(&[
            "timeout",
            "60",
            "perfdhcp",
            "-4",
            "-l",
            "10.67.0.2",
            "-r",
            "300",
            "-R",
            "5000",
            "-p",
            "4",
            "10.67.0.1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (discovers, offers) = common::perfdhcp_counts(&text, "DISCOVER-OFFER");
    let (_, acks) = common::perfdhcp_counts(&text, "REQUEST-ACK");
    assert!(acks > 500, "the storm got leases: {text}");
    // Let two scrapes land after the storm.
    std::thread::sleep(Duration::from_secs(3));

    let received = query(&srv, r#"plinth_dhcp_received_total{type="discover"}"#);
    assert!(
        received >= offers as f64 && received <= discovers as f64 + 10.0,
        "{received} DISCOVERs counted; perfdhcp sent {discovers}"
    );
    let decided = query(&srv, r#"plinth_dhcp_decided_total{type="ack"}"#);
    assert!(decided >= acks as f64, "{decided} ACKs counted; perfdhcp got {acks}");
    let writes = query(&srv, "plinth_dhcp_lease_writes_total");
    assert!(writes >= acks as f64, "every ACK's lease was written: {writes} < {acks}");
    assert!(query(&srv, "plinth_dhcp_commits_total") >= 1.0);
    assert!(query(&srv, "plinth_dhcp_commit_seconds_count") >= 1.0);
    assert_eq!(query(&srv, r#"sum(plinth_dhcp_shed_total)"#), 0.0, "nothing shed at 300/s");
    assert_eq!(query(&srv, r#"plinth_machines{state="idle"}"#), 3.0);
    assert_eq!(query(&srv, r#"plinth_machines{state="running"}"#), 0.0);
    assert!(query(&srv, r#"plinth_boot_http_answers_total{class="2xx"}"#) >= 1.0);
    assert!(query(&srv, r#"plinth_boot_http_answers_total{class="4xx"}"#) >= 1.0);
    assert!(query(&srv, "plinth_boot_http_bytes_total") >= 5.0);
    let created = query(
        &srv,
        r#"sum(plinth_api_request_duration_seconds_count{route="/api/v1/{kind}",method="POST",status="201"})"#,
    );
    assert!(created >= 4.0, "a subnet and three machines created: {created}");

    netns::run(&["kill", &prometheus.id().to_string()]);
    let _ = prometheus.wait();
}

#[test]
fn readyz_fails_when_a_configured_listener_is_down_and_says_nothing_more() {
    if !have("curl") {
        return;
    }
    // Hold a port, then ask the server to serve boot HTTP on it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[],
        &["--http-addr", &busy, "--tftp-addr", "off", "--dhcp-port", "off", "--metrics-addr", "127.0.0.1:0"],
    );
    // The server may report the failed listener before the metrics one.
    let metrics = (0..100)
        .find_map(|_| {
            let found = server.log.lock().unwrap().iter().find(|l| l.contains("service=\"metrics\"")).cloned();
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            found
        })
        .and_then(|l| l.split("url=").nth(1).and_then(|u| u.split_whitespace().next()).map(str::to_owned))
        .expect("the metrics listener is up");
    let base = metrics.trim_end_matches("/metrics");
    let get = |url: &str, ca: bool| {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
        if ca {
            c.arg("--cacert").arg(server.ca());
        }
        let o = c.arg(url).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.trim().to_owned())
    };
    assert_eq!(get(&format!("{}/readyz", server.url), true), (503, "not ready".into()));
    assert_eq!(get(&format!("{base}/readyz"), false), (503, "not ready".into()));
    assert_eq!(get(&format!("{}/healthz", server.url), true), (200, "ok".into()), "alive all the same");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("readyz: listeners down"), "the log says why: {log}");
    drop(taken);
}

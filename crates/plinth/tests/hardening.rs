//! Hostile input through a running server: malformed and hostile boot HTTP
//! paths, TFTP packets and API bodies each get a clear error, never a file
//! from outside the served roots, and never a change to what is stored; the
//! server keeps serving throughout. Also: failed logins are rate limited,
//! and a client that sends its headers too slowly is cut off.

mod common;

use common::{Api, Server};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const OUTSIDE: &str = "OUTSIDE-THE-ROOT-7d1c";

/// Sends `path` exactly as given (no client normalisation) and returns the
/// status and the whole response.
fn raw_get(addr: &str, path: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(path);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Every object of every kind, as a comparable snapshot (tokens aside:
/// logging in mints them).
async fn snapshot(api: &Api) -> Vec<Value> {
    let mut all = Vec::new();
    for kind in [
        "machines",
        "bootenvs",
        "templates",
        "params",
        "profiles",
        "tasks",
        "stages",
        "workflows",
        "jobs",
        "subnets",
        "reservations",
        "leases",
        "users",
        "roles",
        "contents",
    ] {
        let r = api.get(&format!("/api/v1/{kind}?limit=10000")).await;
        assert_eq!(r.status, 200);
        all.push(r.body["items"].clone());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_tftp_and_api_input_gets_clear_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path());
    let api = server.api().await;
    std::fs::write(dir.path().join("outside.txt"), OUTSIDE).unwrap();
    std::fs::create_dir_all(server.files().join("sub")).unwrap();
    std::fs::write(server.files().join("ok.txt"), "inside").unwrap();
    std::fs::write(server.files().join("sub/inner.txt"), "inner").unwrap();
    let http = server.addr("http");
    let mut count = 0;

    // Boot HTTP: traversal in every spelling, NUL bytes, overlong paths,
    // garbage MACs. Each is a 4xx; nothing from outside the root.
    let long = format!("/files/{}", "a/".repeat(3000));
    let deep = format!("/files/{}outside.txt", "../".repeat(200));
    let mut paths: Vec<Vec<u8>> = [
        "/files/../outside.txt",
        "/files/../../etc/passwd",
        "/files/%2e%2e/outside.txt",
        "/files/%2E%2E/outside.txt",
        "/files/%2e%2e%2foutside.txt",
        "/files/..%2foutside.txt",
        "/files/..%2Foutside.txt",
        "/files/%252e%252e/outside.txt",
        "/files/%252e%252e%252foutside.txt",
        "/files/%25%32%65%25%32%65/outside.txt",
        "/files/sub/../../outside.txt",
        "/files/sub/%2e%2e/%2e%2e/outside.txt",
        "/files/./../outside.txt",
        "/files/.%2e/outside.txt",
        "/files/%2e./outside.txt",
        "/files/..\\outside.txt",
        "/files/..%5coutside.txt",
        "/files/%c0%ae%c0%ae/outside.txt",
        "/files/%c0%ae%c0%ae%c0%afoutside.txt",
        "/files/%e0%80%ae%e0%80%ae/outside.txt",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/%2Fetc/passwd",
        "/files/ok.txt%00.png",
        "/files/ok.txt%00",
        "/files/%00",
        "/files/sub/inner.txt%00/../../outside.txt",
        "/files/%zz",
        "/files/%",
        "/files/%2",
        "/files/sub/%ff%fe",
        "/files/..",
        "/files/.",
        "/files/sub/..",
        "/files/",
        "/files",
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/machines/../outside.txt",
        "/machines/52-54-00-12-34-56/../../outside.txt",
        "/machines/52-54-00-12-34-56/%2e%2e/%2e%2e/outside.txt",
        "/machines/not-a-mac/kickstart.cfg",
        "/machines/52-54-00-12-34/kickstart.cfg",
        "/machines/52-54-00-12-34-56/",
        "/ipxe/not-a-mac",
        "/ipxe/52:54:00:12:34:56:78",
        "/ipxe/%00",
        "/ipxe/../outside.txt",
        "/api/v1/machines",
        "/api/v1/auth/token",
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .collect();
    paths.push(long.into_bytes());
    paths.push(deep.clone().into_bytes());
    paths.push(b"/files/ok.txt\x00".to_vec());
    paths.push(b"/files/\xff\xfe".to_vec());
    let before = snapshot(&api).await;
    for p in &paths {
        let (status, text) = raw_get(&http, p);
        let shown = String::from_utf8_lossy(p);
        assert!((400..500).contains(&status), "{shown}: {status}\n{text}");
        assert!(!text.contains(OUTSIDE) && !text.contains("root:x:0:0"), "{shown} leaked");
        count += 1;
    }
    // Still serving, and a path that stays inside after `..` is fine.
    let (status, text) = raw_get(&http, b"/files/sub/../ok.txt");
    assert!((status == 200 && text.ends_with("inside")) || (400..500).contains(&status), "{text}");
    assert!(raw_get(&http, b"/files/ok.txt").1.ends_with("inside"));

    // TFTP: malformed packets, hostile names and options. Each gets an
    // ERROR packet; none gets data from outside the root.
    let tftp = server.addr("tftp");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let rrq = |name: &[u8], mode: &[u8], opts: &[(&[u8], &[u8])]| {
        let mut p = vec![0, 1];
        p.extend_from_slice(name);
        p.push(0);
        p.extend_from_slice(mode);
        p.push(0);
        for (k, v) in opts {
            p.extend_from_slice(k);
            p.push(0);
            p.extend_from_slice(v);
            p.push(0);
        }
        p
    };
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![0, 1],
        vec![0, 1, 0],
        vec![0, 7, b'x', 0, b'o', b'c', b't', b'e', b't', 0],
        vec![0, 99],
        vec![255, 255, 1, 2, 3],
        vec![0, 3, 0, 1, b'd', b'a', b't', b'a'],
        vec![0, 4, 0, 1],
        vec![0, 5, 0, 1, b'e', 0],
        vec![0, 6, b'b', b'l', b'k', 0],
        vec![0, 1, b'o', b'k', b'.', b't', b'x', b't'],
        vec![0, 1, b'o', b'k', b'.', b't', b'x', b't', 0, b'o', b'c', b't', b'e', b't'],
        vec![0; 600],
        vec![0xff; 1400],
        rrq(b"ok.txt", b"mail", &[]),
        rrq(b"ok.txt", b"", &[]),
        rrq(b"ok.txt", b"\xff\xfe", &[]),
        rrq(b"", b"octet", &[]),
        rrq(&[b'a'; 3000], b"octet", &[]),
    ];
    for name in [
        &b"../outside.txt"[..],
        b"../../etc/passwd",
        b"/etc/passwd",
        b"sub/../../outside.txt",
        b"..\\outside.txt",
        b"%2e%2e/outside.txt",
        b"ok.txt/../../outside.txt",
        b"/../outside.txt",
        b"....//outside.txt",
        b"sub/../../../../../../etc/shadow",
        b"..",
        b".",
        b"sub",
        b"sub/",
        b"\xff\xfe",
        b"no-such-file",
        b"ipxe/../../outside.txt",
        b"machines/../../outside.txt",
    ] {
        packets.push(rrq(name, b"octet", &[]));
        packets.push(rrq(name, b"netascii", &[]));
    }
    // Write requests are refused whatever they name.
    packets.push({
        let mut p = rrq(b"new.txt", b"octet", &[]);
        p[1] = 2;
        p
    });
    packets.push({
        let mut p = rrq(b"../outside.txt", b"octet", &[]);
        p[1] = 2;
        p
    });
    for p in &packets {
        sock.send_to(p, &tftp).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer to {p:?}: {e}"));
        let reply = &buf[..n];
        assert_eq!(
            &reply[..2],
            &[0, 5],
            "an ERROR packet for {:?}: {:?}",
            String::from_utf8_lossy(p),
            String::from_utf8_lossy(reply)
        );
        assert!(!String::from_utf8_lossy(reply).contains(OUTSIDE));
        count += 1;
    }
    // Hostile options on a real file: the transfer still stays in bounds.
    for (k, v) in [
        (&b"blksize"[..], &b"0"[..]),
        (b"blksize", b"1"),
        (b"blksize", b"70000"),
        (b"blksize", b"-5"),
        (b"blksize", b"99999999999999999999"),
        (b"tsize", b"-1"),
        (b"timeout", b"0"),
        (b"timeout", b"256"),
        (b"windowsize", b"0"),
        (b"windowsize", b"100000"),
    ] {
        sock.send_to(&rrq(b"ok.txt", b"octet", &[(k, v)]), &tftp).unwrap();
        let mut buf = [0u8; 70000];
        let (n, from) = sock.recv_from(&mut buf).expect("an answer");
        let reply = &buf[..n];
        // An ERROR, an OACK the client must acknowledge, or the data itself.
        assert!(matches!(reply[..2], [0, 5] | [0, 6] | [0, 3]), "{k:?}={v:?}: {reply:?}");
        if reply[..2] == [0, 3] {
            assert_eq!(&reply[4..], b"inside");
        }
        // End the transfer politely.
        let _ = sock.send_to(&[0, 5, 0, 0, b'x', 0], from);
        count += 1;
    }
    // 40 transfers at once from one address: the ones past the per-client
    // limit are refused as busy. (First drain what earlier transfers sent.)
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while sock.recv_from(&mut [0u8; 2048]).is_ok() {}
    sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut busy = 0;
    for _ in 0..40 {
        sock.send_to(&rrq(b"ok.txt", b"octet", &[]), &tftp).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answers = 0;
    while answers < 40 && Instant::now() < deadline {
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            answers += 1;
            if buf[..2] == [0, 5] && String::from_utf8_lossy(&buf[4..n]).contains("too many transfers") {
                busy += 1;
            }
        }
    }
    assert_eq!(busy, 8, "40 requests, 32 allowed at once per client");

    // API bodies: malformed, mistyped, oversized, hostile. Each is a 4xx
    // with a JSON error saying what was wrong.
    let send_raw = |method: &str, path: &str, ctype: Option<&str>, body: Vec<u8>| {
        let client = server.http();
        let url = format!("{}{path}", api.url);
        let token = api.token.clone();
        let method: reqwest::Method = method.parse().unwrap();
        let ctype = ctype.map(str::to_owned);
        async move {
            let mut r = client.request(method, url).bearer_auth(token).body(body);
            if let Some(c) = ctype {
                r = r.header("content-type", c);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let nested = "[".repeat(10_000) + &"]".repeat(10_000);
    let big = json!({"name": "big", "contents": "x".repeat(5 * 1024 * 1024)}).to_string();
    let mut bodies: Vec<(&str, String, Vec<u8>)> = vec![
        ("/api/v1/machines", "POST".into(), b"".to_vec()),
        ("/api/v1/machines", "POST".into(), b"{".to_vec()),
        ("/api/v1/machines", "POST".into(), b"not json".to_vec()),
        ("/api/v1/machines", "POST".into(), b"\xff\xfe{}".to_vec()),
        ("/api/v1/machines", "POST".into(), b"[]".to_vec()),
        ("/api/v1/machines", "POST".into(), b"null".to_vec()),
        ("/api/v1/machines", "POST".into(), b"42".to_vec()),
        ("/api/v1/machines", "POST".into(), b"\"string\"".to_vec()),
        ("/api/v1/machines", "POST".into(), nested.clone().into_bytes()),
        ("/api/v1/templates", "POST".into(), big.clone().into_bytes()),
    ];
    let hostile: Vec<(&str, Value)> = vec![
        ("/api/v1/machines", json!({})),
        ("/api/v1/machines", json!({"name": ""})),
        ("/api/v1/machines", json!({"name": "../etc"})),
        ("/api/v1/machines", json!({"name": "a/b"})),
        ("/api/v1/machines", json!({"name": "x\u{0}y"})),
        ("/api/v1/machines", json!({"name": "n".repeat(300)})),
        ("/api/v1/machines", json!({"name": 5})),
        ("/api/v1/machines", json!({"name": "m", "macs": ["zz:zz"]})),
        ("/api/v1/machines", json!({"name": "m", "macs": "52:54:00:00:00:01"})),
        ("/api/v1/machines", json!({"name": "m", "id": "not-a-uuid"})),
        ("/api/v1/machines", json!({"name": "m", "unknown_field": 1})),
        ("/api/v1/machines", json!({"name": "m", "params": {"undefined-param": 1}})),
        ("/api/v1/machines", json!({"name": "m", "arch": "sparc"})),
        ("/api/v1/machines", json!({"name": "m", "address": "999.1.1.1"})),
        ("/api/v1/machines", json!({"name": "m", "profiles": "p"})),
        ("/api/v1/machines", json!({"name": "m", "revision": "x"})),
        ("/api/v1/machines", json!({"name": "m", "params": {"$sealed": "v1.a.b"}})),
        (
            "/api/v1/subnets",
            json!({"name": "s", "cidr": "10.0.0.0/33", "range_start": "10.0.0.1", "range_end": "10.0.0.2"}),
        ),
        (
            "/api/v1/subnets",
            json!({"name": "s", "cidr": "10.0.0.0/24", "range_start": "10.0.1.1", "range_end": "10.0.0.2"}),
        ),
        (
            "/api/v1/subnets",
            json!({"name": "s", "cidr": "10.0.0.0/24", "range_start": "10.0.0.9", "range_end": "10.0.0.2"}),
        ),
        ("/api/v1/subnets", json!({"name": "s", "cidr": "banana"})),
        (
            "/api/v1/subnets",
            json!({"name": "s", "cidr": "10.0.0.0/24", "range_start": "10.0.0.1", "range_end": "10.0.0.9", "options": [{"code": 300}]}),
        ),
        ("/api/v1/reservations", json!({"mac": "52:54:00:00:00:01", "address": "not-an-ip"})),
        ("/api/v1/reservations", json!({"mac": "nope", "address": "10.0.0.5"})),
        ("/api/v1/params", json!({"name": "p", "schema": {"type": "no-such-type"}})),
        ("/api/v1/params", json!({"name": "p", "schema": "not a schema"})),
        ("/api/v1/params", json!({"name": "p", "schema": {"type": "string", "default": 5}})),
        ("/api/v1/templates", json!({"name": "t", "contents": "{% if %}"})),
        ("/api/v1/templates", json!({"name": "t", "contents": "{{ unclosed"})),
        ("/api/v1/templates", json!({"name": "t", "contents": "{% for x in %}{% endfor %}"})),
        ("/api/v1/templates", json!({"name": "t"})),
        ("/api/v1/bootenvs", json!({"name": "b", "templates": [{"name": "x"}]})),
        ("/api/v1/bootenvs", json!({"name": "b", "variants": [{"arch": "mips"}]})),
        ("/api/v1/bootenvs", json!({"name": "b", "boot_args": "{{ broken"})),
        ("/api/v1/profiles", json!({"name": "p", "profiles": ["p"]})),
        ("/api/v1/profiles", json!({"name": "p", "params": "x"})),
        ("/api/v1/users", json!({"name": "u", "password": "short"})),
        ("/api/v1/users", json!({"name": "u", "password_hash": "$argon2id$forged"})),
        ("/api/v1/users", json!({"name": "u", "roles": ["no-such-role"]})),
        ("/api/v1/roles", json!({"name": "r", "claims": [{"kind": "*", "action": "launch"}]})),
        ("/api/v1/roles", json!({"name": "r", "claims": [{"kind": "rockets", "action": "read"}]})),
        ("/api/v1/roles", json!({"name": "r", "claims": "all"})),
        ("/api/v1/workflows", json!({"name": "w", "stages": "not-a-list"})),
        ("/api/v1/stages", json!({"name": "s", "tasks": [5]})),
        ("/api/v1/tasks", json!({"name": "t", "templates": [{"name": "x", "contents": "{% if"}]})),
        ("/api/v1/jobs", json!({"machine": "not-a-uuid", "task": "t"})),
        ("/api/v1/leases", json!({"address": "10.0.0.1", "mac": "x", "subnet": "s", "expires_at": "yesterday"})),
        ("/api/v1/render", json!({"machine": "nope", "contents": "x"})),
        ("/api/v1/render", json!({"contents": "x"})),
        ("/api/v1/render", json!({"machine": "nope", "template": "a", "contents": "b"})),
        ("/api/v1/join-tokens", json!({"uses": -1})),
        ("/api/v1/join-tokens", json!({"ttl_secs": 99999999999u64})),
        ("/api/v1/join-tokens", json!({"workflow": "../x"})),
        ("/api/v1/rockets", json!({"name": "x"})),
        ("/api/v1/tokens", json!({"user": "admin"})),
    ];
    for (path, body) in &hostile {
        bodies.push((path, "POST".into(), body.to_string().into_bytes()));
    }
    // Content packs: malformed and hostile bundles, planned and installed.
    let obj = |kind: &str, body: Value| json!({"kind": kind, "key": body["name"].clone(), "body": body});
    let bundle = |manifest: Value, objects: Vec<Value>| json!({"format": "plinth-pack/1", "manifest": manifest, "objects": objects});
    let good = json!({"name": "p", "version": "1.0.0"});
    let packs: Vec<Value> = vec![
        json!({}),
        json!({"format": "plinth-pack/9", "manifest": good, "objects": []}),
        json!({"format": "plinth-pack/1", "objects": []}),
        bundle(json!({"name": "p"}), vec![]),
        bundle(json!({"name": "P Q", "version": "1.0.0"}), vec![]),
        bundle(json!({"name": "p", "version": "latest"}), vec![]),
        bundle(json!({"name": "p", "version": "1.0.0", "requires": [{"name": "x", "version": "??"}]}), vec![]),
        bundle(json!({"name": "p", "version": "1.0.0", "plinth": ">=99"}), vec![]),
        bundle(json!({"name": "p", "version": "1.0.0", "evil": true}), vec![]),
        bundle(
            good.clone(),
            vec![json!({"kind": "users", "key": "root", "body": {"name": "root", "roles": ["admin"]}})],
        ),
        bundle(good.clone(), vec![json!({"kind": "tokens", "key": "t", "body": {}})]),
        bundle(
            good.clone(),
            vec![json!({"kind": "roles", "key": "r", "body": {"name": "r", "claims": [{"kind": "*", "action": "*"}]}})],
        ),
        bundle(good.clone(), vec![json!({"kind": "machines", "key": "m", "body": {"name": "m"}})]),
        bundle(good.clone(), vec![obj("templates", json!({"name": "t", "contents": "{% if %}"}))]),
        bundle(good.clone(), vec![obj("templates", json!({"name": "../../etc/passwd", "contents": "x"}))]),
        bundle(
            good.clone(),
            vec![
                obj("templates", json!({"name": "t", "contents": "x"})),
                obj("templates", json!({"name": "t", "contents": "y"})),
            ],
        ),
        bundle(good.clone(), vec![obj("params", json!({"name": "p", "schema": {"type": "nope"}}))]),
        bundle(good.clone(), vec![obj("bootenvs", json!({"name": "b", "boot_args": "{{ unclosed"}))]),
        bundle(
            good.clone(),
            vec![json!({"kind": "templates", "key": "other", "body": {"name": "t", "contents": "x"}})],
        ),
        bundle(
            good.clone(),
            vec![obj("templates", json!({"name": "t", "contents": "x", "meta": {"pack": "someone-else"}, "extra": 1}))],
        ),
    ];
    // Well-formed but unsafe: the plan says why (200, with errors), the
    // install is refused (409).
    let unsafe_packs: Vec<Value> = vec![
        bundle(
            good.clone(),
            vec![obj(
                "bootenvs",
                json!({"name": "b", "templates": [{"name": "f", "template": "missing-template", "path": "f"}]}),
            )],
        ),
        bundle(good.clone(), vec![obj("workflows", json!({"name": "w", "stages": ["missing-stage"]}))]),
        bundle(
            json!({"name": "p", "version": "1.0.0", "requires": [{"name": "not-installed", "version": ">=1"}]}),
            vec![],
        ),
        bundle(good.clone(), vec![obj("templates", json!({"name": "kickstart", "contents": "hijacked"}))]),
        bundle(good.clone(), vec![obj("profiles", json!({"name": "global", "params": {}}))]),
        // A pack that would carry a secret in the clear.
        bundle(
            good.clone(),
            vec![
                obj("params", json!({"name": "pack-secret", "secure": true, "schema": {"type": "string"}})),
                obj("profiles", json!({"name": "leaky", "params": {"pack-secret": "hunter2-in-the-clear"}})),
            ],
        ),
    ];
    for p in &packs {
        for path in ["/api/v1/contents/plan", "/api/v1/contents/install"] {
            bodies.push((path, "POST".into(), p.to_string().into_bytes()));
        }
    }
    bodies.push(("/api/v1/contents/install", "POST".into(), b"not a bundle".to_vec()));
    bodies.push(("/api/v1/contents/install", "POST".into(), vec![]));
    bodies.push(("/api/v1/contents/nope/rollback", "POST".into(), vec![]));
    bodies.push(("/api/v1/contents/nope/promote", "POST".into(), vec![]));
    for (path, method, body) in &bodies {
        let (status, reply) = send_raw(method, path, Some("application/json"), body.clone()).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path} {}: {status} {reply}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        if status != 413 {
            assert!(reply["detail"].as_str().is_some_and(|d| !d.is_empty()), "{path}: a clear error: {reply}");
        }
        count += 1;
    }
    for p in &unsafe_packs {
        let (status, reply) =
            send_raw("POST", "/api/v1/contents/plan", Some("application/json"), p.to_string().into_bytes()).await;
        assert_eq!(status, 200, "{p}: {reply}");
        assert!(!reply["errors"].as_array().unwrap().is_empty(), "{p}: {reply}");
        let (status, reply) =
            send_raw("POST", "/api/v1/contents/install", Some("application/json"), p.to_string().into_bytes()).await;
        assert_eq!(status, 409, "{p}: {reply}");
        count += 2;
    }
    // Wrong content type, bad query values, bad preconditions and keys.
    for (method, path, ctype, body) in [
        ("POST", "/api/v1/machines", Some("text/plain"), b"{\"name\": \"m\"}".to_vec()),
        ("POST", "/api/v1/machines", Some("application/xml"), b"<m/>".to_vec()),
        ("GET", "/api/v1/machines?limit=-1", None, vec![]),
        ("GET", "/api/v1/machines?limit=0", None, vec![]),
        ("GET", "/api/v1/machines?limit=999999999", None, vec![]),
        ("GET", "/api/v1/machines?no_such_field=1", None, vec![]),
        ("GET", "/api/v1/boot-events?mac=zz", None, vec![]),
        ("GET", "/api/v1/audit?limit=abc", None, vec![]),
        ("GET", "/api/v1/machines/not-a-uuid/params", None, vec![]),
        ("GET", "/api/v1/machines/%00/params", None, vec![]),
        ("POST", "/api/v1/machines/not-a-uuid/workflow", Some("application/json"), b"{\"workflow\": \"x\"}".to_vec()),
        ("POST", "/api/v1/jobs/not-a-uuid/finish", Some("application/json"), b"{\"exit_code\": 0}".to_vec()),
        ("PUT", "/api/v1/templates/nope", Some("application/json"), b"{\"contents\": \"x\"}".to_vec()),
        ("PATCH", "/api/v1/templates/nope", Some("application/json"), b"[1]".to_vec()),
        ("DELETE", "/api/v1/templates/nope", None, vec![]),
        ("DELETE", "/api/v1/profiles/global", None, vec![]),
        ("DELETE", "/api/v1/users/admin", None, vec![]),
        ("GET", "/api/v1/machines/%ff%fe", None, vec![]),
        ("TRACE", "/api/v1/machines", None, vec![]),
    ] {
        let (status, reply) = send_raw(method, path, ctype, body).await;
        assert!((400..500).contains(&status), "{method} {path}: {status} {reply}");
        count += 1;
    }
    let r = api
        .send(reqwest::Method::PUT, "/api/v1/profiles/global", Some(json!({"description": "x"})), Some("\"garbage\""))
        .await;
    assert_eq!(r.status, 400);
    count += 1;

    assert_eq!(snapshot(&api).await, before, "nothing stored changed");
    assert!(count >= 200, "{count} hostile inputs");
    println!("{count} hostile inputs refused");
    // And everything still works.
    assert_eq!(api.post("/api/v1/templates", json!({"name": "after", "contents": "ok"})).await.status, 201);
    assert!(raw_get(&http, b"/files/ok.txt").1.ends_with("inside"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_and_slow_clients_cut_off() {
    let server = Server::start();
    let login = |user: &str, pw: &str| {
        let (client, url) = (server.http(), format!("{}/api/v1/auth/token", server.url));
        let (user, pw) = (user.to_owned(), pw.to_owned());
        async move {
            let r = client.post(url).basic_auth(user, Some(pw)).send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
        }
    };
    for _ in 0..10 {
        assert_eq!(login("admin", "wrong-password").await.0, 401);
    }
    // The eleventh try is refused before the password is looked at, even
    // the right one.
    let (status, retry) = login("admin", common::PASSWORD).await;
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|s| s.parse::<u64>().unwrap() > 0));

    // Headers sent too slowly: the boot HTTP server closes the connection.
    let mut s = TcpStream::connect(server.addr("http")).unwrap();
    s.write_all(b"GET /files/x HTTP/1.1\r\nHost: a\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(25), "closed after {took:?}");
}

//! TFTP and boot HTTP against real clients: tftp-hpa and atftp fetch files
//! byte-identical with and without blksize/windowsize, curl does ranges and
//! conditional requests, small files kept in memory follow every change,
//! and traversal attempts are refused on both.
//! Everything runs on loopback.

mod common;

use common::{Server, have};
use std::path::Path;
use std::process::Command;

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(root: &Path, name: &str, bytes: &[u8]) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn split_addr(addr: &str) -> (String, String) {
    let (h, p) = addr.rsplit_once(':').unwrap();
    (h.to_owned(), p.to_owned())
}

#[test]
fn tftp_clients_fetch_files_byte_identical() {
    if !have("tftp") || !have("atftp") {
        return;
    }
    let server = Server::start();
    let files = [
        ("small.bin", data(1000, 1)),
        ("exact.bin", data(4096, 2)),
        ("empty.bin", Vec::new()),
        ("boot/nested/ipxe.efi", data(3 * 1024 * 1024 + 17, 3)),
    ];
    for (n, d) in &files {
        write(&server.files(), n, d);
    }
    let (host, port) = split_addr(&server.addr("tftp"));
    let out = tempfile::tempdir().unwrap();
    for (name, want) in &files {
        // tftp-hpa: plain RFC 1350 lock-step, no options.
        let dest = out.path().join("hpa");
        let st = Command::new("timeout")
            .args(["60", "tftp", "-m", "binary", &host, &port, "-c", "get", name])
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success(), "tftp-hpa get {name}");
        assert!(std::fs::read(&dest).unwrap() == *want, "tftp-hpa: {name} differs");

        // atftp with option negotiation.
        for opts in [
            &[][..],
            &["blksize 1468", "tsize 0"][..],
            &["blksize 8192", "windowsize 8"][..],
            &["blksize 512", "windowsize 4", "timeout 2"][..],
        ] {
            let dest = out.path().join("atftp");
            let _ = std::fs::remove_file(&dest);
            let mut c = Command::new("timeout");
            c.args(["60", "atftp", "--get", "-r", name, "-l"]).arg(&dest);
            for o in opts {
                c.args(["--option", o]);
            }
            let st = c.args([&host, &port]).status().unwrap();
            assert!(st.success(), "atftp {opts:?} get {name}");
            assert!(std::fs::read(&dest).unwrap() == *want, "atftp {opts:?}: {name} differs");
        }
    }
}

#[test]
fn tftp_serves_past_block_number_rollover() {
    if !have("atftp") {
        return;
    }
    let server = Server::start();
    // 512-byte blocks roll the 16-bit block number over after 32 MiB.
    let big = data(33 * 1024 * 1024 + 100, 9);
    write(&server.files(), "big.img", &big);
    let (host, port) = split_addr(&server.addr("tftp"));
    let dest = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("timeout")
        .args(["120", "atftp", "--get", "-r", "big.img", "-l"])
        .arg(dest.path())
        .args(["--option", "windowsize 16", &host, &port])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read(dest.path()).unwrap() == big, "rolled-over transfer differs");
}

#[test]
fn tftp_refuses_traversal_missing_files_and_writes() {
    if !have("tftp") {
        return;
    }
    let server = Server::start();
    write(&server.files(), "ok.txt", b"fine\n");
    std::fs::write(server.dir.join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(server.dir.join("outside.txt"), server.files().join("escape")).unwrap();
    let (host, port) = split_addr(&server.addr("tftp"));
    let out = tempfile::tempdir().unwrap();
    let get = |name: &str| {
        let dest = out.path().join("x");
        let _ = std::fs::remove_file(&dest);
        let o = Command::new("timeout")
            .args(["20", "tftp", "-m", "binary", &host, &port, "-c", "get", name])
            .arg(&dest)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (std::fs::read(&dest).ok().filter(|d| !d.is_empty()), text)
    };
    for bad in ["../outside.txt", "/../outside.txt", "..\\outside.txt", "escape", "a/../../outside.txt", "/etc/passwd"]
    {
        let (got, text) = get(bad);
        assert!(got.is_none(), "{bad}: served something");
        assert!(text.contains("Error code"), "{bad}: expected a TFTP error, got {text}");
    }
    let (_, text) = get("nope.bin");
    assert!(text.contains("Error code 1"), "missing file: {text}");
    let (got, _) = get("ok.txt");
    assert_eq!(got.as_deref(), Some(&b"fine\n"[..]));
    // netascii mode converts line ends on the wire and back.
    let dest = out.path().join("ascii");
    let st = Command::new("timeout")
        .args(["20", "tftp", "-m", "netascii", &host, &port, "-c", "get", "ok.txt"])
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&dest).unwrap(), b"fine\n");
    // Writes are refused.
    let src = out.path().join("up");
    std::fs::write(&src, "x").unwrap();
    let o = Command::new("timeout")
        .args(["20", "tftp", "-m", "binary", &host, &port, "-c", "put"])
        .arg(&src)
        .arg("up")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("Error code 2"), "put: {text}");
    assert!(!server.files().join("up").exists());
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let o = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-D", "-", "-o", "/dev/stdout", "--path-as-is"])
        .args(args)
        .output()
        .unwrap();
    // Headers come first, then the body.
    let text = o.stdout;
    let split = text.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(text.len());
    (String::from_utf8_lossy(&text[..split]).into_owned(), text[split..].to_vec())
}

fn status(headers: &str) -> u16 {
    headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn http_serves_files_with_ranges_and_validators() {
    if !have("curl") {
        return;
    }
    let server = Server::start();
    let body = data(1_000_000, 5);
    write(&server.files(), "images/disk.img", &body);
    let base = format!("{}/files", server.services["http"]);

    let (h, b) = curl(&[&format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 200);
    assert!(b == body, "full body identical");
    assert_eq!(header(&h, "content-length"), Some("1000000"));
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
    let etag = header(&h, "etag").unwrap().to_owned();
    let last_modified = header(&h, "last-modified").unwrap().to_owned();

    let (h, b) = curl(&["-r", "100-199", &format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 206);
    assert_eq!(header(&h, "content-range"), Some("bytes 100-199/1000000"));
    assert!(b == body[100..200]);
    let (h, b) = curl(&["-r", "-10", &format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 206);
    assert!(b == body[body.len() - 10..]);
    let (h, _) = curl(&["-r", "2000000-", &format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 416);
    assert_eq!(header(&h, "content-range"), Some("bytes */1000000"));

    let (h, b) = curl(&["-I", &format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 200);
    assert_eq!(header(&h, "content-length"), Some("1000000"));
    assert!(b.is_empty() || b.starts_with(b"HTTP/"), "HEAD has no body (curl -I repeats the headers)");

    let (h, _) = curl(&["-H", &format!("If-None-Match: {etag}"), &format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 304);
    let (h, _) = curl(&["-H", &format!("If-Modified-Since: {last_modified}"), &format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 304);
    // If-Range with a stale validator gets the whole file.
    let (h, _) = curl(&["-r", "0-9", "-H", "If-Range: \"stale\"", &format!("{base}/images/disk.img")]);
    assert_eq!(status(&h), 200);
}

/// Fetches `url` until its body is `want` (bounded): how long that took.
fn seen_within(url: &str, want: &[u8]) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        let (h, b) = curl(&[url]);
        if b == want || (want.is_empty() && status(&h) != 200) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "{url} still answers {h} {:?}",
            String::from_utf8_lossy(&b)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn http_small_files_kept_in_memory_follow_every_change_at_once() {
    if !have("curl") {
        return;
    }
    let server = Server::start();
    let root = server.files();
    let base = format!("{}/files", server.services["http"]);
    let url = format!("{base}/boot/menu.ipxe");
    write(&root, "boot/menu.ipxe", b"#!ipxe\necho one\n");
    // The watch is set up in the background: until then nothing is kept.
    let _ = seen_within(&url, b"#!ipxe\necho one\n");
    let (h1, _) = curl(&[&url]);
    let (h2, _) = curl(&[&url]);
    let etag = header(&h1, "etag").unwrap().to_owned();
    assert_eq!(header(&h2, "etag"), Some(etag.as_str()), "the same validators from memory");
    let (h, _) = curl(&["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!(status(&h), 304);
    let (h, b) = curl(&["-r", "7-10", &url]);
    assert_eq!((status(&h), b.as_slice()), (206, &b"echo"[..]));

    let mut worst = std::time::Duration::ZERO;
    // Rewritten in place, same size.
    std::fs::write(root.join("boot/menu.ipxe"), b"#!ipxe\necho two\n").unwrap();
    worst = worst.max(seen_within(&url, b"#!ipxe\necho two\n"));
    let (h, _) = curl(&[&url]);
    assert_ne!(header(&h, "etag"), Some(etag.as_str()), "a new ETag");
    // Replaced by rename, as deploy tools do.
    write(&root, "boot/.menu.tmp", b"#!ipxe\necho three\n");
    std::fs::rename(root.join("boot/.menu.tmp"), root.join("boot/menu.ipxe")).unwrap();
    worst = worst.max(seen_within(&url, b"#!ipxe\necho three\n"));
    // Through a symlink whose target changes, then is retargeted.
    write(&root, "a.cfg", b"a");
    write(&root, "b.cfg", b"b");
    std::os::unix::fs::symlink("a.cfg", root.join("current.cfg")).unwrap();
    let link = format!("{base}/current.cfg");
    let _ = seen_within(&link, b"a");
    std::fs::write(root.join("a.cfg"), b"A").unwrap();
    worst = worst.max(seen_within(&link, b"A"));
    std::fs::remove_file(root.join("current.cfg")).unwrap();
    std::os::unix::fs::symlink("b.cfg", root.join("current.cfg")).unwrap();
    worst = worst.max(seen_within(&link, b"b"));
    // A directory renamed away, and a file swapped for a link leaving the
    // root: neither is served from memory.
    std::fs::rename(root.join("boot"), root.join("old-boot")).unwrap();
    worst = worst.max(seen_within(&url, b""));
    let (h, _) = curl(&[&url]);
    assert_eq!(status(&h), 404);
    std::fs::write(server.dir.join("outside.txt"), "secret").unwrap();
    let _ = seen_within(&format!("{base}/b.cfg"), b"b");
    std::fs::remove_file(root.join("b.cfg")).unwrap();
    std::os::unix::fs::symlink(server.dir.join("outside.txt"), root.join("b.cfg")).unwrap();
    worst = worst.max(seen_within(&format!("{base}/b.cfg"), b""));
    let (h, b) = curl(&[&format!("{base}/b.cfg")]);
    assert_eq!(status(&h), 403);
    assert!(!String::from_utf8_lossy(&b).contains("secret"));
    eprintln!("http cache: every change served within {worst:?}");
}

#[test]
fn http_refuses_traversal_in_every_encoding() {
    if !have("curl") {
        return;
    }
    let server = Server::start();
    write(&server.files(), "ok.txt", b"ok");
    std::fs::write(server.dir.join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(server.dir.join("outside.txt"), server.files().join("escape")).unwrap();
    let base = format!("{}/files", server.services["http"]);
    for bad in [
        "../outside.txt",
        "%2e%2e/outside.txt",
        "%2E%2E%2Foutside.txt",
        "%252e%252e/outside.txt",
        "..%2foutside.txt",
        "..%5coutside.txt",
        "ok.txt%00.png",
        "escape",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "sub/..%2F..%2Foutside.txt",
    ] {
        let (h, b) = curl(&[&format!("{base}/{bad}")]);
        assert!(matches!(status(&h), 400 | 403 | 404), "{bad}: {h}");
        assert!(!String::from_utf8_lossy(&b).contains("secret"), "{bad} leaked");
    }
    let long = "a/".repeat(600);
    let (h, _) = curl(&[&format!("{base}/{long}x")]);
    assert!(matches!(status(&h), 403 | 404 | 414), "overlong: {h}");
    // The API is not reachable through the boot server.
    let (h, _) = curl(&[&format!("{}/api/v1/machines", server.services["http"])]);
    assert_eq!(status(&h), 404);
    let (h, b) = curl(&[&format!("{base}/ok.txt")]);
    assert_eq!((status(&h), b.as_slice()), (200, &b"ok"[..]), "still serving");
}

#[test]
fn per_machine_ipxe_scripts_come_from_the_generated_files_hook_over_tftp_and_http() {
    if !have("tftp") || !have("curl") {
        return;
    }
    let server = Server::start();
    write(&server.files(), "ipxe/default.ipxe", b"#!ipxe\necho default\n");
    write(&server.files(), "ipxe/52-54-00-12-34-56.ipxe", b"#!ipxe\necho mine\n");
    let (h, b) = curl(&[&format!("{}/ipxe/52:54:00:12:34:56", server.services["http"])]);
    assert_eq!((status(&h), b.as_slice()), (200, &b"#!ipxe\necho mine\n"[..]));
    assert_eq!(header(&h, "cache-control"), Some("no-store"));
    let (_, b) = curl(&[&format!("{}/ipxe/52-54-00-00-00-99", server.services["http"])]);
    assert_eq!(b, b"#!ipxe\necho default\n");
    let (h, _) = curl(&[&format!("{}/ipxe/not-a-mac", server.services["http"])]);
    assert_eq!(status(&h), 400);
    let (host, port) = split_addr(&server.addr("tftp"));
    let dest = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("timeout")
        .args(["20", "tftp", "-m", "binary", &host, &port, "-c", "get", "ipxe/52-54-00-12-34-56"])
        .arg(dest.path())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(dest.path()).unwrap(), b"#!ipxe\necho mine\n");
}

#[test]
fn a_port_that_cannot_be_bound_is_reported_and_the_rest_runs() {
    // Hold the TFTP port so the server cannot have it.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start_with(
        tmp.path(),
        &[],
        &["--http-addr", "127.0.0.1:0", "--tftp-addr", &addr, "--dhcp-port", "off"],
    );
    // The API and HTTP came up; the log says why TFTP did not.
    assert!(server.services.contains_key("http"));
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("cannot listen for TFTP") && log.contains("continuing without it"), "{log}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootenv_files_are_rendered_per_machine_over_http_and_tftp() {
    if !have("tftp") || !have("curl") {
        return;
    }
    let server = Server::start();
    let api = server.api().await;
    let post = |path: &'static str, body: serde_json::Value| {
        let api = &api;
        async move {
            let r = api.post(path, body).await;
            assert_eq!(r.status, 201, "{path}: {}", r.body);
        }
    };
    post("/api/v1/params", serde_json::json!({"name": "console", "schema": {"type": "string", "default": "ttyS0"}}))
        .await;
    post(
        "/api/v1/templates",
        serde_json::json!({"name": "ks-base", "contents": "# kickstart for {{ machine.name }}\nrootpw --lock"}),
    )
    .await;
    post("/api/v1/bootenvs", serde_json::json!({
        "name": "centos-9", "kernel": "centos/vmlinuz", "initrds": ["centos/initrd.img"],
        "boot_args": "console={{ param('console') }} inst.ks={{ provisioner.http }}/machines/{{ machine.macs[0] | mac_dash }}/ks.cfg",
        "templates": [
            {"name": "ipxe", "contents": "#!ipxe\nkernel {{ provisioner.http }}/files/{{ bootenv.kernel }} initrd={{ bootenv.initrd_names[0] }} {{ bootenv.boot_args }}\ninitrd {{ provisioner.http }}/files/{{ bootenv.initrds[0] }}\nboot"},
            {"name": "kickstart", "path": "ks.cfg", "template": "ks-base"},
            {"name": "pxelinux", "path": "pxelinux.cfg/{{ machine.macs[0] | mac_pxelinux }}", "contents": "default linux\nlabel linux\n  kernel {{ bootenv.kernel }}"}
        ]})).await;
    post(
        "/api/v1/machines",
        serde_json::json!({"name": "web-9", "macs": ["52:54:00:00:09:09"], "bootenv": "centos-9"}),
    )
    .await;
    // TFTP identifies the client by its lease.
    post("/api/v1/leases", serde_json::json!({"address": "127.0.0.1", "mac": "52:54:00:00:09:09", "subnet": "lab", "state": "bound", "expires_at": "2030-01-01T00:00:00Z"})).await;

    let http = server.services["http"].clone();
    let (h, b) = curl(&[&format!("{http}/ipxe/52-54-00-00-09-09")]);
    assert_eq!(status(&h), 200);
    let script = String::from_utf8(b).unwrap();
    let base = format!("http://{}", server.addr("http"));
    assert_eq!(
        script,
        format!(
            "#!ipxe\nkernel {base}/files/centos/vmlinuz initrd=initrd.img console=ttyS0 inst.ks={base}/machines/52-54-00-00-09-09/ks.cfg\ninitrd {base}/files/centos/initrd.img\nboot"
        )
    );
    let (h, b) = curl(&[&format!("{http}/machines/52-54-00-00-09-09/ks.cfg")]);
    assert_eq!((status(&h), String::from_utf8(b).unwrap()), (200, "# kickstart for web-9\nrootpw --lock".to_owned()));
    assert_eq!(header(&h, "cache-control"), Some("no-store"));
    let (h, _) = curl(&[&format!("{http}/machines/52-54-00-00-09-09/nope.cfg")]);
    assert_eq!(status(&h), 404);

    let (host, port) = split_addr(&server.addr("tftp"));
    let dest = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("timeout")
        .args(["20", "tftp", "-m", "binary", &host, &port, "-c", "get", "pxelinux.cfg/01-52-54-00-00-09-09"])
        .arg(dest.path())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read_to_string(dest.path()).unwrap(), "default linux\nlabel linux\n  kernel centos/vmlinuz");

    // The same files through POST /api/v1/render, and the lease in the context.
    let id =
        api.get("/api/v1/machines?macs=52:54:00:00:09:09").await.body["items"][0]["id"].as_str().unwrap().to_owned();
    let r = api.post("/api/v1/render", serde_json::json!({"machine": id, "bootenv_file": "ks.cfg"})).await;
    assert_eq!(r.body["output"], "# kickstart for web-9\nrootpw --lock");
    let r = api.post("/api/v1/render", serde_json::json!({"machine": id, "bootenv_file": "missing.cfg"})).await;
    assert_eq!(r.status, 404);
    let r = api.post("/api/v1/render", serde_json::json!({"machine": id, "contents": "{{ lease.address }} {{ bootenv.boot_args }}", "http": "http://x"})).await;
    assert_eq!(
        r.body["output"], "127.0.0.1 console=ttyS0 inst.ks=http://x/machines/52-54-00-00-09-09/ks.cfg",
        "{}",
        r.body
    );
}

/// GRUB loaded over the network asks for `grub/grub.cfg`: an unknown
/// machine gets discovery (for its own CPU, with a single-use join token),
/// a known one its bootenv's file named `grub`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grub_cfg_is_discovery_for_an_unknown_machine_and_the_bootenvs_grub_file_for_a_known_one() {
    if !have("tftp") {
        return;
    }
    let server = Server::start();
    let api = server.api().await;
    let r = api.post("/api/v1/leases", serde_json::json!({"address": "127.0.0.1", "mac": "52:54:00:00:0a:0a", "subnet": "lab", "state": "bound", "expires_at": "2030-01-01T00:00:00Z"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (host, port) = split_addr(&server.addr("tftp"));
    let get = || {
        let dest = tempfile::NamedTempFile::new().unwrap();
        let st = Command::new("timeout")
            .args(["20", "tftp", "-m", "binary", &host, &port, "-c", "get", "grub/grub.cfg"])
            .arg(dest.path())
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read_to_string(dest.path()).unwrap()
    };
    let unknown = get();
    assert!(unknown.contains("not known yet"), "{unknown}");
    assert!(unknown.contains("set plinth_dir=discovery/arm64") && unknown.contains("plinth.join=plt_"), "{unknown}");
    let r = api
        .post(
            "/api/v1/machines",
            serde_json::json!({"name": "arm-9", "macs": ["52:54:00:00:0a:0a"], "bootenv": "local"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let known = get();
    assert!(known.contains("arm-9: boot from the local disk") && known.contains("exit"), "{known}");
}

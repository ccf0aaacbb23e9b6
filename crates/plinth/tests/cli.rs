//! The CLI against the real server: login, every verb, output formats,
//! helpful errors and exit codes.

mod common;

use common::Server;
use serde_json::Value;
use std::process::Command;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_manage_objects_with_every_verb() {
    let server = Server::start();
    let pw = server.dir.join("pw");
    std::fs::write(&pw, format!("{}\n", common::PASSWORD)).unwrap();
    let out = ok(&server.cli(&["login", "--username", "admin", "--password-file", pw.to_str().unwrap()], None));
    assert!(out.contains("logged in"), "{out}");
    let cfg: Value = serde_json::from_slice(&std::fs::read(server.dir.join("cli-config.json")).unwrap()).unwrap();
    assert!(cfg["token"].as_str().unwrap().starts_with("plt_"));

    // Create from a YAML file and from inline JSON.
    let yaml = server.dir.join("bootenv.yaml");
    std::fs::write(&yaml, "name: debian-site\nkernel: debian/linux\nos:\n  family: debian\n  version: \"12\"\n")
        .unwrap();
    ok(&server.cli(&["bootenvs", "create", "-f", yaml.to_str().unwrap()], None));
    let created = ok(&server
        .cli(&["machines", "create", "-o", "json", "--data", r#"{"name":"web-1","bootenv":"debian-site"}"#], None));
    let machine: Value = serde_json::from_str(&created).unwrap();
    let id = machine["id"].as_str().unwrap();
    ok(&server.cli(&["machines", "create", "--data", r#"{"name":"web-2"}"#], None));

    // Table with a header and one row per machine; filters narrow it.
    let table = ok(&server.cli(&["machines", "list"], None));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("BOOTENV"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    let filtered = ok(&server.cli(&["machines", "list", "--filter", "bootenv=debian-site", "-o", "json"], None));
    let items: Vec<Value> = serde_json::from_str(&filtered).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "web-1");
    let yaml_out = ok(&server.cli(&["machines", "show", id, "-o", "yaml"], None));
    assert!(yaml_out.contains("name: web-1"), "{yaml_out}");

    // Patch, update with If-Match, delete.
    let patched = ok(&server.cli(&["machines", "patch", id, "-o", "json", "--data", r#"{"bootenv":"local"}"#], None));
    assert_eq!(serde_json::from_str::<Value>(&patched).unwrap()["revision"], 2);
    let stale = server.cli(&["machines", "update", id, "--if-match", "1", "--data", r#"{"name":"web-1"}"#], None);
    assert_eq!(stale.status.code(), Some(4), "stale revision: exit 4");
    assert!(String::from_utf8_lossy(&stale.stderr).contains("revision"));
    ok(&server.cli(&["machines", "update", id, "--if-match", "2", "--data", r#"{"name":"web-1b"}"#], None));
    ok(&server.cli(&["machines", "delete", id], None));
    let missing = server.cli(&["machines", "show", id], None);
    assert_eq!(missing.status.code(), Some(3), "not found: exit 3");

    // Invalid input names the field; exit 7.
    let bad = server.cli(&["machines", "create", "--data", r#"{"name":"x","macs":["nope"]}"#], None);
    assert_eq!(bad.status.code(), Some(7));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("macs[0]") && err.contains("MAC address"), "{err}");
    // Unreadable input is a usage error.
    assert_eq!(server.cli(&["machines", "create", "-f", "/nonexistent.yaml"], None).status.code(), Some(2));

    // Tokens list and revoke, then logout.
    let tokens = ok(&server.cli(&["tokens", "list"], None));
    assert!(tokens.contains("admin"));
    ok(&server.cli(&["logout"], None));
    let after = server.cli(&["machines", "list"], None);
    assert_eq!(after.status.code(), Some(2), "no token saved any more");
    assert!(String::from_utf8_lossy(&after.stderr).contains("plinth login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_helpful_and_exit_codes_distinct() {
    let server = Server::start();
    let token = server.token().await;
    // Bad token: authentication error, exit 5.
    let r = server.cli(&["machines", "list"], Some("plt_nope.nope"));
    assert_eq!(r.status.code(), Some(5));
    // No server there: connection error, exit 6.
    let mut c = std::process::Command::new(common::bin());
    let r = c
        .args(["machines", "list", "--endpoint", "https://127.0.0.1:1", "--token", &token])
        .env("PLINTH_CONFIG", server.dir.join("none.json"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot reach"));
    // Untrusted certificate: says which file to pass.
    let r = std::process::Command::new(common::bin())
        .args(["machines", "list", "--endpoint", &server.url, "--token", &token])
        .env("PLINTH_CONFIG", server.dir.join("none.json"))
        .env_remove("PLINTH_CA_CERT")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--ca-cert"), "{}", String::from_utf8_lossy(&r.stderr));
    // Usage errors from clap: exit 2.
    assert_eq!(server.cli(&["machines", "frobnicate"], Some(&token)).status.code(), Some(2));
    assert_eq!(
        server.cli(&["tokens", "create", "--data", "{}"], Some(&token)).status.code(),
        Some(2),
        "tokens are not created directly"
    );
    // Completions are generated for the real command tree.
    let comp = ok(&server.cli(&["completions", "bash"], None));
    assert!(comp.contains("machines") && comp.contains("bootenvs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_command_prints_changes_as_json_lines() {
    let server = Server::start();
    let token = server.token().await;
    let mut child = std::process::Command::new(common::bin())
        .args(["events", "--kind", "profiles", "--count", "1"])
        .env("PLINTH_ENDPOINT", &server.url)
        .env("PLINTH_CA_CERT", server.ca())
        .env("PLINTH_TOKEN", &token)
        .env("PLINTH_CONFIG", server.dir.join("none.json"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let api = server.api().await;
    // Keep writing until the follower (which may connect late) sees one.
    let mut done = false;
    for i in 0..50 {
        api.post("/api/v1/profiles", serde_json::json!({"name": format!("p{i}")})).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(Some(_)) = child.try_wait() {
            done = true;
            break;
        }
    }
    assert!(done, "events exited after one event");
    let out = child.wait_with_output().unwrap();
    let line: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["kind"], "profiles");
    assert_eq!(line["action"], "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_round_trips_through_the_cli() {
    let server = Server::start();
    let token = server.token().await;
    let mid = "6f1c2a9e-0b7d-4c1e-9a53-2d1f0e8b7c44";
    let samples: Vec<(&str, serde_json::Value, &str)> = vec![
        ("params", serde_json::json!({"name": "ntp", "schema": {"type": "array"}}), "ntp"),
        ("profiles", serde_json::json!({"name": "site"}), "site"),
        ("machines", serde_json::json!({"id": mid, "name": "m"}), mid),
        ("templates", serde_json::json!({"name": "t", "contents": "x"}), "t"),
        ("bootenvs", serde_json::json!({"name": "b"}), "b"),
        ("tasks", serde_json::json!({"name": "k"}), "k"),
        ("stages", serde_json::json!({"name": "s"}), "s"),
        ("workflows", serde_json::json!({"name": "w", "stages": ["s"]}), "w"),
        (
            "jobs",
            serde_json::json!({"id": "0b5c7f4e-3a2d-4e1f-8c9b-7a6d5e4f3c2b", "machine": mid, "task": "k"}),
            "0b5c7f4e-3a2d-4e1f-8c9b-7a6d5e4f3c2b",
        ),
        (
            "subnets",
            serde_json::json!({"name": "n", "cidr": "10.1.0.0/24", "range_start": "10.1.0.10", "range_end": "10.1.0.20"}),
            "n",
        ),
        ("reservations", serde_json::json!({"mac": "52:54:00:00:00:77", "address": "10.1.0.7"}), "52:54:00:00:00:77"),
        (
            "leases",
            serde_json::json!({"address": "10.1.0.11", "mac": "52:54:00:00:00:78", "subnet": "n", "expires_at": "2030-01-01T00:00:00Z"}),
            "10.1.0.11",
        ),
        ("users", serde_json::json!({"name": "u", "password": "long enough"}), "u"),
    ];
    for (kind, body, key) in &samples {
        ok(&server.cli(&[kind, "create", "--data", &body.to_string()], Some(&token)));
        let shown: Value =
            serde_json::from_str(&ok(&server.cli(&[kind, "show", key, "-o", "json"], Some(&token)))).unwrap();
        assert_eq!(shown["revision"], 1, "{kind}");
        let patched: Value = serde_json::from_str(&ok(
            &server.cli(&[kind, "patch", key, "-o", "json", "--data", r#"{"meta":{"k":"v"}}"#], Some(&token))
        ))
        .unwrap();
        assert_eq!((patched["revision"].as_u64(), patched["meta"]["k"].as_str()), (Some(2), Some("v")), "{kind}");
        let mut replaced = patched.clone();
        replaced["meta"] = serde_json::json!({});
        ok(&server.cli(&[kind, "update", key, "--if-match", "2", "--data", &replaced.to_string()], Some(&token)));
        let listed = ok(&server.cli(&[kind, "list", "-o", "yaml"], Some(&token)));
        assert!(listed.contains("revision: 3"), "{kind}: {listed}");
    }
    for (kind, _, key) in samples.iter().rev() {
        ok(&server.cli(&[kind, "delete", key], Some(&token)));
        assert_eq!(server.cli(&[kind, "show", key], Some(&token)).status.code(), Some(3), "{kind} deleted");
    }
}

#[test]
fn import_iso_verifies_extracts_pins_and_is_idempotent() {
    if !common::have("xorriso") {
        return;
    }
    let server = Server::start();
    let pw = server.dir.join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(&server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    // An image laid out like Debian's netboot mini.iso.
    let src = server.dir.join("iso-src");
    std::fs::create_dir_all(src.join("doc")).unwrap();
    std::fs::write(src.join("linux"), vec![0x4c; 5000]).unwrap();
    std::fs::write(src.join("initrd.gz"), vec![0x1f; 9000]).unwrap();
    std::fs::write(src.join("doc/README.txt"), "mini").unwrap();
    let iso = server.dir.join("mini.iso");
    let made = Command::new("xorriso")
        .args(["-as", "mkisofs", "-R", "-J", "-quiet", "-o"])
        .arg(&iso)
        .arg(&src)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let sha = plinth_iso::sha256_file(&iso).unwrap();
    let files = server.files();
    let root = files.to_str().unwrap();
    let iso_arg = iso.to_str().unwrap();

    let no_sum = server.cli(&["bootenvs", "import-iso", "debian-12", iso_arg, "--file-root", root], None);
    assert_eq!(no_sum.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_sum.stderr).contains("pins no SHA-256"));
    let bad = server.cli(
        &["bootenvs", "import-iso", "debian-12", iso_arg, "--file-root", root, "--sha256", &"ab".repeat(32)],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("checksum mismatch"), "{bad:?}");
    assert!(!files.join("debian-12").exists());

    let out =
        ok(&server.cli(&["bootenvs", "import-iso", "debian-12", iso_arg, "--file-root", root, "--sha256", &sha], None));
    assert!(out.contains("3 files written") && out.contains("ready: default"), "{out}");
    assert!(out.contains("arm64/uefi: debian-12/arm64/linux"), "the missing ARM64 variant is reported: {out}");
    assert_eq!(std::fs::read(files.join("debian-12/linux")).unwrap(), vec![0x4c; 5000]);
    let bootenv: Value =
        serde_json::from_str(&ok(&server.cli(&["bootenvs", "show", "debian-12", "-o", "json"], None))).unwrap();
    assert_eq!(bootenv["source"]["sha256"], sha.as_str(), "the checksum is pinned");
    // Again, with the pinned checksum: nothing rewritten.
    let again = ok(&server.cli(&["bootenvs", "import-iso", "debian-12", iso_arg, "--file-root", root], None));
    assert!(again.contains("0 files written, 3 already in place"), "{again}");
    // Served by the boot HTTP server.
    let url = format!("{}/files/debian-12/initrd.gz", server.services["http"]);
    let got = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{size_download}", &url]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "9000");

    // The wrong image for a bootenv: extracted, but reported as unusable.
    let wrong = ok(&server.cli(&["bootenvs", "show", "rocky-9", "-o", "json"], None));
    assert!(wrong.contains("rocky-9/images/pxeboot/vmlinuz"));
    let r = server.cli(&["bootenvs", "import-iso", "rocky-9", iso_arg, "--file-root", root, "--sha256", &sha], None);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("lacks what bootenv `rocky-9` boots") && err.contains("rocky-9/images/pxeboot/vmlinuz"),
        "{err}"
    );
}

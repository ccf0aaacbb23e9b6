//! The CLI against the real server: login, every verb, output formats,
//! helpful errors and exit codes.

mod common;

use common::Server;
use serde_json::Value;

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
    std::fs::write(&yaml, "name: debian-12\nkernel: debian/linux\nos:\n  family: debian\n  version: \"12\"\n").unwrap();
    ok(&server.cli(&["bootenvs", "create", "-f", yaml.to_str().unwrap()], None));
    let created =
        ok(&server
            .cli(&["machines", "create", "-o", "json", "--data", r#"{"name":"web-1","bootenv":"debian-12"}"#], None));
    let machine: Value = serde_json::from_str(&created).unwrap();
    let id = machine["id"].as_str().unwrap();
    ok(&server.cli(&["machines", "create", "--data", r#"{"name":"web-2"}"#], None));

    // Table with a header and one row per machine; filters narrow it.
    let table = ok(&server.cli(&["machines", "list"], None));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("BOOTENV"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    let filtered = ok(&server.cli(&["machines", "list", "--filter", "bootenv=debian-12", "-o", "json"], None));
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

//! Secure params through a running server: sealed at rest (the database
//! file never holds the plain value, the key file and database are owner
//! only), shown as `<secure>` by every API route, the CLI, events, the
//! timeline and the audit log, never logged, rendered only into the owning
//! machine's files when it fetches them from the address it leased, and
//! re-sealed after a key rotation.

mod common;

use common::{Api, Server, ok};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const SECRET: &str = "Pl41n-S3cret-bmc-9f3a";
const OTHER: &str = "0ther-Machine-S3cret-77";
const MAC: &str = "52:54:00:99:00:01";

async fn created(api: &Api, path: &str, body: Value) -> Value {
    let r = api.post(path, body).await;
    assert_eq!(r.status, 201, "{path}: {}", r.body);
    r.body
}

async fn fetch(url: &str) -> (u16, Option<String>, String) {
    let r = reqwest::get(url).await.unwrap();
    let cache = r.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), cache, r.text().await.unwrap())
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file of the database (main, WAL) as one lossy string.
fn database_bytes(dir: &std::path::Path) -> String {
    let mut all = Vec::new();
    for name in ["plinth.db", "plinth.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.extend(b);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_values_are_sealed_redacted_everywhere_and_rendered_only_for_their_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path());
    let api = server.api().await;
    let http = format!("http://{}", server.addr("http"));

    // The key file and the database: owner only.
    assert_eq!(mode(&dir.path().join("secret.keys")), 0o600);
    assert_eq!(mode(&dir.path().join("plinth.db")), 0o600);

    // Every change from here on, as a subscriber sees it.
    let resp = server.http().get(format!("{}/api/v1/events", server.url)).bearer_auth(&api.token).send().await.unwrap();
    let events = tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    created(
        &api,
        "/api/v1/params",
        json!({"name": "bmc-password", "secure": true, "schema": {"type": "string", "minLength": 12}}),
    )
    .await;
    created(
        &api,
        "/api/v1/templates",
        json!({"name": "creds", "contents": "password={{ secure_param('bmc-password') }}\n"}),
    )
    .await;
    created(&api, "/api/v1/templates", json!({"name": "tok", "contents": "{{ machine_token() }}"})).await;
    created(
        &api,
        "/api/v1/bootenvs",
        json!({"name": "with-secret", "templates": [{"name": "creds", "template": "creds", "path": "creds.txt"},
            {"name": "tok", "template": "tok", "path": "tok.txt"}]}),
    )
    .await;

    // A value that does not fit is refused without being echoed.
    let r = api.post("/api/v1/machines", json!({"name": "bad", "params": {"bmc-password": "short-pw"}})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(!r.body.to_string().contains("short-pw"), "{}", r.body);
    // A client never sends a sealed value.
    let r = api
        .post("/api/v1/machines", json!({"name": "bad", "params": {"bmc-password": {"$sealed": "v1.00000000.AAAA"}}}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    let m = created(
        &api,
        "/api/v1/machines",
        json!({"name": "bmc-1", "macs": [MAC], "bootenv": "with-secret", "params": {"bmc-password": SECRET}}),
    )
    .await;
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(m["params"]["bmc-password"], "<secure>");
    let other = created(
        &api,
        "/api/v1/machines",
        json!({"name": "bmc-2", "macs": ["52:54:00:99:00:02"], "bootenv": "with-secret", "params": {"bmc-password": OTHER}}),
    )
    .await;

    // What a client reads back: `<secure>`, and sending that back keeps the value.
    let got = api.get(&format!("/api/v1/machines/{id}")).await;
    assert_eq!(got.body["params"]["bmc-password"], "<secure>");
    let mut body = got.body.clone();
    body["description"] = json!("edited");
    let put = api.send(reqwest::Method::PUT, &format!("/api/v1/machines/{id}"), Some(body), None).await;
    assert_eq!(put.status, 200, "{}", put.body);
    let patched = api
        .send(reqwest::Method::PATCH, &format!("/api/v1/machines/{id}"), Some(json!({"description": "again"})), None)
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    // `<secure>` with nothing stored to keep is an error.
    let r = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{}", other["id"].as_str().unwrap()),
            Some(json!({"params": {"bmc-password": null}})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "a merge patch may remove it: {}", r.body);
    let r = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{}", other["id"].as_str().unwrap()),
            Some(json!({"params": {"bmc-password": "<secure>"}})),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{}", other["id"].as_str().unwrap()),
            Some(json!({"params": {"bmc-password": OTHER}})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Every way a user can look, through the API.
    let mut seen = String::new();
    for path in [
        format!("/api/v1/machines/{id}"),
        "/api/v1/machines".to_owned(),
        format!("/api/v1/machines/{id}/params"),
        format!("/api/v1/machines/{id}/params?explain=true"),
        format!("/api/v1/machines/{id}/timeline"),
        "/api/v1/audit".to_owned(),
        format!("/api/v1/audit?kind=machines&key={id}"),
    ] {
        let r = api.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        seen.push_str(&r.body.to_string());
    }
    let explained = api.get(&format!("/api/v1/machines/{id}/params?explain=true")).await;
    assert!(explained.body.to_string().contains("<secure>"), "{}", explained.body);
    // The debugging render shows the placeholder.
    let r = api.post("/api/v1/render", json!({"machine": id, "bootenv_file": "creds.txt"})).await;
    assert_eq!((r.status, r.body["output"].as_str()), (200, Some("password=<secure>")), "{}", r.body);
    seen.push_str(&r.body.to_string());
    // And through the CLI.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    for args in [
        vec!["machines", "show", &id, "-o", "json"],
        vec!["machines", "list", "-o", "yaml"],
        vec!["machines", "params", &id, "--explain"],
        vec!["audit", "-o", "json"],
        vec!["audit"],
    ] {
        seen.push_str(&ok(server.cli(&args, None)));
    }
    for secret in [SECRET, OTHER] {
        assert!(!seen.contains(secret), "a secure value was shown");
    }
    assert!(seen.contains("<secure>"));

    // The boot file: not served to an address that holds no lease for the
    // machine; served (no-store) once the request comes from its lease.
    let url = format!("{http}/machines/{}/creds.txt", MAC.replace(':', "-"));
    let (status, _, text) = fetch(&url).await;
    assert_eq!(status, 404, "{text}");
    assert!(!text.contains(SECRET));
    created(&api, "/api/v1/subnets", json!({"name": "lo", "cidr": "127.0.0.0/8", "range_start": "127.0.0.100", "range_end": "127.0.0.200", "enabled": false})).await;
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    created(
        &api,
        "/api/v1/leases",
        json!({"address": "127.0.0.1", "mac": MAC, "subnet": "lo", "state": "bound", "expires_at": expires}),
    )
    .await;
    let (status, cache, text) = fetch(&url).await;
    assert_eq!((status, text.as_str()), (200, format!("password={SECRET}").as_str()));
    assert_eq!(cache.as_deref(), Some("no-store"));
    // Another machine's file is not served to this address.
    let (status, _, text) = fetch(&format!("{http}/machines/52-54-00-99-00-02/creds.txt")).await;
    assert_eq!(status, 404);
    assert!(!text.contains(OTHER));
    // With its machine token in the path, a machine gets its own file from
    // any address; the token decides which machine's file it is.
    let (status, _, token) = fetch(&format!("{http}/machines/52-54-00-99-00-02/tok.txt")).await;
    assert!(status == 200 && token.starts_with("plt_"), "{token}");
    let (status, cache, text) = fetch(&format!("{http}/t/{token}/creds.txt")).await;
    assert_eq!(
        (status, text.as_str(), cache.as_deref()),
        (200, format!("password={OTHER}").as_str(), Some("no-store"))
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    for bad in [forged.as_str(), "plt_nope.nope", "garbage", "%2e%2e"] {
        let (status, _, text) = fetch(&format!("{http}/t/{bad}/creds.txt")).await;
        assert_eq!(status, 404, "{bad}: {text}");
        assert!(!text.contains(OTHER) && !text.contains(SECRET));
    }
    let other_id = other["id"].as_str().unwrap();
    let audit = api.get(&format!("/api/v1/audit?kind=machines&key={other_id}")).await;
    let read = audit.body["items"].as_array().unwrap().iter().find(|e| e["action"] == "secure-read").cloned();
    assert_eq!(read.map(|r| r["actor"].clone()), Some(json!(format!("machine:{other_id}"))), "{}", audit.body);
    // The token is a credential: it is in no log or boot event.
    // (Boot events are written in batches.)
    let mut boot_events = String::new();
    for _ in 0..50 {
        boot_events = api.get("/api/v1/boot-events").await.body.to_string();
        if boot_events.contains("/t/<token>/creds.txt") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(boot_events.contains("/t/<token>/creds.txt"), "{boot_events}");
    assert!(!boot_events.contains(&token) && !server.log.lock().unwrap().join("\n").contains(&token));

    // The read is in the audit log, by the address, without the value.
    let audit = api.get(&format!("/api/v1/audit?kind=machines&key={id}")).await;
    let reads: Vec<&Value> =
        audit.body["items"].as_array().unwrap().iter().filter(|e| e["action"] == "secure-read").collect();
    assert_eq!(reads.len(), 1, "{}", audit.body);
    assert_eq!(reads[0]["actor"], "address:127.0.0.1");
    assert!(
        reads[0]["detail"].as_str().unwrap().contains("bmc-password")
            && reads[0]["detail"].as_str().unwrap().contains("creds.txt")
    );
    let changes: Vec<&str> =
        audit.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(changes, ["created", "updated", "updated", "secure-read"], "{}", audit.body);
    assert!(
        audit.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "user:admin" || e["action"] == "secure-read")
    );

    // Events seen by a subscriber, the server's log, and the database file
    // never hold the plain value.
    let events = events.await.unwrap();
    assert!(events.contains("bmc-1") && events.contains("<secure>"), "{events}");
    let log = server.log.lock().unwrap().join("\n");
    let db = database_bytes(dir.path());
    assert!(db.contains("bmc-1") && db.contains("$sealed"), "the database holds the machine, sealed");
    for secret in [SECRET, OTHER] {
        assert!(!events.contains(secret), "events");
        assert!(!log.contains(secret), "log");
        assert!(!db.contains(secret), "database");
    }

    // A param made secure later has its plain values sealed at once.
    created(&api, "/api/v1/params", json!({"name": "ipmi-user", "schema": {"type": "string"}})).await;
    let r = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{id}"),
            Some(json!({"params": {"ipmi-user": "operator-xyz"}})),
            None,
        )
        .await;
    assert_eq!(r.body["params"]["ipmi-user"], "operator-xyz");
    let r = api.send(reqwest::Method::PATCH, "/api/v1/params/ipmi-user", Some(json!({"secure": true})), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api.get(&format!("/api/v1/machines/{id}")).await.body["params"]["ipmi-user"], "<secure>");

    // Rotation: a new key; prune refuses while values are sealed under the
    // old one; a restart re-seals them; prune then drops the old key.
    let rotate = |action: &str| {
        std::process::Command::new(common::bin())
            .args(["secrets", action, "--data-dir"])
            .arg(dir.path())
            .env_remove("PLINTH_SECRET_KEYS")
            .output()
            .unwrap()
    };
    server.stop();
    ok(rotate("rotate"));
    let refused = rotate("prune");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("older key"), "{refused:?}");
    let server = Server::start_in(dir.path());
    assert!(server.log.lock().unwrap().iter().any(|l| l.contains("sealed secure values under the current key")));
    let pruned = ok(rotate("prune"));
    assert!(pruned.contains("dropped"), "{pruned}");
    assert_eq!(std::fs::read_to_string(dir.path().join("secret.keys")).unwrap().lines().count(), 1);
    assert_eq!(mode(&dir.path().join("secret.keys")), 0o600);
    let http = format!("http://{}", server.addr("http"));
    let (status, _, text) = fetch(&format!("{http}/machines/{}/creds.txt", MAC.replace(':', "-"))).await;
    assert_eq!((status, text.as_str()), (200, format!("password={SECRET}").as_str()), "opens under the new key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_append_only_and_names_who_changed_what() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path());
    let api = server.api().await;
    created(&api, "/api/v1/users", json!({"name": "alice", "password": "alice-password-1", "roles": ["admin"]})).await;
    let r = api.send(reqwest::Method::DELETE, "/api/v1/users/alice", None, None).await;
    assert_eq!(r.status, 200);
    let audit = api.get("/api/v1/audit?kind=users&key=alice").await;
    let items = audit.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", audit.body);
    assert_eq!((items[0]["action"].as_str(), items[0]["actor"].as_str()), (Some("created"), Some("user:admin")));
    assert!(items[0]["before"].is_null() && items[0]["after"]["name"] == "alice");
    assert_eq!(items[1]["action"], "deleted");
    assert!(items[1]["after"].is_null() && items[1]["before"]["name"] == "alice");
    // Password hashes never reach the audit log, stored or shown.
    assert!(!audit.body.to_string().contains("password_hash"));
    let r = api.get("/api/v1/audit?actor=user:admin&limit=1").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert!(r.body["next"].is_u64());
    assert_eq!(api.get("/api/v1/audit?limit=0").await.status, 400);
    assert_eq!(api.get("/api/v1/audit?kind=nonsense").await.status, 400);
    // The API has no way to change it, and the database refuses to.
    assert_eq!(api.send(reqwest::Method::DELETE, "/api/v1/audit", None, None).await.status, 405);
    drop(server);
    let conn = rusqlite_free_check(dir.path());
    assert!(conn.contains("append-only"), "{conn}");
}

/// Tries to edit the audit table with the sqlite3 shell when it is
/// installed; returns its error output (or `append-only` when it is not
/// installed, the trigger being covered by the store's own tests).
fn rusqlite_free_check(dir: &std::path::Path) -> String {
    if !common::have("sqlite3") {
        return "append-only (sqlite3 not installed)".into();
    }
    let out = std::process::Command::new("sqlite3")
        .arg(dir.join("plinth.db"))
        .arg("DELETE FROM audit; UPDATE audit SET actor = 'x';")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

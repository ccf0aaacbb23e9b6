//! The integrity rules through the real binary: unique MACs, names and
//! reserved addresses; references that must exist and hold what they name,
//! for every kind; and a store from an older Plinth that already breaks
//! them, reported at start and never guessed at when a machine boots.

mod common;

use common::Server;
use reqwest::Method;
use serde_json::json;

const MAC: &str = "52:54:00:7e:00:01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_a_name_and_a_reserved_address_have_one_holder() {
    let server = Server::start();
    let api = server.api().await;
    let web1 = api.post_ok("/api/v1/machines", json!({"name": "web-1", "macs": [MAC]})).await;
    let id1 = web1["id"].as_str().unwrap().to_owned();

    let dup = api.post("/api/v1/machines", json!({"name": "web-2", "macs": ["52:54:00:7e:00:02", MAC]})).await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    let detail = dup.body["detail"].as_str().unwrap();
    assert!(detail.contains(MAC) && detail.contains("machines `web-1`") && detail.contains(&id1), "{detail}");
    let dup = api.post("/api/v1/machines", json!({"name": "web-1"})).await;
    assert_eq!(dup.status, 409, "a second machine named web-1: {}", dup.body);
    assert!(dup.body["detail"].as_str().unwrap().contains("name `web-1`"), "{}", dup.body);

    // Through an update too: web-2 may not take web-1's MAC or name.
    let web2 = api.post_ok("/api/v1/machines", json!({"name": "web-2"})).await;
    let path2 = format!("/api/v1/machines/{}", web2["id"].as_str().unwrap());
    for patch in [json!({"macs": [MAC]}), json!({"name": "web-1"})] {
        let r = api.send(Method::PATCH, &path2, Some(patch.clone()), None).await;
        assert_eq!(r.status, 409, "{patch}: {}", r.body);
    }
    // Once web-1 lets the MAC go, web-2 may have it.
    let r = api.send(Method::PATCH, &format!("/api/v1/machines/{id1}"), Some(json!({"macs": []})), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.send(Method::PATCH, &path2, Some(json!({"macs": [MAC]})), None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let res = |mac: &str| json!({"mac": mac, "address": "10.0.0.10"});
    assert_eq!(api.post("/api/v1/reservations", res("52:54:00:7e:00:0a")).await.status, 201);
    let dup = api.post("/api/v1/reservations", res("52:54:00:7e:00:0b")).await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    assert!(dup.body["detail"].as_str().unwrap().contains("reservations `52:54:00:7e:00:0a`"), "{}", dup.body);
    let dup = api.post("/api/v1/reservations", res("52:54:00:7e:00:0a")).await;
    assert_eq!(dup.status, 409, "one reservation per MAC: {}", dup.body);

    // The CLI says the same, with the conflict exit code.
    let data = json!({"name": "web-3", "macs": [MAC]}).to_string();
    let out = server.cli(&["machines", "create", "--data", &data], Some(&api.token));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already belongs to machines `web-2`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_must_exist_and_holds_what_it_names() {
    let server = Server::start();
    let api = server.api().await;
    // Each kind that names another refuses a name that does not exist,
    // naming the field.
    let refused = [
        ("machines", json!({"name": "m", "profiles": ["nope"]}), "profiles[0]"),
        ("machines", json!({"name": "m", "bootenv": "nope"}), "bootenv"),
        ("machines", json!({"name": "m", "workflow": "nope"}), "workflow"),
        ("profiles", json!({"name": "p", "profiles": ["nope"]}), "profiles[0]"),
        ("stages", json!({"name": "s", "tasks": ["nope"]}), "tasks[0]"),
        ("stages", json!({"name": "s", "bootenv": "nope"}), "bootenv"),
        ("workflows", json!({"name": "w", "stages": ["nope"]}), "stages[0]"),
        ("bootenvs", json!({"name": "b", "templates": [{"name": "x", "template": "nope"}]}), "templates[0].template"),
        ("bootenvs", json!({"name": "b", "required_params": ["nope"]}), "required_params[0]"),
        ("tasks", json!({"name": "t", "templates": [{"name": "x", "template": "nope"}]}), "templates[0].template"),
        ("tasks", json!({"name": "t", "optional_params": ["nope"]}), "optional_params[0]"),
        ("reservations", json!({"mac": MAC, "address": "10.0.0.9", "subnet": "nope"}), "subnet"),
        ("users", json!({"name": "u", "roles": ["nope"]}), "roles[0]"),
        ("jobs", json!({"machine": "6f1c2a9e-0b7d-4c1e-9a53-2d1f0e8b7c44", "task": "set-hostname"}), "machine"),
    ];
    for (kind, body, field) in refused {
        let r = api.post(&format!("/api/v1/{kind}"), body.clone()).await;
        assert_eq!((r.status, r.body["error"].as_str()), (409, Some("reference")), "{kind} {body}: {}", r.body);
        assert_eq!(r.body["field"], field, "{kind}: {}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains("`nope`") || field == "machine", "{}", r.body);
    }
    let r = api.post("/api/v1/profiles", json!({"name": "p", "params": {"nope": 1}})).await;
    assert_eq!(r.status, 409, "a value for an undefined param: {}", r.body);

    // A chain of objects that name each other.
    api.post_ok("/api/v1/params", json!({"name": "rack", "schema": {"type": "string"}})).await;
    api.post_ok("/api/v1/templates", json!({"name": "motd", "contents": "hi"})).await;
    api.post_ok(
        "/api/v1/tasks",
        json!({"name": "t", "templates": [{"name": "m", "template": "motd", "path": "/etc/motd"}]}),
    )
    .await;
    api.post_ok("/api/v1/stages", json!({"name": "s", "tasks": ["t"], "params": {"rack": "r1"}})).await;
    api.post_ok("/api/v1/workflows", json!({"name": "w", "stages": ["s"]})).await;
    api.post_ok("/api/v1/profiles", json!({"name": "p", "params": {"rack": "r2"}})).await;
    api.post_ok(
        "/api/v1/subnets",
        json!({"name": "lab", "cidr": "10.0.0.0/24", "range_start": "10.0.0.100", "range_end": "10.0.0.199"}),
    )
    .await;
    api.post_ok("/api/v1/reservations", json!({"mac": "52:54:00:7e:00:09", "address": "10.0.0.9", "subnet": "lab"}))
        .await;
    let m = api.post_ok("/api/v1/machines", json!({"name": "m", "profiles": ["p"], "macs": [MAC]})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    let r = api.post(&format!("/api/v1/machines/{id}/workflow"), json!({"workflow": "w"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A job for the machine (as the engine makes them), and a machine
    // token (as its boot script carries one).
    let job = api.post_ok("/api/v1/jobs", json!({"machine": id, "task": "t"})).await;
    let http = server.services["http"].clone();
    let script = reqwest::get(format!("{http}/ipxe/{}", MAC.replace(':', "-"))).await.unwrap().text().await.unwrap();
    let machine_token =
        script.split("plinth.token=").nth(1).and_then(|t| t.split_whitespace().next()).map(str::to_owned);

    // Nothing that is named may go, and the answer says who names it.
    let held = [
        ("/api/v1/templates/motd", "tasks `t`"),
        ("/api/v1/tasks/t", "stages `s`"),
        ("/api/v1/stages/s", "workflows `w`"),
        ("/api/v1/workflows/w", "machines `m`"),
        ("/api/v1/profiles/p", "machines `m`"),
        ("/api/v1/params/rack", "profiles `p`"),
        ("/api/v1/subnets/lab", "reservations `52:54:00:7e:00:09`"),
    ];
    for (path, by) in held {
        let r = api.send(Method::DELETE, path, None, None).await;
        assert_eq!(r.status, 409, "{path}: {}", r.body);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.contains(by), "{path} names {by}: {detail}");
    }
    // The CLI: exit code 4 and the same words.
    let out = server.cli(&["profiles", "delete", "p"], Some(&api.token));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("machines `m`"));
    let out = server.cli(&["machines", "patch", &id, "--data", r#"{"profiles": ["ghost"]}"#], Some(&api.token));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`ghost`"));

    // Deleting the machine takes its jobs and tokens with it; then the
    // rest goes in the order nothing is left dangling.
    let r = api.send(Method::DELETE, &format!("/api/v1/machines/{id}"), None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api.get(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap())).await.status, 404);
    let tokens = api.get(&format!("/api/v1/tokens?machine={id}")).await;
    assert_eq!(tokens.body["items"], json!([]), "the machine's tokens went with it");
    if let Some(t) = machine_token.as_deref() {
        let r = api.http.get(format!("{}/api/v1/machines/{id}", api.url)).bearer_auth(t).send().await.unwrap();
        assert_eq!(r.status(), 401, "a deleted machine's token is gone");
    }
    for path in ["/api/v1/workflows/w", "/api/v1/stages/s", "/api/v1/tasks/t", "/api/v1/templates/motd"] {
        let r = api.send(Method::DELETE, path, None, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    for path in ["/api/v1/profiles/p", "/api/v1/params/rack"] {
        let r = api.send(Method::DELETE, path, None, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // A role given to a user stays until taken from them.
    api.post_ok("/api/v1/roles", json!({"name": "racker", "claims": [{"kind": "machines", "action": "read"}]})).await;
    api.post_ok("/api/v1/users", json!({"name": "ann", "password": "long enough pw", "roles": ["racker"]})).await;
    let r = api.send(Method::DELETE, "/api/v1/roles/racker", None, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("users `ann`"), "{}", r.body);
}

/// A store an older Plinth wrote may hold a MAC on two machines, a name
/// twice and a profile that is gone: the server says so at start, a boot
/// from that MAC is refused with a boot event naming both machines, and
/// writes never add another breach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_already_breaks_the_rules_is_reported_and_not_guessed_at() {
    if !common::have("sqlite3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = {
        let mut server = Server::start_in(tmp.path());
        let api = server.api().await;
        let a = api.post_ok("/api/v1/machines", json!({"name": "node-a", "macs": [MAC]})).await;
        let b = api.post_ok("/api/v1/machines", json!({"name": "node-b", "macs": ["52:54:00:7e:00:02"]})).await;
        assert!(server.stop().success());
        (a["id"].as_str().unwrap().to_owned(), b["id"].as_str().unwrap().to_owned())
    };
    // What an older Plinth let through; its database had no index either.
    let sql = format!(
        "UPDATE objects SET body = json_set(body, '$.macs', json_array('{MAC}'), '$.name', 'node-a', '$.profiles', json_array('gone'))
         WHERE kind = 'machines' AND key = '{b}'; DELETE FROM lookup_fields;"
    );
    let out = std::process::Command::new("sqlite3").arg(tmp.path().join("plinth.db")).arg(sql).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let server = Server::start_in(tmp.path());
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("integrity rule"), "reported at start: {log}");
    assert!(log.contains(&format!("share macs `{MAC}`")) && log.contains(&a) && log.contains(&b), "{log}");
    assert!(log.contains("share name `node-a`"), "{log}");
    assert!(log.contains("names profiles `gone`"), "{log}");

    // A boot from the MAC: the script says why and boots nothing.
    let http = server.services["http"].clone();
    let r = reqwest::get(format!("{http}/ipxe/{}", MAC.replace(':', "-"))).await.unwrap();
    assert_eq!(r.status(), 200);
    let script = r.text().await.unwrap();
    assert!(script.starts_with("#!ipxe") && script.contains("belongs to machines"), "{script}");
    assert!(!script.contains("kernel") && !script.contains("plinth.join"), "no guess, no join token: {script}");
    let api = server.api().await;
    let events = api.get(&format!("/api/v1/boot-events?mac={MAC}")).await;
    let details: Vec<&str> =
        events.body["items"].as_array().unwrap().iter().map(|e| e["detail"].as_str().unwrap()).collect();
    assert!(
        details.iter().any(|d| d.contains("not booting any of them") && d.contains(&a) && d.contains(&b)),
        "{details:?}"
    );
    // Writes that keep the breach go on (the engine's, an operator's
    // unrelated edit); none adds another.
    let r = api.send(Method::PATCH, &format!("/api/v1/machines/{a}"), Some(json!({"description": "x"})), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.post("/api/v1/machines", json!({"name": "node-c", "macs": [MAC]})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    // Mending it: the MAC back to one machine.
    let r = api
        .send(
            Method::PATCH,
            &format!("/api/v1/machines/{b}"),
            Some(json!({"macs": ["52:54:00:7e:00:02"], "name": "node-b", "profiles": []})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = reqwest::get(format!("{http}/ipxe/{}", MAC.replace(':', "-"))).await.unwrap();
    assert!(!r.text().await.unwrap().contains("belongs to machines"));
}

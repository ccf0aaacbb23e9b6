//! The REST API over real HTTPS against the real binary.

mod common;

use common::{PASSWORD, Server};
use reqwest::Method;
use serde_json::{Value, json};

/// A valid body for every kind, in an order where references resolve.
fn samples(machine_id: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("params", json!({"name": "site-ntp", "schema": {"type": "array", "items": {"type": "string"}}})),
        ("profiles", json!({"name": "site-a", "params": {"site-ntp": ["10.0.0.1"]}})),
        ("machines", json!({"id": machine_id, "name": "web-1", "macs": ["52:54:00:00:00:01"], "profiles": ["site-a"]})),
        ("templates", json!({"name": "hello", "contents": "hello {{ machine.name }}"})),
        (
            "bootenvs",
            json!({"name": "debian-site", "kernel": "debian/linux", "initrds": ["debian/initrd.gz"],
            "os": {"name": "debian", "family": "debian", "version": "12"}, "templates": [{"name": "ipxe", "template": "hello", "path": "boot.ipxe"}]}),
        ),
        (
            "tasks",
            json!({"name": "set-name", "templates": [{"name": "script", "contents": "hostnamectl set-hostname x"}]}),
        ),
        ("stages", json!({"name": "install", "bootenv": "debian-site", "tasks": ["set-name"]})),
        ("workflows", json!({"name": "provision", "stages": ["install"]})),
        ("jobs", json!({"machine": machine_id, "task": "set-name"})),
        (
            "subnets",
            json!({"name": "lab", "cidr": "10.0.0.0/24", "range_start": "10.0.0.10", "range_end": "10.0.0.99",
            "router": "10.0.0.1", "options": [{"code": 66, "text": "10.0.0.1"}]}),
        ),
        ("reservations", json!({"mac": "52:54:00:00:00:09", "address": "10.0.0.9", "hostname": "db-1"})),
        (
            "leases",
            json!({"address": "10.0.0.50", "mac": "52:54:00:00:00:50", "subnet": "lab", "expires_at": "2030-01-01T00:00:00Z"}),
        ),
        ("users", json!({"name": "ops", "password": "correct horse battery", "roles": ["operator"]})),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_works_for_every_kind() {
    let server = Server::start();
    let api = server.api().await;
    let mid = "6f1c2a9e-0b7d-4c1e-9a53-2d1f0e8b7c44";
    for (kind, body) in samples(mid) {
        let created = api.post(&format!("/api/v1/{kind}"), body.clone()).await;
        assert_eq!(created.status, 201, "{kind}: {}", created.body);
        assert_eq!(created.etag.as_deref(), Some("\"1\""), "{kind}");
        let key_field = match kind {
            "machines" | "jobs" | "tokens" => "id",
            "reservations" => "mac",
            "leases" => "address",
            _ => "name",
        };
        let key = created.body[key_field].as_str().unwrap().to_owned();
        let path = format!("/api/v1/{kind}/{key}");

        let got = api.get(&path).await;
        assert_eq!(got.status, 200, "{kind}");
        assert_eq!(got.body, created.body, "{kind}: GET returns what POST returned");

        let list = api.get(&format!("/api/v1/{kind}")).await;
        assert!(list.body["items"].as_array().unwrap().iter().any(|o| o[key_field] == key.as_str()), "{kind} listed");

        let dup = api.post(&format!("/api/v1/{kind}"), created.body.clone()).await;
        assert_eq!(dup.status, 409, "{kind}: duplicate create");

        let mut replacement = got.body.clone();
        replacement["meta"] = json!({"team": "infra"});
        let put = api.send(Method::PUT, &path, Some(replacement), Some("\"1\"")).await;
        assert_eq!(put.status, 200, "{kind}: {}", put.body);
        assert_eq!(put.etag.as_deref(), Some("\"2\""));
        assert_eq!(put.body["meta"]["team"], "infra");
        assert_eq!(put.body["created_at"], created.body["created_at"]);

        let patched = api.send(Method::PATCH, &path, Some(json!({"meta": {"owner": "sre"}})), None).await;
        assert_eq!(patched.status, 200, "{kind}: {}", patched.body);
        assert_eq!(patched.body["meta"], json!({"team": "infra", "owner": "sre"}));
        assert_eq!(patched.body["revision"], 3);

        if kind == "users" {
            assert!(patched.body.get("password_hash").is_none() && patched.body.get("password").is_none());
            // The password survived the replace and patch that did not mention it.
            let r = server
                .http()
                .post(format!("{}/api/v1/auth/token", server.url))
                .basic_auth("ops", Some("correct horse battery"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        if ["params", "profiles", "machines", "templates", "bootenvs", "tasks", "stages"].contains(&kind) {
            continue; // named by later samples; deleted below, after what names them
        }
        let deleted = api.send(Method::DELETE, &path, None, None).await;
        assert_eq!(deleted.status, 200, "{kind}");
        assert_eq!(api.get(&path).await.status, 404, "{kind}: gone");
    }
    // What others name is not deleted; once they are gone, it is.
    let refused = api.send(Method::DELETE, "/api/v1/templates/hello", None, None).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body["detail"].as_str().unwrap().contains("bootenvs `debian-site`"), "{}", refused.body);
    for path in [
        "/api/v1/stages/install",
        "/api/v1/tasks/set-name",
        "/api/v1/bootenvs/debian-site",
        "/api/v1/templates/hello",
        &format!("/api/v1/machines/{mid}"),
        "/api/v1/profiles/site-a",
        "/api/v1/params/site-ntp",
    ] {
        let deleted = api.send(Method::DELETE, path, None, None).await;
        assert_eq!(deleted.status, 200, "{path}: {}", deleted.body);
    }
    // Tokens: listed and revoked, never written directly, secrets never shown.
    let tokens = api.get("/api/v1/tokens").await;
    let items = tokens.body["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items.iter().all(|t| t.get("secret_hash").is_none()));
    assert_eq!(api.post("/api/v1/tokens", json!({"user": "admin"})).await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_by_field_and_page_by_key() {
    let server = Server::start();
    let api = server.api().await;
    for i in 0..25 {
        let bootenv = if i % 5 == 0 { "local" } else { "discovery" };
        let body = json!({"name": format!("m{i:02}"), "bootenv": bootenv, "macs": [format!("52:54:00:00:01:{i:02x}")], "runnable": i != 3});
        assert_eq!(api.post("/api/v1/machines", body).await.status, 201);
    }
    let local = api.get("/api/v1/machines?bootenv=local").await;
    assert_eq!(local.body["items"].as_array().unwrap().len(), 5);
    let by_mac = api.get("/api/v1/machines?macs=52:54:00:00:01:07").await;
    assert_eq!(by_mac.body["items"][0]["name"], "m07");
    let not_runnable = api.get("/api/v1/machines?runnable=false").await;
    assert_eq!(not_runnable.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(not_runnable.body["items"][0]["name"], "m03");

    let mut names = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let path = match &next {
            Some(n) => format!("/api/v1/machines?limit=7&after={n}"),
            None => "/api/v1/machines?limit=7".into(),
        };
        let page = api.get(&path).await;
        assert_eq!(page.status, 200);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        names.extend(items.iter().map(|m| m["name"].as_str().unwrap().to_owned()));
        next = page.body["next"].as_str().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    names.sort();
    assert_eq!(names.len(), 25, "every machine exactly once across pages");
    names.dedup();
    assert_eq!(names.len(), 25);

    let bad = api.get("/api/v1/machines?colour=red").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["field"], "colour");
    assert!(bad.body["detail"].as_str().unwrap().contains("bootenv"), "lists the filterable fields");
    assert_eq!(api.get("/api/v1/machines?limit=0").await.status, 400);
    assert_eq!(api.get("/api/v1/widgets").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_gets_412_and_changes_nothing() {
    let server = Server::start();
    let api = server.api().await;
    let created = api.post("/api/v1/templates", json!({"name": "t", "contents": "a"})).await;
    assert_eq!(created.status, 201);
    let v2 = api.send(Method::PATCH, "/api/v1/templates/t", Some(json!({"contents": "b"})), Some("\"1\"")).await;
    assert_eq!(v2.status, 200);
    for (method, body) in [
        (Method::PUT, Some(json!({"name": "t", "contents": "c"}))),
        (Method::PATCH, Some(json!({"contents": "c"}))),
        (Method::DELETE, None),
    ] {
        let stale = api.send(method.clone(), "/api/v1/templates/t", body, Some("\"1\"")).await;
        assert_eq!(stale.status, 412, "{method}");
        assert_eq!(stale.body["error"], "precondition_failed");
    }
    assert_eq!(api.get("/api/v1/templates/t").await.body["contents"], "b");
    assert_eq!(
        api.send(Method::PATCH, "/api/v1/templates/t", Some(json!({"contents": "c"})), Some("garbage")).await.status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_valid_token() {
    let server = Server::start();
    let api = server.api().await;
    let http = server.http();
    let doc = api.get("/api/v1/openapi.json").await.body;
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if path == "/api/v1/auth/token" {
            continue;
        }
        let path = path.replace("{key}", "x").replace("{id}", "x");
        // The probes (`security: []`) need no token; tested below.
        let public = |m: &String| ops[m.as_str()]["security"] == serde_json::json!([]);
        for method in ops.as_object().unwrap().keys().filter(|m| *m != "parameters" && !public(m)) {
            let m: Method = method.to_uppercase().parse().unwrap();
            for auth in [
                None,
                Some("Bearer nonsense"),
                Some("Bearer plt_6f1c2a9e-0b7d-4c1e-9a53-2d1f0e8b7c44.bad"),
                Some("Basic YWRtaW46eA=="),
            ] {
                let mut r = http.request(m.clone(), format!("{}{path}", server.url));
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                let resp = r.send().await.unwrap();
                assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "unauthorized");
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "walked the whole document ({checked})");

    // Wrong password, then a revoked token.
    let r =
        http.post(format!("{}/api/v1/auth/token", server.url)).basic_auth("admin", Some("nope")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{}/api/v1/auth/token", server.url))
        .basic_auth("ghost", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let second = server.token().await;
    let id = second.strip_prefix("plt_").unwrap().split('.').next().unwrap();
    assert_eq!(api.send(Method::DELETE, &format!("/api/v1/tokens/{id}"), None, None).await.status, 200);
    let r = http.get(format!("{}/api/v1/machines", server.url)).bearer_auth(&second).send().await.unwrap();
    assert_eq!(r.status(), 401, "revoked token refused");
    // A short-lived token expires.
    let r = http
        .post(format!("{}/api/v1/auth/token", server.url))
        .basic_auth("admin", Some(PASSWORD))
        .json(&json!({"ttl_secs": 1}))
        .send()
        .await
        .unwrap();
    let short: Value = r.json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = http
        .get(format!("{}/api/v1/machines", server.url))
        .bearer_auth(short["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "expired token refused");
    let r = http
        .post(format!("{}/api/v1/auth/token", server.url))
        .basic_auth("admin", Some(PASSWORD))
        .json(&json!({"ttl_secs": 99999999}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_get_400_naming_the_field() {
    let server = Server::start();
    let api = server.api().await;
    let http = server.http();
    let raw = |body: &'static str, ct: &'static str| {
        http.post(format!("{}/api/v1/machines", server.url))
            .bearer_auth(&api.token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = raw("{\"name\": ", "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert!(b["detail"].as_str().unwrap().contains("not valid JSON"), "{b}");
    assert_eq!(raw("name=x", "application/x-www-form-urlencoded").await.unwrap().status(), 415);

    api.post("/api/v1/params", json!({"name": "site-ntp", "schema": {"type": "array", "items": {"type": "string"}}}))
        .await;
    let cases = [
        ("/api/v1/machines", json!({"name": 5}), "name"),
        ("/api/v1/machines", json!({"name": "a", "macs": ["zz:zz"]}), "macs[0]"),
        ("/api/v1/machines", json!({"name": "a", "colour": "red"}), ""),
        ("/api/v1/params", json!({"name": "p", "schema": {"type": "strnig"}}), "schema.type"),
        ("/api/v1/params", json!({"name": "p", "schema": {"type": "integer", "default": "x"}}), "schema.default"),
        (
            "/api/v1/subnets",
            json!({"name": "s", "cidr": "10.0.0.0/24", "range_start": "10.0.0.10", "range_end": "10.9.0.1"}),
            "range_end",
        ),
        ("/api/v1/users", json!({"name": "u", "password_hash": "x"}), "password_hash"),
        ("/api/v1/workflows", json!({"name": "w", "stages": []}), "stages"),
    ];
    for (path, body, field) in cases {
        let r = api.post(path, body.clone()).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        assert_eq!(r.body["error"], "invalid", "{body}");
        if !field.is_empty() {
            assert_eq!(r.body["field"], field, "{body}: {}", r.body);
        }
        assert!(!r.body["detail"].as_str().unwrap().is_empty());
    }
    // A well-formed body that the store's current state refuses is a 409
    // naming the field: a param not defined, a value its param's schema
    // refuses, a key in the body that is not the one in the URL.
    api.post("/api/v1/templates", json!({"name": "t", "contents": "x"})).await;
    let conflicts = [
        (
            Method::POST,
            "/api/v1/machines",
            json!({"name": "a", "params": {"undefined-param": 1}}),
            "reference",
            "params.undefined-param",
        ),
        (
            Method::POST,
            "/api/v1/profiles",
            json!({"name": "p", "params": {"site-ntp": "10.0.0.1"}}),
            "param_value",
            "params.site-ntp",
        ),
        (Method::PUT, "/api/v1/templates/t", json!({"name": "other", "contents": "x"}), "key_mismatch", "name"),
    ];
    for (method, path, body, code, field) in conflicts {
        let r = api.send(method, path, Some(body.clone()), None).await;
        assert_eq!(
            (r.status, r.body["error"].as_str(), r.body["field"].as_str()),
            (409, Some(code), Some(field)),
            "{body}: {}",
            r.body
        );
    }
    // Oversized body.
    let big = "x".repeat(plinth_api::MAX_BODY + 10);
    let r = http
        .post(format!("{}/api/v1/templates", server.url))
        .bearer_auth(&api.token)
        .json(&json!({"name": "big", "contents": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Nothing invalid was stored, and the server still serves.
    assert_eq!(api.get("/api/v1/machines").await.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(api.get("/api/v1/templates/big").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(tmp.path());
    let api = server.api().await;
    let m = api.post("/api/v1/machines", json!({"name": "keep-me", "macs": ["52:54:00:00:00:aa"]})).await;
    let id = m.body["id"].as_str().unwrap().to_owned();
    api.send(Method::PATCH, &format!("/api/v1/machines/{id}"), Some(json!({"bootenv": "local"})), None).await;
    assert!(server.stop().success(), "clean exit on SIGTERM");
    let password_file = tmp.path().join("initial-admin-password");
    assert!(!password_file.exists(), "PLINTH_ADMIN_PASSWORD given: no password file");

    let server = Server::start_in(tmp.path());
    let api2 = server.api().await;
    let got = api2.get(&format!("/api/v1/machines/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!((got.body["bootenv"].as_str(), got.body["revision"].as_u64()), (Some("local"), Some(2)));
    // The old token survives the restart too.
    let r = server.http().get(format!("{}/api/v1/machines", server.url)).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_writes_a_random_admin_password_readable_only_by_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::bin())
        .args(["serve", "--api-addr", "127.0.0.1:0", "--http-addr", "off", "--tftp-addr", "off", "--dhcp-port", "off"])
        .arg("--data-dir")
        .arg(tmp.path())
        .env_remove("PLINTH_ADMIN_PASSWORD")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = tmp.path().join("initial-admin-password");
    let ca_key = tmp.path().join("tls/ca-key.pem");
    for _ in 0..200 {
        if file.exists() && std::fs::metadata(&file).unwrap().len() > 0 && ca_key.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let meta = std::fs::metadata(&file).expect("password file written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&file).unwrap().trim().len() >= 20);
    assert_eq!(std::fs::metadata(&ca_key).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_committed_changes_filtered_by_kind() {
    use futures_util::StreamExt;
    let server = Server::start();
    let api = server.api().await;
    let resp = server
        .http()
        .get(format!("{}/api/v1/events?kind=templates", server.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    // The stream opens with `ready`: from then on no committed change is
    // missed, so no sleep is needed before writing.
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut buf = String::new();
    let mut name = String::from("message");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut wrote = false;
    while events.len() < 3 {
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("events arrive").unwrap().unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buf.find('\n') {
            let line: String = buf.drain(..=pos).collect();
            if let Some(e) = line.strip_prefix("event:") {
                name = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                events.push((std::mem::replace(&mut name, "message".into()), serde_json::from_str(d.trim()).unwrap()));
            }
        }
        if !wrote && !events.is_empty() {
            assert_eq!(events[0], ("ready".to_string(), json!({"subscribed": true})));
            api.post("/api/v1/machines", json!({"name": "not-watched"})).await;
            api.post("/api/v1/templates", json!({"name": "t1", "contents": "x"})).await;
            api.send(Method::DELETE, "/api/v1/templates/t1", None, None).await;
            wrote = true;
        }
    }
    let events: Vec<Value> = events.into_iter().skip(1).map(|(_, v)| v).collect();
    assert_eq!(events[0]["kind"], "templates");
    assert_eq!(events[0]["action"], "created");
    assert_eq!(events[0]["key"], "t1");
    assert_eq!(events[0]["revision"], 1);
    assert_eq!(events[0]["object"]["contents"], "x");
    assert_eq!(events[1]["action"], "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_revokes_its_tokens() {
    let server = Server::start();
    let api = server.api().await;
    api.post("/api/v1/users", json!({"name": "temp", "password": "temporary-pass"})).await;
    let http = server.http();
    let r = http
        .post(format!("{}/api/v1/auth/token", server.url))
        .basic_auth("temp", Some("temporary-pass"))
        .send()
        .await
        .unwrap();
    let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    assert_eq!(http.get(format!("{}/api/v1/info", server.url)).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(api.get("/api/v1/tokens?user=temp").await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(api.send(Method::DELETE, "/api/v1/users/temp", None, None).await.status, 200);
    assert_eq!(http.get(format!("{}/api/v1/info", server.url)).bearer_auth(&token).send().await.unwrap().status(), 401);
    assert_eq!(api.get("/api/v1/tokens?user=temp").await.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(api.send(Method::DELETE, "/api/v1/users/admin", None, None).await.status, 409, "cannot delete yourself");
    assert_eq!(api.send(Method::DELETE, "/api/v1/profiles/global", None, None).await.status, 409, "global is built in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_params_resolve_across_layers_and_explain_themselves() {
    let server = Server::start();
    let api = server.api().await;
    for p in [
        json!({"name": "tz", "schema": {"type": "string", "default": "UTC"}}),
        json!({"name": "ntp", "schema": {"type": "array", "items": {"type": "string"}}}),
        json!({"name": "root-password", "schema": {"type": "string"}, "secure": true}),
    ] {
        assert_eq!(api.post("/api/v1/params", p).await.status, 201);
    }
    api.send(
        Method::PATCH,
        "/api/v1/profiles/global",
        Some(json!({"params": {"ntp": ["global.ntp"], "tz": "Etc/UTC"}})),
        None,
    )
    .await;
    api.post("/api/v1/profiles", json!({"name": "site", "params": {"tz": "Europe/Paris"}})).await;
    let m = api
        .post("/api/v1/machines", json!({"name": "m1", "profiles": ["site"], "params": {"root-password": "s3cret"}}))
        .await;
    let id = m.body["id"].as_str().unwrap().to_owned();

    let plain = api.get(&format!("/api/v1/machines/{id}/params")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body["tz"], "Europe/Paris");
    assert_eq!(plain.body["ntp"], json!(["global.ntp"]));
    assert_eq!(plain.body["root-password"], "<secure>", "secure values are never shown");

    let explained = api.get(&format!("/api/v1/machines/{id}/params?explain=true")).await.body;
    assert_eq!(explained["tz"]["source"], json!({"layer": "profile", "name": "site", "via": []}));
    let shadowed: Vec<&str> =
        explained["tz"]["shadows"].as_array().unwrap().iter().map(|s| s["source"]["layer"].as_str().unwrap()).collect();
    assert_eq!(shadowed, ["global", "default"]);
    assert_eq!(explained["ntp"]["source"]["layer"], "global");
    assert!(!explained.to_string().contains("s3cret"));

    let out = server.cli(&["machines", "params", &id, "--explain"], Some(&api.token));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("profile:site") && text.contains("Europe/Paris"), "{text}");
    assert_eq!(api.get("/api/v1/machines/6f1c2a9e-0b7d-4c1e-9a53-2d1f0e8b7c44/params").await.status, 404);

    // POST /api/v1/render: the debugging tool, with no side effects.
    api.post("/api/v1/params", json!({"name": "snippet", "schema": {"type": "string"}})).await;
    api.send(Method::PATCH, &format!("/api/v1/machines/{id}"), Some(json!({"params": {"snippet": "site-ntp"}})), None)
        .await;
    api.post("/api/v1/templates", json!({"name": "site-ntp", "contents": "server {{ param('ntp') | join(' ') }}"}))
        .await;
    api.post("/api/v1/templates", json!({"name": "ks", "contents": "hostname {{ machine.name }}\ntimezone {{ param('tz') }}\n{% include param('snippet') %}"})).await;
    let r = api.post("/api/v1/render", json!({"machine": id, "template": "ks"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], "hostname m1\ntimezone Europe/Paris\nserver global.ntp");
    let r = api.post("/api/v1/render", json!({"machine": id, "contents": "ok\n{{ param('root-password') }}"})).await;
    assert_eq!(r.status, 400, "secure params are not rendered here");
    assert!(!r.body.to_string().contains("s3cret"));
    let r = api.post("/api/v1/render", json!({"machine": id, "contents": "line 1\n{{ machine.nonexistent }}"})).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("contents")));
    assert!(r.body["detail"].as_str().unwrap().contains("line 2"), "{}", r.body);
    let r = api.post("/api/v1/render", json!({"machine": id, "template": "ks", "contents": "x"})).await;
    assert_eq!(r.status, 400);
    let r = api.post("/api/v1/render", json!({"machine": id, "template": "nope"})).await;
    assert_eq!(r.status, 404);
}

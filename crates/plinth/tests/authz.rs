//! Authorization through a running server. Every route of the OpenAPI
//! document is tried: a user whose roles claim nothing gets 403 from each;
//! each built-in role gets exactly what it claims; a restricted token gets
//! only its subset; and a machine token, aimed at another machine, is
//! refused by every route.

mod common;

use common::{Api, Server};
use reqwest::Method;
use serde_json::{Value, json};

async fn created(api: &Api, path: &str, body: Value) -> Value {
    let r = api.post(path, body).await;
    assert_eq!(r.status, 201, "{path}: {}", r.body);
    r.body
}

/// A bearer token for `user` (password `password`), optionally restricted.
async fn login(server: &Server, user: &str, password: &str, claims: Option<Value>) -> (u16, Value) {
    let mut body = json!({});
    if let Some(c) = claims {
        body["claims"] = c;
    }
    let r = server
        .http()
        .post(format!("{}/api/v1/auth/token", server.url))
        .basic_auth(user, Some(password))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn as_user(server: &Server, user: &str, password: &str) -> Api {
    let (status, body) = login(server, user, password, None).await;
    assert_eq!(status, 201, "{body}");
    Api { http: server.http(), url: server.url.clone(), token: body["token"].as_str().unwrap().to_owned() }
}

/// Every (method, concrete path) of the OpenAPI document, with `{key}` and
/// `{id}` filled by `fill` (given the path's first segment).
fn routes(doc: &Value, fill: &dyn Fn(&str) -> String) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let kind = path.trim_start_matches("/api/v1/").split('/').next().unwrap();
        let concrete = path.replace("{key}", &fill(kind)).replace("{id}", &fill(kind));
        let methods = ["get", "put", "post", "delete", "patch"];
        for method in ops.as_object().unwrap().keys().filter(|m| methods.contains(&m.as_str())) {
            out.push((method.to_uppercase().parse().unwrap(), concrete.clone()));
        }
    }
    out
}

async fn status(api: &Api, method: &Method, path: &str) -> u16 {
    let body = matches!(*method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
    if path.ends_with("/events") {
        // A stream: only the status line matters.
        let r = api.http.get(format!("{}{path}", api.url)).bearer_auth(&api.token).send().await.unwrap();
        return r.status().as_u16();
    }
    api.send(method.clone(), path, body, None).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_claims_for_each_role_restricted_tokens_and_machine_tokens() {
    let server = Server::start();
    let admin = server.api().await;
    let doc = admin.get("/api/v1/openapi.json").await.body;

    // Built-in roles exist and cannot be changed or deleted.
    for role in ["admin", "operator", "viewer"] {
        assert_eq!(admin.get(&format!("/api/v1/roles/{role}")).await.status, 200);
        let r = admin.send(Method::DELETE, &format!("/api/v1/roles/{role}"), None, None).await;
        assert_eq!(r.status, 409, "{}", r.body);
        let r = admin.send(Method::PATCH, &format!("/api/v1/roles/{role}"), Some(json!({"claims": []})), None).await;
        assert_eq!(r.status, 409, "{}", r.body);
    }
    // A role with an unknown action, or a user with an unknown role, is refused.
    let r =
        admin.post("/api/v1/roles", json!({"name": "bad", "claims": [{"kind": "machines", "action": "fly"}]})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r =
        admin.post("/api/v1/users", json!({"name": "ghost", "password": "ghost-password", "roles": ["nope"]})).await;
    assert_eq!(r.status, 409, "{}", r.body);

    created(&admin, "/api/v1/roles", json!({"name": "nothing", "description": "claims nothing"})).await;
    created(
        &admin,
        "/api/v1/roles",
        json!({"name": "web-ops", "claims": [{"kind": "machines", "action": "*", "name": "web-*"}]}),
    )
    .await;
    for (user, role) in [("nobody", "nothing"), ("olivia", "operator"), ("victor", "viewer"), ("wendy", "web-ops")] {
        created(
            &admin,
            "/api/v1/users",
            json!({"name": user, "password": format!("{user}-password"), "roles": [role]}),
        )
        .await;
    }
    // A role in use cannot be deleted.
    assert_eq!(admin.send(Method::DELETE, "/api/v1/roles/nothing", None, None).await.status, 409);

    let web = created(&admin, "/api/v1/machines", json!({"name": "web-1", "macs": ["52:54:00:aa:00:01"]})).await;
    let db = created(&admin, "/api/v1/machines", json!({"name": "db-1", "macs": ["52:54:00:aa:00:02"]})).await;
    let db_id = db["id"].as_str().unwrap().to_owned();
    created(&admin, "/api/v1/tasks", json!({"name": "noop", "templates": [{"name": "run", "contents": "true"}]})).await;
    let db_job = created(&admin, "/api/v1/jobs", json!({"machine": db_id, "task": "noop"})).await;
    let db_job_id = db_job["id"].as_str().unwrap().to_owned();
    let web_id = web["id"].as_str().unwrap().to_owned();
    let fill = |kind: &str| match kind {
        "machines" => db_id.clone(),
        "jobs" => db_job_id.clone(),
        _ => "some-key".to_owned(),
    };
    let all = routes(&doc, &fill);
    assert!(all.len() > 80, "the document lists every route: {}", all.len());
    let public = |path: &str| {
        ["/api/v1/auth/token", "/api/v1/info", "/api/v1/openapi.json", "/healthz", "/readyz"].contains(&path)
    };

    // Claims nothing: 403 from every route but the public ones.
    let nobody = as_user(&server, "nobody", "nobody-password").await;
    for (method, path) in &all {
        if public(path) {
            continue;
        }
        assert_eq!(status(&nobody, method, path).await, 403, "{method} {path}");
    }
    assert_eq!(nobody.get("/api/v1/info").await.status, 200);

    // A machine token for web-1, aimed at db-1 and its job through every
    // route: refused (403), never served.
    created(&admin, "/api/v1/templates", json!({"name": "tok", "contents": "{{ machine_token() }}"})).await;
    created(
        &admin,
        "/api/v1/bootenvs",
        json!({"name": "tok-env", "templates": [{"name": "tok", "template": "tok", "path": "tok.txt"}]}),
    )
    .await;
    let r = admin
        .send(Method::PATCH, &format!("/api/v1/machines/{web_id}"), Some(json!({"bootenv": "tok-env"})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = reqwest::get(format!("http://{}/machines/52-54-00-aa-00-01/tok.txt", server.addr("http")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(token.starts_with("plt_"), "{token}");
    let token = server.session(&web_id, &token).await;
    let machine = Api { http: server.http(), url: server.url.clone(), token };
    assert_eq!(machine.get(&format!("/api/v1/machines/{web_id}")).await.status, 200, "its own machine");
    for (method, path) in &all {
        if public(path) {
            continue;
        }
        if path == "/api/v1/machines/whoami" {
            // About the caller itself: it answers with its own machine.
            let r = machine.post(path, json!({})).await;
            assert_eq!((r.status, r.body["machine"]["id"].as_str()), (200, Some(web_id.as_str())), "{}", r.body);
            continue;
        }
        let s = status(&machine, method, path).await;
        // Another machine's job is answered as missing: its existence is
        // not disclosed.
        let refused = s == 403 || (path.starts_with("/api/v1/jobs/") && s == 404);
        assert!(refused, "machine token {method} {path}: {s}");
    }

    // Viewer: reads pass the claim check (200, or 404 for a missing
    // object); writes, tokens and secure values are refused.
    let viewer = as_user(&server, "victor", "victor-password").await;
    for (method, path) in &all {
        if public(path) {
            continue;
        }
        let s = status(&viewer, method, path).await;
        let reads = *method == Method::GET || path == "/api/v1/render" || path == "/api/v1/contents/plan";
        if reads && !path.starts_with("/api/v1/tokens") {
            assert_ne!(s, 403, "viewer may {method} {path}");
        } else {
            assert_eq!(s, 403, "viewer may not {method} {path}");
        }
    }

    // Operator: everything but users, roles and tokens, a machine's session
    // (only its own agent has one), letting secure values reach a machine
    // (accepting one, or a registration conflict), minting a metadata
    // token (the metadata it reads may carry secure values) and creating a
    // job by hand (jobs come from the workflows the engine sequences).
    let operator = as_user(&server, "olivia", "olivia-password").await;
    for (method, path) in &all {
        if public(path) || path.starts_with("/api/v1/auth") {
            continue;
        }
        let s = status(&operator, method, path).await;
        let forbidden = ["/api/v1/users", "/api/v1/roles", "/api/v1/tokens"].iter().any(|p| path.starts_with(p))
            || path.ends_with("/session")
            || path.ends_with("/accept")
            || path.ends_with("/metadata-token")
            || (*method == Method::POST && path == "/api/v1/jobs");
        assert_eq!(s == 403, forbidden, "operator {method} {path}: {s}");
    }
    created(&operator, "/api/v1/machines", json!({"name": "by-operator"})).await;
    let r = operator
        .post("/api/v1/users", json!({"name": "sneaky", "password": "sneaky-password", "roles": ["admin"]}))
        .await;
    assert_eq!(r.status, 403);

    // A role scoped by name pattern: web-* machines only (matched on the
    // machine's name as well as its id).
    let wendy = as_user(&server, "wendy", "wendy-password").await;
    assert_eq!(wendy.get(&format!("/api/v1/machines/{web_id}")).await.status, 200);
    let r =
        wendy.send(Method::PATCH, &format!("/api/v1/machines/{web_id}"), Some(json!({"description": "w"})), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(wendy.get(&format!("/api/v1/machines/{db_id}")).await.status, 403);
    assert_eq!(wendy.get("/api/v1/machines").await.status, 403, "a named claim does not cover the collection");

    // A restricted token: a subset of its user's claims, never more.
    let (st, body) =
        login(&server, "admin", common::PASSWORD, Some(json!([{"kind": "machines", "action": "read"}]))).await;
    assert_eq!(st, 201, "{body}");
    let narrow =
        Api { http: server.http(), url: server.url.clone(), token: body["token"].as_str().unwrap().to_owned() };
    assert_eq!(narrow.get("/api/v1/machines").await.status, 200);
    assert_eq!(narrow.get(&format!("/api/v1/machines/{web_id}")).await.status, 200);
    assert_eq!(narrow.post("/api/v1/machines", json!({"name": "x"})).await.status, 403);
    assert_eq!(narrow.get("/api/v1/profiles").await.status, 403);
    let (st, body) =
        login(&server, "victor", "victor-password", Some(json!([{"kind": "machines", "action": "update"}]))).await;
    assert_eq!(st, 403, "more than the user may: {body}");
    let (st, _) =
        login(&server, "victor", "victor-password", Some(json!([{"kind": "machines", "action": "teleport"}]))).await;
    assert_eq!(st, 400);
    // Tokens are revocable.
    let narrow_id = narrow.token.trim_start_matches("plt_").split('.').next().unwrap().to_owned();
    assert_eq!(admin.send(Method::DELETE, &format!("/api/v1/tokens/{narrow_id}"), None, None).await.status, 200);
    assert_eq!(narrow.get("/api/v1/machines").await.status, 401);
}

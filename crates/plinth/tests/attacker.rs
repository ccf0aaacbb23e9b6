//! The holes an attacker's probe found, each tried again through the real
//! binary as the probe did, and each now closed: escalation through users
//! and roles, secure values through a machine session, a known machine
//! taken over through discovery, boot credentials for anyone, cheap denial
//! of service, and the smaller ones (event stream, file paths, plain HTTP,
//! session lifetime, file modes).

mod common;

use common::{Api, PASSWORD, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::IpAddr;

async fn created(api: &Api, path: &str, body: Value) -> Value {
    let r = api.post(path, body).await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
    r.body
}

/// `POST /api/v1/auth/token` as `user`, from source address `from`.
async fn login_from(server: &Server, user: &str, password: &str, from: &str) -> (u16, Value) {
    let pem = std::fs::read(server.ca()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let r =
        http.post(format!("{}/api/v1/auth/token", server.url)).basic_auth(user, Some(password)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn as_user(server: &Server, user: &str, password: &str) -> Api {
    let (status, body) = login_from(server, user, password, "127.0.0.1").await;
    assert_eq!(status, 201, "{body}");
    Api { http: server.http(), url: server.url.clone(), token: body["token"].as_str().unwrap().to_owned() }
}

fn http(server: &Server) -> String {
    format!("http://{}", server.addr("http"))
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A machine whose bootenv serves its boot credential at `tok.txt`.
async fn machine_with_token_file(admin: &Api, name: &str, mac: &str) -> String {
    if admin.get("/api/v1/bootenvs/tok-env").await.status == 404 {
        created(admin, "/api/v1/templates", json!({"name": "tok", "contents": "{{ machine_token() }}"})).await;
        created(
            admin,
            "/api/v1/bootenvs",
            json!({"name": "tok-env", "templates": [{"name": "tok", "template": "tok", "path": "tok.txt"},
                {"name": "secret", "contents": "{{ secure_param('site-secret') }}", "path": "secret.txt"}]}),
        )
        .await;
    }
    let m = created(admin, "/api/v1/machines", json!({"name": name, "macs": [mac], "bootenv": "tok-env"})).await;
    m["id"].as_str().unwrap().to_owned()
}

/// Item 2: delegated administration stays within what the delegate holds;
/// a new password ends the old sessions; every user may log out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_administration_cannot_escalate_and_passwords_end_sessions() {
    let server = Server::start();
    let admin = server.api().await;
    created(&admin, "/api/v1/roles", json!({"name": "user-admin", "claims": [{"kind": "users", "action": "*"}]})).await;
    created(&admin, "/api/v1/roles", json!({"name": "role-admin", "claims": [{"kind": "roles", "action": "*"}]})).await;
    created(&admin, "/api/v1/users", json!({"name": "uma", "password": "uma-password", "roles": ["user-admin"]})).await;
    created(&admin, "/api/v1/users", json!({"name": "rolf", "password": "rolf-password", "roles": ["role-admin"]}))
        .await;
    created(&admin, "/api/v1/users", json!({"name": "vic", "password": "vic-password", "roles": ["viewer"]})).await;
    let uma = as_user(&server, "uma", "uma-password").await;
    let rolf = as_user(&server, "rolf", "rolf-password").await;

    // Before: 200 each. After: refused, naming what the editor lacks.
    let r = uma.send(Method::PATCH, "/api/v1/users/uma", Some(json!({"roles": ["user-admin", "admin"]})), None).await;
    assert_eq!(r.status, 403, "uma gives herself admin: {}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("role `admin` grants"), "{}", r.body);
    let r = uma.send(Method::PATCH, "/api/v1/users/admin", Some(json!({"password": "taken-over!"})), None).await;
    assert_eq!(r.status, 403, "uma resets admin's password: {}", r.body);
    let r = uma.post("/api/v1/users", json!({"name": "sock", "password": "sock-password", "roles": ["admin"]})).await;
    assert_eq!(r.status, 403, "uma makes an admin: {}", r.body);
    assert_eq!(uma.send(Method::DELETE, "/api/v1/users/admin", None, None).await.status, 403);
    let r = rolf
        .send(Method::PATCH, "/api/v1/roles/role-admin", Some(json!({"claims": [{"kind": "*", "action": "*"}]})), None)
        .await;
    assert_eq!(r.status, 403, "rolf widens his own role: {}", r.body);
    let r = rolf.post("/api/v1/roles", json!({"name": "all", "claims": [{"kind": "*", "action": "*"}]})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(admin.get("/api/v1/users/uma").await.body["roles"], json!(["user-admin"]), "nothing changed");
    // Within what they hold, delegation works.
    created(&rolf, "/api/v1/roles", json!({"name": "roles-reader", "claims": [{"kind": "roles", "action": "read"}]}))
        .await;
    let r = uma.send(Method::PATCH, "/api/v1/users/vic", Some(json!({"description": "a viewer"})), None).await;
    assert_eq!(r.status, 403, "vic's viewer role grants reads uma does not hold: {}", r.body);
    created(&uma, "/api/v1/users", json!({"name": "una", "password": "una-password", "roles": []})).await;
    // Built-in roles stay as they are.
    assert_eq!(admin.send(Method::PATCH, "/api/v1/roles/viewer", Some(json!({"claims": []})), None).await.status, 409);

    // A password reset revokes the user's tokens; the user's own change
    // keeps only the token it was made with.
    let vic = as_user(&server, "vic", "vic-password").await;
    let vic2 = as_user(&server, "vic", "vic-password").await;
    assert_eq!(vic.get("/api/v1/machines").await.status, 200);
    let r = admin.send(Method::PATCH, "/api/v1/users/vic", Some(json!({"password": "new-vic-password"})), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(vic.get("/api/v1/machines").await.status, 401, "the old session ended with the old password");
    assert_eq!(vic2.get("/api/v1/machines").await.status, 401);
    let una = as_user(&server, "una", "una-password").await;
    let una_other = as_user(&server, "una", "una-password").await;
    let r = una.send(Method::PATCH, "/api/v1/users/una", Some(json!({"password": "una-new-password"})), None).await;
    assert_eq!(r.status, 403, "una has no claim on users, not even herself: {}", r.body);
    let r =
        admin.send(Method::PATCH, "/api/v1/users/admin", Some(json!({"password": "admin-new-password"})), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(admin.get("/api/v1/users").await.status, 200, "the changer's own token stays");

    // Every user lists and revokes its own tokens (logs out), nobody else's.
    let vic = as_user(&server, "vic", "new-vic-password").await;
    let mine = vic.get("/api/v1/tokens?user=vic").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert!(mine.body["items"].as_array().unwrap().iter().all(|t| t["user"] == "vic"));
    assert_eq!(vic.get("/api/v1/tokens").await.status, 403, "everyone's tokens are not vic's to list");
    assert_eq!(vic.get("/api/v1/tokens?user=una").await.status, 403);
    let una_id = una_other.token.trim_start_matches("plt_").split('.').next().unwrap().to_owned();
    assert_eq!(vic.send(Method::DELETE, &format!("/api/v1/tokens/{una_id}"), None, None).await.status, 403);
    let out = server.cli(&["logout"], Some(&vic.token));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(vic.get("/api/v1/machines").await.status, 401, "logged out");
    // Each grant and refusal names the real actor in the audit log.
    let audit = admin.get("/api/v1/audit?kind=roles&limit=100").await.body;
    assert!(audit["items"].as_array().unwrap().iter().any(|e| e["actor"] == "user:rolf" && e["key"] == "roles-reader"));
}

/// Item 1: a user with `machines:update` cannot get a machine's session,
/// and so cannot read its secure values; secure reads name the real actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_values_reach_only_the_machine_itself() {
    let server = Server::start();
    let admin = server.api().await;
    created(&admin, "/api/v1/params", json!({"name": "site-secret", "secure": true, "schema": {"type": "string"}}))
        .await;
    let id = machine_with_token_file(&admin, "web-1", "52:54:00:a7:00:01").await;
    let r = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/machines/{id}"),
            Some(json!({"params": {"site-secret": "hunter2-secret"}})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    created(
        &admin,
        "/api/v1/roles",
        json!({"name": "web-ops", "claims": [{"kind": "machines", "action": "*", "name": "web-*"}]}),
    )
    .await;
    created(&admin, "/api/v1/users", json!({"name": "op", "password": "op-password", "roles": ["operator"]})).await;
    created(&admin, "/api/v1/users", json!({"name": "wes", "password": "wes-password", "roles": ["web-ops"]})).await;
    for user in [("op", "op-password"), ("wes", "wes-password")] {
        let u = as_user(&server, user.0, user.1).await;
        let r = u.post(&format!("/api/v1/machines/{id}/session"), json!({})).await;
        assert_eq!(r.status, 403, "{}: {}", user.0, r.body);
        assert!(r.body.get("token").is_none());
    }
    // The machine itself: its boot credential, traded once, then its
    // secure file with its token in the path, audited as the machine.
    let (_, boot) = get_text(&format!("{}/machines/52-54-00-a7-00-01/tok.txt", http(&server))).await;
    let session = server.session(&id, &boot).await;
    let (st, secret) = get_text(&format!("{}/t/{session}/secret.txt", http(&server))).await;
    assert_eq!((st, secret.as_str()), (200, "hunter2-secret"));
    let audit = admin.get(&format!("/api/v1/audit?kind=machines&key={id}")).await.body;
    let reads: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "secure-read").collect();
    assert!(reads.iter().any(|e| e["actor"] == format!("machine:{id}")), "{audit}");
    assert!(!audit.to_string().contains("hunter2-secret"));
}

/// Item 3: discovery can neither take over a known machine nor read the
/// site's secrets; join tokens for unknown machines are bounded; a job sets
/// only the params its task declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_cannot_take_over_or_read_secrets() {
    let server = Server::start();
    let admin = server.api().await;
    let known_mac = "52:54:00:a7:01:01";
    let victim =
        created(&admin, "/api/v1/machines", json!({"name": "db-1", "macs": [known_mac], "inventory": {"owner": "db"}}))
            .await;
    let victim_id = victim["id"].as_str().unwrap().to_owned();
    // The site's discovery workflow, whose task would print a secret.
    created(&admin, "/api/v1/params", json!({"name": "site-secret", "secure": true, "schema": {"type": "string"}}))
        .await;
    created(&admin, "/api/v1/params", json!({"name": "rack", "schema": {"type": "string"}})).await;
    created(
        &admin,
        "/api/v1/tasks",
        json!({"name": "peek", "reports": ["rack"],
        "templates": [{"name": "run", "contents": "echo {{ secure_param('site-secret') }}"}]}),
    )
    .await;
    created(
        &admin,
        "/api/v1/tasks",
        json!({"name": "look", "reports": ["rack"],
        "templates": [{"name": "run", "contents": "echo looking"}]}),
    )
    .await;
    created(&admin, "/api/v1/stages", json!({"name": "discover", "tasks": ["look", "peek"]})).await;
    created(&admin, "/api/v1/workflows", json!({"name": "discover", "stages": ["discover"]})).await;
    let r = admin
        .send(
            Method::PATCH,
            "/api/v1/profiles/global",
            Some(json!({"params": {"discovery-workflow": "discover", "site-secret": "global-secret-value"}})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Join tokens minted by unauthenticated script fetches are bounded:
    // 40 fetches from one address get at most 10 (the per-minute budget).
    let before = admin.get("/api/v1/tokens?limit=10000").await.body["items"].as_array().unwrap().len();
    let mut joins = Vec::new();
    for i in 0..40 {
        let (st, script) = get_text(&format!("{}/ipxe/52-54-00-a7-ff-{i:02x}", http(&server))).await;
        if let Some(t) = script.split("plinth.join=").nth(1).and_then(|t| t.split_whitespace().next()) {
            assert_eq!(st, 200);
            joins.push(t.to_owned());
        }
    }
    let after = admin.get("/api/v1/tokens?limit=10000").await.body["items"].as_array().unwrap().len();
    assert_eq!(joins.len(), 10, "per address per minute");
    assert_eq!(after - before, 10, "nothing stored for the refused ones");
    let token = joins[0].clone();
    let join = Api { http: server.http(), url: server.url.clone(), token: token.clone() };

    // A known machine's MAC (and a new one): held as a conflict, no token,
    // nothing of the machine changed.
    let claim = json!({"macs": [known_mac, "52:54:00:a7:01:99"], "inventory": {"owner": "mallory"}});
    let r = join.post("/api/v1/machines/whoami", claim.clone()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.get("token").is_none() && r.body["detail"].as_str().unwrap().contains("conflict"), "{}", r.body);
    let db = admin.get(&format!("/api/v1/machines/{victim_id}")).await.body;
    assert_eq!((db["macs"].clone(), db["inventory"]["owner"].clone()), (json!([known_mac]), json!("db")));
    let conflicts = admin.get("/api/v1/conflicts").await.body["items"].as_array().unwrap().clone();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(
        (conflicts[0]["machine"].as_str(), conflicts[0]["state"].as_str()),
        (Some(victim_id.as_str()), Some("pending"))
    );
    let timeline = admin.get(&format!("/api/v1/machines/{victim_id}/timeline")).await.body.to_string();
    assert!(timeline.contains("held as conflict"), "{timeline}");
    // Asking again changes nothing; a rejected registration is refused.
    assert_eq!(join.post("/api/v1/machines/whoami", claim.clone()).await.status, 409);
    assert_eq!(admin.get("/api/v1/conflicts").await.body["items"].as_array().unwrap().len(), 1);
    let cid = conflicts[0]["id"].as_str().unwrap();
    assert_eq!(admin.post(&format!("/api/v1/conflicts/{cid}/reject"), json!({})).await.status, 200);
    assert_eq!(join.post("/api/v1/machines/whoami", claim).await.status, 403);

    // A fresh MAC: a new machine, untrusted; the discovery workflow runs,
    // but no secure value is rendered for it, and its token reads no
    // resolved params.
    let fresh = Api { http: server.http(), url: server.url.clone(), token: joins[1].clone() };
    let r = fresh.post("/api/v1/machines/whoami", json!({"macs": ["52:54:00:a7:02:01"]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["machine"]["trusted"], false);
    let id = r.body["machine"]["id"].as_str().unwrap().to_owned();
    let agent =
        Api { http: server.http(), url: server.url.clone(), token: r.body["token"].as_str().unwrap().to_owned() };
    assert_eq!(agent.get(&format!("/api/v1/machines/{id}/params")).await.status, 403);
    let next = agent.post(&format!("/api/v1/machines/{id}/next"), json!({"boot_id": "b1"})).await.body;
    let job = next["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(next["job"]["task"], "look");
    // A job sets only what its task declares; what it sets is audited.
    agent.post(&format!("/api/v1/jobs/{job}/start"), json!({})).await;
    let r = agent
        .post(
            &format!("/api/v1/jobs/{job}/finish"),
            json!({"exit_code": 0, "params": {"kernel-extra-args": "init=/bin/sh"}}),
        )
        .await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("params.kernel-extra-args")), "{}", r.body);
    let r = agent.post(&format!("/api/v1/jobs/{job}/finish"), json!({"exit_code": 0, "params": {"rack": "r7"}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = admin.get(&format!("/api/v1/audit?kind=machines&key={id}")).await.body.to_string();
    assert!(audit.contains("set params rack") && audit.contains(&format!("machine:{id}")), "{audit}");
    let next = agent.post(&format!("/api/v1/machines/{id}/next"), json!({"boot_id": "b1"})).await.body;
    let peek = next["job"]["id"].as_str().unwrap().to_owned();
    let files = agent.get(&format!("/api/v1/jobs/{peek}/files")).await;
    assert_eq!(files.status, 409, "{}", files.body);
    assert!(files.body["detail"].as_str().unwrap().contains("not trusted"), "{}", files.body);
    assert!(!files.body.to_string().contains("global-secret-value"));
    // Accepted (a grant of its own: an operator may not), it gets them.
    created(&admin, "/api/v1/users", json!({"name": "op", "password": "op-password", "roles": ["operator"]})).await;
    let op = as_user(&server, "op", "op-password").await;
    assert_eq!(op.post(&format!("/api/v1/machines/{id}/accept"), json!({})).await.status, 403);
    // Nor by writing the field: a patch or a replace that trusts it needs
    // the same claim.
    let path = format!("/api/v1/machines/{id}");
    let r = op.send(reqwest::Method::PATCH, &path, Some(json!({"trusted": true})), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let mut whole = op.get(&format!("/api/v1/machines/{id}")).await.body;
    whole["trusted"] = json!(true);
    assert_eq!(op.send(reqwest::Method::PUT, &path, Some(whole), None).await.status, 403);
    assert_eq!(admin.get(&format!("/api/v1/machines/{id}")).await.body["trusted"], false);
    assert_eq!(admin.post(&format!("/api/v1/machines/{id}/accept"), json!({})).await.status, 200);
    let files = agent.get(&format!("/api/v1/jobs/{peek}/files")).await;
    assert_eq!(files.status, 200, "{}", files.body);
    assert!(files.body.to_string().contains("global-secret-value"));
}

/// Item 4: boot credentials are bound to the boot: handed only to the
/// leased address, short-lived, traded once (a second trade is refused and
/// shown on the timeline); boot files' URLs never come from `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_credentials_are_bound_to_the_boot() {
    let server = Server::start();
    let admin = server.api().await;
    created(&admin, "/api/v1/params", json!({"name": "site-secret", "secure": true, "schema": {"type": "string"}}))
        .await;
    let leased = machine_with_token_file(&admin, "leased", "52:54:00:a7:03:01").await;
    let free = machine_with_token_file(&admin, "free", "52:54:00:a7:03:02").await;
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    created(
        &admin,
        "/api/v1/subnets",
        json!({"name": "lab", "cidr": "10.9.0.0/24", "range_start": "10.9.0.10", "range_end": "10.9.0.99"}),
    )
    .await;
    created(
        &admin,
        "/api/v1/leases",
        json!({"address": "10.9.0.10", "mac": "52:54:00:a7:03:01", "subnet": "lab",
        "state": "bound", "expires_at": expires}),
    )
    .await;
    // Plinth leased it 10.9.0.10: a request from anywhere else gets no
    // credential (before: a 24 h machine token for anyone).
    let (st, body) = get_text(&format!("{}/machines/52-54-00-a7-03-01/tok.txt", http(&server))).await;
    assert_eq!(st, 404, "{body}");
    let (st, script) = get_text(&format!("{}/ipxe/52-54-00-a7-03-01", http(&server))).await;
    assert!(st == 404 || !script.contains("plt_"), "{st} {script}");

    // No lease: the credential is handed out, but it is a boot credential:
    // short-lived, it reads nothing, and it trades for a session once.
    let (st, boot) = get_text(&format!("{}/machines/52-54-00-a7-03-02/tok.txt", http(&server))).await;
    assert_eq!(st, 200);
    let tokens = admin.get(&format!("/api/v1/tokens?machine={free}")).await.body["items"].clone();
    let t = &tokens[0];
    let ttl = chrono::DateTime::parse_from_rfc3339(t["expires_at"].as_str().unwrap()).unwrap().timestamp()
        - chrono::DateTime::parse_from_rfc3339(t["created_at"].as_str().unwrap()).unwrap().timestamp();
    assert!(ttl <= 900, "minutes, not a day: {ttl} s");
    let as_boot = Api { http: server.http(), url: server.url.clone(), token: boot.clone() };
    assert_eq!(as_boot.get(&format!("/api/v1/machines/{free}")).await.status, 403);
    // The attacker trades first; the machine's own trade is refused and
    // the machine's timeline says a copy may have been taken.
    let stolen = server.session(&free, &boot).await;
    let second = as_boot.post(&format!("/api/v1/machines/{free}/session"), json!({})).await;
    assert_eq!(second.status, 401, "{}", second.body);
    let timeline = admin.get(&format!("/api/v1/machines/{free}/timeline")).await.body.to_string();
    assert!(
        timeline.contains("a second trade of boot credential") && timeline.contains("traded for a session"),
        "{timeline}"
    );
    let audit = admin.get("/api/v1/audit?kind=tokens").await.body.to_string();
    assert!(audit.contains("refused") && audit.contains("second trade"), "{audit}");
    assert!(!stolen.is_empty());
    // Each fetch mints one; at most a few stay outstanding per machine.
    for _ in 0..20 {
        get_text(&format!("{}/machines/52-54-00-a7-03-02/tok.txt", http(&server))).await;
    }
    let outstanding = admin.get(&format!("/api/v1/tokens?machine={free}&boot=true")).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["uses_left"] == 1)
        .count();
    assert!(outstanding <= 8, "{outstanding} boot credentials outstanding");
    // Deleting the machine ends its tokens; re-created with the same id,
    // it does not get them back.
    let body = admin.get(&format!("/api/v1/machines/{free}")).await.body;
    assert_eq!(admin.send(Method::DELETE, &format!("/api/v1/machines/{free}"), None, None).await.status, 200);
    created(
        &admin,
        "/api/v1/machines",
        json!({"id": free, "name": "free", "macs": body["macs"], "bootenv": "tok-env"}),
    )
    .await;
    let old = Api { http: server.http(), url: server.url.clone(), token: stolen };
    assert_eq!(old.get(&format!("/api/v1/machines/{free}")).await.status, 401);
    assert!(admin.get(&format!("/api/v1/tokens?machine={free}")).await.body["items"].as_array().unwrap().is_empty());

    // `Host` says evil.example: the script still names the server.
    let r = reqwest::Client::new()
        .get(format!("{}/ipxe/52-54-00-a7-03-99", http(&server)))
        .header("Host", "evil.example:8091")
        .send()
        .await
        .unwrap();
    let script = r.text().await.unwrap();
    assert!(!script.contains("evil.example"), "{script}");
    assert!(script.contains(&format!("http://{}", server.addr("http"))), "{script}");
    let _ = leased;
}

/// Item 5: failed logins from elsewhere cannot lock the owner out, and the
/// host can always reset a password; job logs and renders are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cheap_denial_of_service() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        tmp.path(),
        &[],
        &["--http-addr", "127.0.0.1:0", "--tftp-addr", "off", "--dhcp-port", "off", "--job-log-max", "100000"],
    );
    // The admin has logged in from 127.0.0.1 before.
    assert_eq!(login_from(&server, "admin", PASSWORD, "127.0.0.1").await.0, 201);
    for _ in 0..12 {
        login_from(&server, "admin", "wrong password", "127.0.0.2").await;
    }
    assert_eq!(login_from(&server, "admin", PASSWORD, "127.0.0.2").await.0, 429, "the attacker's address");
    assert_eq!(login_from(&server, "admin", PASSWORD, "127.0.0.1").await.0, 201, "the owner's known address");
    assert_eq!(login_from(&server, "admin", PASSWORD, "127.0.0.3").await.0, 429, "an unknown address");
    // From the server's host: a new password, and the lock is gone.
    let pw = tmp.path().join("new-password");
    std::fs::write(&pw, "a-fresh-admin-password\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["users", "reset-password", "admin", "--password-file"])
        .arg(&pw)
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("token(s) revoked"));
    assert_eq!(login_from(&server, "admin", "a-fresh-admin-password", "127.0.0.3").await.0, 201);
    let admin = as_user(&server, "admin", "a-fresh-admin-password").await;
    let audit = admin.get("/api/v1/audit?kind=users&key=admin").await.body.to_string();
    assert!(audit.contains("host:"), "{audit}");

    // A job's log stops at its limit and says so.
    created(&admin, "/api/v1/tasks", json!({"name": "noisy", "templates": [{"name": "run", "contents": "yes"}]})).await;
    created(&admin, "/api/v1/stages", json!({"name": "noisy", "tasks": ["noisy"]})).await;
    created(&admin, "/api/v1/workflows", json!({"name": "noisy", "stages": ["noisy"]})).await;
    let join = created(&admin, "/api/v1/join-tokens", json!({"workflow": "noisy"})).await;
    let j = Api { http: server.http(), url: server.url.clone(), token: join["token"].as_str().unwrap().to_owned() };
    let who = j.post("/api/v1/machines/whoami", json!({"macs": ["52:54:00:a7:04:01"]})).await.body;
    let id = who["machine"]["id"].as_str().unwrap().to_owned();
    let agent = Api { http: server.http(), url: server.url.clone(), token: who["token"].as_str().unwrap().to_owned() };
    let job = agent.post(&format!("/api/v1/machines/{id}/next"), json!({})).await.body["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let chunk = "y\n".repeat(10_000);
    let mut truncated = false;
    for seq in 0..12 {
        let r = agent.post(&format!("/api/v1/jobs/{job}/log"), json!({"seq": seq, "text": chunk})).await;
        assert_eq!(r.status, 200);
        truncated |= r.body["truncated"] == true;
    }
    assert!(truncated);
    let log = server.cli(&["jobs", "log", &job], Some(&admin.token));
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(text.len() < 100_200 && text.contains("reached its limit of 100000 bytes"), "{}", text.len());

    // A viewer's render that would take gigabytes is stopped by its
    // budget, in a process of its own; the server serves on.
    admin.post("/api/v1/users", json!({"name": "vee", "password": "vee-password", "roles": ["viewer"]})).await;
    let vee = as_user(&server, "vee", "vee-password").await;
    let bomb = "{% set a = 'x' * 60000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{{ (c ~ c) | length }}";
    let mut renders = Vec::new();
    for _ in 0..4 {
        let (api, machine) =
            (Api { http: vee.http.clone(), url: vee.url.clone(), token: vee.token.clone() }, id.clone());
        renders.push(tokio::spawn(async move {
            api.post("/api/v1/render", json!({"machine": machine, "contents": bomb})).await
        }));
    }
    for r in renders {
        let r = r.await.unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
        // The render's fuel charges the data it makes as well as its steps;
        // its process's memory limit stops whatever fuel would let through.
        let why = r.body["detail"].as_str().unwrap();
        assert!(why.contains("budget") || why.contains("ran too long"), "{}", r.body);
    }
    // A render that stays within fuel but not within memory: the process
    // limit stops it.
    let hog = "{% set ns = namespace(l=[]) %}{% for i in range(60000) %}{% set ns.l = ns.l + [[i, i, i, i]] %}{% endfor %}{{ ns.l | length }}";
    let r = vee.post("/api/v1/render", json!({"machine": id, "contents": hog})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(peak_kib < 300 * 1024, "the server's own peak memory stayed small: {peak_kib} KiB");
    let r = vee.post("/api/v1/render", json!({"machine": id, "contents": "{{ machine.name }}"})).await;
    assert_eq!((r.status, r.body["output"].as_str()), (200, Some("node-525400a70401")), "{}", r.body);
}

/// Subscribes `api` to the event stream and gathers what arrives for `secs`.
async fn events_for(api: &Api, secs: u64) -> tokio::task::JoinHandle<String> {
    use futures_util::StreamExt;
    let resp = api.http.get(format!("{}/api/v1/events", api.url)).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut text = String::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(secs), async {
            while let Some(Ok(chunk)) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await;
        text
    })
}

/// Item 6: the event stream shows each subscriber only what it may read:
/// a `web-*` user no `db-1`, no users and no tokens; a viewer no tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_claims() {
    let server = Server::start();
    let admin = server.api().await;
    created(
        &admin,
        "/api/v1/roles",
        json!({"name": "web-watch", "claims": [
        {"kind": "machines", "action": "read", "name": "web-*"}, {"kind": "events", "action": "read"}]}),
    )
    .await;
    created(&admin, "/api/v1/users", json!({"name": "wanda", "password": "wanda-password", "roles": ["web-watch"]}))
        .await;
    created(&admin, "/api/v1/users", json!({"name": "vic", "password": "vic-password", "roles": ["viewer"]})).await;
    let wanda = as_user(&server, "wanda", "wanda-password").await;
    let vic = as_user(&server, "vic", "vic-password").await;
    let (w, v, a) = (events_for(&wanda, 4).await, events_for(&vic, 4).await, events_for(&admin, 4).await);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    created(&admin, "/api/v1/machines", json!({"name": "db-1"})).await;
    created(&admin, "/api/v1/users", json!({"name": "eve", "password": "eve-password"})).await;
    as_user(&server, "eve", "eve-password").await;
    as_user(&server, "vic", "vic-password").await;
    created(&admin, "/api/v1/machines", json!({"name": "web-1"})).await;
    let (w, v, a) = (w.await.unwrap(), v.await.unwrap(), a.await.unwrap());
    assert!(a.contains("\"db-1\"") && a.contains("\"kind\":\"tokens\""), "the admin sees all: {a}");
    assert!(w.contains("\"web-1\""), "{w}");
    assert!(!w.contains("db-1") && !w.contains("\"kind\":\"users\"") && !w.contains("\"kind\":\"tokens\""), "{w}");
    assert!(v.contains("db-1") && v.contains("\"kind\":\"users\""), "a viewer reads machines and users: {v}");
    assert!(!v.contains("\"user\":\"eve\""), "but not eve's token: {v}");
    assert!(v.contains("\"user\":\"vic\""), "its own token it sees: {v}");
}

/// Item 6, the rest: file paths that would leave their root are refused
/// where written; plain HTTP is refused by the CLI and the agent; sessions
/// end at an absolute lifetime; the agent download is pinned by checksum;
/// the data dir's modes do not follow a permissive umask, and a CA key
/// others can read is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_plain_http_session_ends_checksums_and_file_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A permissive umask, as a careless service manager might leave it.
    let mut server = Server::start_with(
        &data,
        &["sh", "-c", "umask 000; exec \"$0\" \"$@\""],
        &["--http-addr", "127.0.0.1:0", "--tftp-addr", "off", "--dhcp-port", "off", "--machine-session-max", "7200"],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("tls")), 0o700);
    assert_eq!(mode(&data.join("files")), 0o755);
    assert_eq!(mode(&data.join("tls/ca-key.pem")), 0o600);
    let admin = server.api().await;

    for (path, body) in [
        (
            "/api/v1/tasks",
            json!({"name": "t1", "templates": [{"name": "f", "contents": "x", "path": "../../etc/cron.d/x"}]}),
        ),
        ("/api/v1/tasks", json!({"name": "t2", "templates": [{"name": "f", "contents": "x", "path": "/etc/a\u{0}b"}]})),
        ("/api/v1/bootenvs", json!({"name": "b1", "templates": [{"name": "f", "contents": "x", "path": "a/../../b"}]})),
        (
            "/api/v1/bootenvs",
            json!({"name": "b2", "templates": [{"name": "f", "contents": "x", "path": "/etc/passwd"}]}),
        ),
    ] {
        let r = admin.post(path, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.body["field"], "templates[0].path", "{}", r.body);
    }

    // Plain HTTP: refused unless asked for.
    let out = std::process::Command::new(common::bin())
        .args(["machines", "list", "--endpoint", "http://127.0.0.1:9", "--token", "plt_x.y"])
        .env_remove("PLINTH_ALLOW_HTTP")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the clear"), "{}", String::from_utf8_lossy(&out.stderr));
    let agent = std::path::Path::new(common::bin()).with_file_name("plinth-agent");
    let out = std::process::Command::new(&agent)
        .args(["run", "--endpoint", "http://127.0.0.1:9", "--machine", "m", "--token", "plt_x.y", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the clear"));

    // Sessions end at an absolute lifetime; renewals keep that end.
    let join = created(&admin, "/api/v1/join-tokens", json!({})).await;
    let j = Api { http: server.http(), url: server.url.clone(), token: join["token"].as_str().unwrap().to_owned() };
    let who = j.post("/api/v1/machines/whoami", json!({"macs": ["52:54:00:a7:05:01"]})).await.body;
    let id = who["machine"]["id"].as_str().unwrap().to_owned();
    let agent_api =
        Api { http: server.http(), url: server.url.clone(), token: who["token"].as_str().unwrap().to_owned() };
    let renewed = agent_api.post(&format!("/api/v1/machines/{id}/session"), json!({})).await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    let ends = chrono::DateTime::parse_from_rfc3339(renewed.body["session_ends_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(renewed.body["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires <= ends && (ends.timestamp() - chrono::Utc::now().timestamp()) <= 7200, "{}", renewed.body);
    let again =
        Api { http: server.http(), url: server.url.clone(), token: renewed.body["token"].as_str().unwrap().to_owned() };
    let renewed2 = again.post(&format!("/api/v1/machines/{id}/session"), json!({})).await;
    assert_eq!(renewed2.body["session_ends_at"], renewed.body["session_ends_at"], "a renewal keeps the end");

    // The agent download is pinned by its SHA-256.
    std::fs::create_dir_all(data.join("files/agent")).unwrap();
    std::fs::write(data.join("files/agent/plinth-agent-amd64"), b"an agent binary").unwrap();
    created(&admin, "/api/v1/machines", json!({"name": "inst", "macs": ["52:54:00:a7:05:02"], "bootenv": "debian-12"}))
        .await;
    let (st, post) = get_text(&format!("{}/machines/52-54-00-a7-05-02/post-install.sh", http(&server))).await;
    assert_eq!(st, 200, "{post}");
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(b"an agent binary").iter().map(|b| format!("{b:02x}")).collect();
    assert!(post.contains(&format!("echo \"{want}  /usr/local/bin/plinth-agent.new\" | sha256sum -c -")), "{post}");

    // A CA key others may read is refused at the next start.
    server.stop();
    std::fs::set_permissions(data.join("tls/ca-key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(common::bin())
        .args([
            "serve",
            "--api-addr",
            "127.0.0.1:0",
            "--http-addr",
            "off",
            "--tftp-addr",
            "off",
            "--dhcp-port",
            "off",
            "--data-dir",
        ])
        .arg(&data)
        .env("PLINTH_ADMIN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{}", String::from_utf8_lossy(&out.stderr));
}

//! The agent's protocol against the real server: a simulated agent with a
//! machine token runs a two-stage workflow (a task reporting a param back,
//! a task failing once and succeeding on retry), resends a log chunk,
//! asks twice, survives a server restart mid-job, and long-polls for work.

mod common;

use common::{Api, Server};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn ok(api: &Api, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let r = api.send(method, path, body, None).await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
    r.body
}

async fn post(api: &Api, path: &str, body: Value) -> Value {
    ok(api, reqwest::Method::POST, path, Some(body)).await
}

/// A machine token, as the machine gets it: from a boot file that calls `machine_token()`.
async fn machine_token(server: &Server, mac_dash: &str) -> String {
    let url = format!("http://{}/machines/{mac_dash}/agent.env", server.addr("http"));
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.trim().strip_prefix("PLINTH_TOKEN=").unwrap_or_else(|| panic!("{text}")).to_owned()
}

async fn setup(api: &Api) -> String {
    post(api, "/api/v1/params", json!({"name": "disk-count", "schema": {"type": "integer"}})).await;
    post(
        api,
        "/api/v1/bootenvs",
        json!({"name": "agent-env", "templates": [
        {"name": "env", "path": "agent.env", "contents": "PLINTH_TOKEN={{ machine_token() }}"}]}),
    )
    .await;
    post(
        api,
        "/api/v1/tasks",
        json!({"name": "inventory", "reports": ["disk-count"], "templates": [
        {"name": "run", "contents": "#!/bin/sh\necho inventory of {{ machine.name }}\n"},
        {"name": "conf", "path": "/etc/plinth/{{ machine.name }}.conf", "contents": "name={{ machine.name }}\n"}]}),
    )
    .await;
    post(
        api,
        "/api/v1/tasks",
        json!({"name": "flaky", "retries": 1, "templates": [{"name": "run", "contents": "exit 1"}]}),
    )
    .await;
    post(api, "/api/v1/stages", json!({"name": "one", "tasks": ["inventory"]})).await;
    post(api, "/api/v1/stages", json!({"name": "two", "tasks": ["flaky"]})).await;
    post(api, "/api/v1/workflows", json!({"name": "wf", "stages": ["one", "two"]})).await;
    let m = post(
        api,
        "/api/v1/machines",
        json!({"name": "agent-1", "macs": ["52:54:00:09:00:01"], "bootenv": "agent-env"}),
    )
    .await;
    post(api, "/api/v1/machines", json!({"name": "other", "macs": ["52:54:00:09:00:02"], "bootenv": "agent-env"}))
        .await;
    m["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_a_workflow_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path());
    let admin = server.api().await;
    let id = setup(&admin).await;
    let token = machine_token(&server, "52-54-00-09-00-01").await;
    let token = server.session(&id, &token).await;
    let agent = Api { http: server.http(), url: admin.url.clone(), token };
    let next = format!("/api/v1/machines/{id}/next");

    // Nothing to do yet.
    let n = post(&agent, &next, json!({"boot_id": "b1"})).await;
    assert_eq!(n, json!({"action": "wait", "state": "idle"}));
    let out = server.cli(&["machines", "workflow", &id, "wf", "-o", "json"], Some(&admin.token));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let n = post(&agent, &next, json!({"boot_id": "b1"})).await;
    assert_eq!(n["action"], "run");
    let job = n["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        post(&agent, &next, json!({"boot_id": "b1"})).await["job"]["id"],
        job.as_str(),
        "asked twice: the same job"
    );
    let files = ok(&agent, reqwest::Method::GET, &format!("/api/v1/jobs/{job}/files"), None).await;
    assert_eq!(files[0]["contents"], "#!/bin/sh\necho inventory of agent-1");
    assert_eq!(files[1]["path"], "/etc/plinth/agent-1.conf");
    post(&agent, &format!("/api/v1/jobs/{job}/start"), json!({})).await;
    for (seq, text) in [(0, "inventory of agent-1\n"), (1, "disks: 3\n"), (1, "disks: 3\n")] {
        post(&agent, &format!("/api/v1/jobs/{job}/log"), json!({"seq": seq, "text": text})).await;
    }

    // The server restarts mid-job; the agent carries on with the same token.
    server.stop();
    let server = Server::start_in(dir.path());
    let admin = server.api().await;
    let agent = Api { http: server.http(), url: admin.url.clone(), token: agent.token.clone() };
    // A value that does not fit its param's schema is refused, and nothing changes.
    let bad = agent
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/jobs/{job}/finish"),
            Some(json!({"exit_code": 0, "params": {"disk-count": "three"}})),
            None,
        )
        .await;
    assert_eq!(bad.status, 409, "{}", bad.body);
    let done =
        post(&agent, &format!("/api/v1/jobs/{job}/finish"), json!({"exit_code": 0, "params": {"disk-count": 3}})).await;
    assert_eq!(done["state"], "finished");
    let log = server.cli(&["jobs", "log", &job], Some(&admin.token));
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "inventory of agent-1\ndisks: 3\n",
        "the resent chunk is stored once"
    );

    // `flaky` fails once, then succeeds on its retry.
    for (attempt, code) in [(1, 1), (2, 0)] {
        let n = post(&agent, &next, json!({"boot_id": "b1"})).await;
        assert_eq!((n["job"]["task"].as_str(), n["job"]["attempt"].as_u64()), (Some("flaky"), Some(attempt)), "{n}");
        let j = n["job"]["id"].as_str().unwrap();
        post(&agent, &format!("/api/v1/jobs/{j}/start"), json!({})).await;
        post(&agent, &format!("/api/v1/jobs/{j}/finish"), json!({"exit_code": code, "reason": format!("exit {code}")}))
            .await;
    }
    assert_eq!(post(&agent, &next, json!({"boot_id": "b1"})).await, json!({"action": "wait", "state": "complete"}));
    let m = ok(&admin, reqwest::Method::GET, &format!("/api/v1/machines/{id}"), None).await;
    assert_eq!((m["workflow_state"].as_str(), m["params"]["disk-count"].as_i64()), (Some("complete"), Some(3)));

    // Another machine's jobs and next are out of this token's reach.
    let other = admin.get("/api/v1/machines?name=other").await.body["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(agent.post(&format!("/api/v1/machines/{other}/next"), json!({})).await.status, 403);
    post(&admin, &format!("/api/v1/machines/{other}/workflow"), json!({"workflow": "wf"})).await;
    let theirs = post(&admin, &format!("/api/v1/machines/{other}/next"), json!({})).await["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in ["start", "finish", "log"] {
        let r =
            agent.post(&format!("/api/v1/jobs/{theirs}/{path}"), json!({"exit_code": 0, "seq": 0, "text": "x"})).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    assert_eq!(agent.get(&format!("/api/v1/jobs/{theirs}/files")).await.status, 404);

    // Long poll: a waiting agent is answered as soon as an operator gives
    // its machine work, not at the end of its wait.
    let started = Instant::now();
    let waiter = {
        let agent = Api { http: server.http(), url: agent.url.clone(), token: agent.token.clone() };
        let next = next.clone();
        tokio::spawn(async move { agent.post(&next, json!({"boot_id": "b1", "wait_secs": 30})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    post(&admin, &format!("/api/v1/machines/{id}/workflow"), json!({"workflow": "wf"})).await;
    let r = waiter.await.unwrap();
    assert_eq!(r.body["action"], "run", "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

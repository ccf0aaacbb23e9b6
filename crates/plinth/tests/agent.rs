//! The real agent binary, as a plain process (a "machine" without PXE),
//! against the real server: inventory, scripts and files, a reported param,
//! a retried task, a task that reboots the machine (the agent is killed and
//! comes back with a new boot id), and a job time limit.

mod common;

use common::{Api, Server};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn post(api: &Api, path: &str, body: Value) -> Value {
    let r = api.post(path, body).await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
    r.body
}

async fn machine_token(server: &Server, mac_dash: &str) -> String {
    let url = format!("http://{}/machines/{mac_dash}/agent.env", server.addr("http"));
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.trim().strip_prefix("PLINTH_TOKEN=").unwrap_or_else(|| panic!("{text}")).to_owned()
}

fn agent(
    server: &Server,
    machine: &str,
    token: &str,
    root: &std::path::Path,
    boot: &str,
    once: bool,
) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plinth-agent"));
    c.args(["run", "--endpoint", &server.url, "--machine", machine, "--boot-id", boot, "--root"])
        .arg(root)
        .arg("--work-dir")
        .arg(root.join("work"))
        .arg("--ca-cert")
        .arg(server.ca())
        .args(["--reboot-command", "kill -TERM $PPID"])
        .arg("--state-file")
        .arg(root.join("agent.env"))
        .env("PLINTH_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if once {
        c.arg("--once");
    }
    c.spawn().unwrap()
}

fn wait(mut child: std::process::Child, limit: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the agent did not finish in {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_a_workflow_across_a_reboot() {
    let server = Server::start();
    let api = server.api().await;
    let root = tempfile::tempdir().unwrap();
    let marker = root.path().join("flaky-ran-once");
    post(&api, "/api/v1/params", json!({"name": "disk-count", "schema": {"type": "integer"}})).await;
    post(
        &api,
        "/api/v1/bootenvs",
        json!({"name": "agent-env", "templates": [
        {"name": "env", "path": "agent.env", "contents": "PLINTH_TOKEN={{ machine_token() }}"}]}),
    )
    .await;
    post(&api, "/api/v1/tasks", json!({"name": "report", "reports": ["disk-count"], "templates": [
        {"name": "hostname", "path": "/etc/plinth-hostname", "contents": "{{ machine.name }}\n"},
        {"name": "run", "contents": "echo hello from $PLINTH_MACHINE\necho to stderr >&2\necho '{\"params\": {\"disk-count\": 2}}' > \"$PLINTH_RESULT\"\n"}]}))
    .await;
    let flaky = format!(
        "if [ -e {m} ]; then echo second try; else touch {m}; echo first try fails; exit 3; fi",
        m = marker.display()
    );
    post(
        &api,
        "/api/v1/tasks",
        json!({"name": "flaky", "retries": 1, "templates": [{"name": "run", "contents": flaky}]}),
    )
    .await;
    post(
        &api,
        "/api/v1/tasks",
        json!({"name": "reboot", "templates": [{"name": "run", "contents": "echo rebooting; exit 64"}]}),
    )
    .await;
    post(
        &api,
        "/api/v1/tasks",
        json!({"name": "final", "templates": [{"name": "run", "contents": "echo after the reboot"}]}),
    )
    .await;
    post(&api, "/api/v1/tasks", json!({"name": "slow", "timeout_secs": 1, "templates": [{"name": "run", "contents": "echo start; sleep 30; echo never"}]})).await;
    post(&api, "/api/v1/stages", json!({"name": "s1", "tasks": ["report", "flaky", "reboot"]})).await;
    post(&api, "/api/v1/stages", json!({"name": "s2", "tasks": ["final"]})).await;
    post(&api, "/api/v1/stages", json!({"name": "s-slow", "tasks": ["slow"]})).await;
    post(&api, "/api/v1/workflows", json!({"name": "wf", "stages": ["s1", "s2"]})).await;
    post(&api, "/api/v1/workflows", json!({"name": "slow-wf", "stages": ["s-slow"]})).await;
    let m =
        post(&api, "/api/v1/machines", json!({"name": "vm-1", "macs": ["52:54:00:0a:00:01"], "bootenv": "agent-env"}))
            .await;
    let id = m["id"].as_str().unwrap().to_owned();
    post(&api, &format!("/api/v1/machines/{id}/workflow"), json!({"workflow": "wf"})).await;
    let token = machine_token(&server, "52-54-00-0a-00-01").await;

    // First boot: runs until the reboot task; the "reboot" kills the agent.
    std::fs::write(root.path().join("agent.env"), format!("PLINTH_MACHINE={id}\nPLINTH_TOKEN={token}\n")).unwrap();
    let (code, err) = wait(agent(&server, &id, &token, root.path(), "boot-1", false), Duration::from_secs(60));
    // The boot file's short-lived token was traded for a session, kept in the state file.
    assert!(err.contains("session renewed"), "{err}");
    let env = std::fs::read_to_string(root.path().join("agent.env")).unwrap();
    let session = env.lines().find_map(|l| l.strip_prefix("PLINTH_TOKEN=")).unwrap().to_owned();
    assert!(session.starts_with("plt_") && session != token && env.contains(&format!("PLINTH_MACHINE={id}")), "{env}");
    assert_ne!(code, Some(0), "the agent was stopped by the reboot command: {err}");
    assert!(err.contains("running `kill -TERM $PPID`"), "{err}");
    assert_eq!(std::fs::read_to_string(root.path().join("etc/plinth-hostname")).unwrap(), "vm-1");
    let machine = api.get(&format!("/api/v1/machines/{id}")).await.body;
    assert_eq!(machine["workflow_state"], "rebooting");
    assert_eq!(machine["params"]["disk-count"], 2, "the task reported a param");
    assert!(machine["inventory"]["memory_bytes"].as_u64().unwrap() > 0, "{}", machine["inventory"]);
    assert!(machine["inventory"]["cpu"]["count"].as_u64().unwrap() >= 1);

    // The boot credential was traded once: a second trade is refused.
    let (code, err) = wait(agent(&server, &id, &token, root.path(), "boot-2", true), Duration::from_secs(60));
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("already traded"), "{err}");
    // Second boot, as the installed system starts it: from its state file,
    // whose session it renews. The workflow goes on and completes.
    let (code, err) = wait(agent(&server, &id, &session, root.path(), "boot-2", true), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let machine = api.get(&format!("/api/v1/machines/{id}")).await.body;
    assert_eq!(machine["workflow_state"], "complete", "{machine}");
    let jobs = api.get(&format!("/api/v1/jobs?machine={id}&limit=100")).await.body["items"].as_array().unwrap().clone();
    let summary: Vec<(String, String)> = jobs
        .iter()
        .map(|j| (j["task"].as_str().unwrap().to_owned(), j["state"].as_str().unwrap().to_owned()))
        .collect();
    for want in [
        ("report", "finished"),
        ("flaky", "failed"),
        ("flaky", "finished"),
        ("reboot", "finished"),
        ("final", "finished"),
    ] {
        assert!(summary.iter().any(|(t, s)| (t.as_str(), s.as_str()) == want), "{want:?} in {summary:?}");
    }
    let report = jobs.iter().find(|j| j["task"] == "report").unwrap()["id"].as_str().unwrap().to_owned();
    let log = server.cli(&["jobs", "log", &report], Some(&api.token));
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains(&format!("hello from {id}")) && log.contains("to stderr"), "{log}");

    // The timeline tells the whole story, in order.
    let out = server.cli(&["machines", "timeline", &id, "-o", "json"], Some(&api.token));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let timeline: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let details: Vec<String> = timeline
        .iter()
        .map(|e| format!("{} {}", e["service"].as_str().unwrap(), e["detail"].as_str().unwrap()))
        .collect();
    let order = [
        "workflow workflow `wf` assigned",
        "http GET /machines/52-54-00-0a-00-01/agent.env 200",
        "agent agent reported inventory",
        "task `report`, stage `s1`, attempt 1",
        "started: task `report`",
        "finished: task `report`, exit 0",
        "failed: task `flaky`, exit 3",
        "task `flaky`, stage `s1`, attempt 2",
        "finished: task `reboot`, exit 64",
        "agent back from a reboot (boot boot-2)",
        "finished: task `final`, exit 0",
        "workflow complete",
    ];
    let mut at = 0;
    for want in order {
        let found = details[at..]
            .iter()
            .position(|d| d.contains(want))
            .unwrap_or_else(|| panic!("`{want}` after #{at} in {details:#?}"));
        at += found + 1;
    }
    let table =
        String::from_utf8_lossy(&server.cli(&["machines", "timeline", &id], Some(&api.token)).stdout).into_owned();
    assert!(table.starts_with("AT") && table.contains("workflow complete"), "{table}");

    // A job past its time limit is killed and fails the workflow.
    post(&api, &format!("/api/v1/machines/{id}/workflow"), json!({"workflow": "slow-wf"})).await;
    let started = Instant::now();
    let env = std::fs::read_to_string(root.path().join("agent.env")).unwrap();
    let session = env.lines().find_map(|l| l.strip_prefix("PLINTH_TOKEN=")).unwrap().to_owned();
    let (code, err) = wait(agent(&server, &id, &session, root.path(), "boot-2", true), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "killed at its limit, not after sleep 30");
    let machine = api.get(&format!("/api/v1/machines/{id}")).await.body;
    assert_eq!(machine["workflow_state"], "failed");
    let failed = api.get(&format!("/api/v1/jobs/{}", machine["last_job"].as_str().unwrap())).await.body;
    assert_eq!((failed["exit_code"].as_i64(), failed["reason"].as_str()), (Some(124), Some("timed out after 1 s")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_without_pxe_joins_with_a_join_token_and_runs_its_workflow() {
    let server = Server::start();
    let api = server.api().await;
    let root = tempfile::tempdir().unwrap();
    post(&api, "/api/v1/params", json!({"name": "role", "schema": {"type": "string"}})).await;
    post(&api, "/api/v1/profiles", json!({"name": "cloud-web", "params": {"role": "web"}})).await;
    post(
        &api,
        "/api/v1/tasks",
        json!({"name": "configure", "templates": [
        {"name": "motd", "path": "/etc/motd", "contents": "{{ machine.name }} is a {{ param('role') }} server\n"},
        {"name": "run", "contents": "echo configured"}]}),
    )
    .await;
    post(&api, "/api/v1/stages", json!({"name": "configure", "tasks": ["configure"]})).await;
    post(&api, "/api/v1/workflows", json!({"name": "cloud", "stages": ["configure"]})).await;
    let join = post(
        &api,
        "/api/v1/join-tokens",
        json!({"uses": 1, "workflow": "cloud", "profiles": ["cloud-web"], "ttl_secs": 600}),
    )
    .await;
    let join_token = join["token"].as_str().unwrap().to_owned();
    // A join token registers machines and does nothing else.
    let as_join = Api { http: server.http(), url: api.url.clone(), token: join_token.clone() };
    assert_eq!(as_join.get("/api/v1/machines").await.status, 403);
    assert_eq!(as_join.post("/api/v1/join-tokens", json!({})).await.status, 403);

    let state = root.path().join("state");
    let run = |token: &str| {
        common::agent_join(Command::new(env!("CARGO_BIN_EXE_plinth-agent")), &server, root.path(), "cloud-vm-1", token)
            .spawn()
            .unwrap()
    };
    let (code, err) = wait(run(&join_token), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("joined as cloud-vm-1") && err.contains("a new machine"), "{err}");
    let machines = api.get("/api/v1/machines?name=cloud-vm-1").await.body["items"].as_array().unwrap().clone();
    assert_eq!(machines.len(), 1);
    let m = &machines[0];
    assert_eq!(
        (m["workflow_state"].as_str(), m["profiles"][0].as_str(), m["bootenv"].as_str()),
        (Some("complete"), Some("cloud-web"), Some("local"))
    );
    assert_eq!(std::fs::read_to_string(root.path().join("etc/motd")).unwrap(), "cloud-vm-1 is a web server");
    use std::os::unix::fs::PermissionsExt;
    let env = state.join("agent.env");
    assert_eq!(std::fs::metadata(&env).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&env).unwrap().contains("PLINTH_TOKEN=plt_"));

    // The token was single-use.
    let (code, err) = wait(run(&join_token), Duration::from_secs(30));
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    // Joining again with a new token finds the same machine by its MACs/UUID.
    let again = post(&api, "/api/v1/join-tokens", json!({})).await["token"].as_str().unwrap().to_owned();
    let (code, err) = wait(run(&again), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("an existing machine"), "{err}");
    assert_eq!(api.get("/api/v1/machines?name=cloud-vm-1").await.body["items"].as_array().unwrap().len(), 1);
}

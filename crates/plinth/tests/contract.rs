//! The API contract, checked from outside: the OpenAPI document validates
//! (openapi-spec-validator), and schemathesis (pinned, in `target/st`, which
//! `.ci/run` installs from PyPI) runs every check against a fresh server,
//! positive and negative generation, the stateful phase, with a fixed seed,
//! as a throw-away admin so the run cannot lock itself out. Also the error
//! format of the framework's own rejections, `Allow` and `OPTIONS`, and the
//! job reference rules.

mod common;

use common::Server;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

fn st_bin(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/st/bin").join(name);
    p.exists().then_some(p)
}

/// Failure codes the run may still report: schema-valid requests the server
/// refuses (ST202) and schema-violating ones it takes (ST201), for the rules
/// JSON Schema cannot state, which docs/testing.md lists (a merge patch's
/// merged object, a subnet's range inside its CIDR, a bootenv's variants
/// unique by architecture and firmware, a pack object's key equal to its
/// body's). Any other kind fails the test: server errors, undocumented
/// statuses or content types, responses that break their schema, 405
/// without `Allow`, authentication ignored, use after delete.
const TOLERATED: &[&str] = &["ST201", "ST202"];

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_contract_failure_of_the_checked_kinds() {
    let (Some(st), Some(py)) = (st_bin("st"), st_bin("python")) else {
        eprintln!("schemathesis is not installed in target/st (.ci/run installs it); skipping");
        assert!(std::env::var_os("CI").is_none(), "CI must run the contract test");
        return;
    };
    let server = Server::start();
    let api = server.api().await;
    // A throw-away admin: the run may change or delete anything it creates.
    let r = api
        .post("/api/v1/users", json!({"name": "st-admin", "roles": ["admin"], "password": "st-admin-password"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = server.token_of("st-admin", "st-admin-password").await;
    let doc = api.get("/api/v1/openapi.json").await.body;
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    let v = Command::new(&py).args(["-m", "openapi_spec_validator"]).arg(&doc_path).output().unwrap();
    assert!(
        v.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let examples = std::env::var("PLINTH_ST_EXAMPLES").unwrap_or_else(|_| "100".into());
    // Run in the scratch folder: schemathesis keeps a cache of earlier
    // failures where it runs, which would replay them into the next run.
    let out = Command::new(&st)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(&doc_path)
        .args(["--url", &server.url, "--tls-verify"])
        .arg(server.ca())
        .args(["-H", &format!("Authorization: Bearer {token}")])
        // Every check runs (schemathesis' default, kept so that
        // schemathesis.toml can turn one off for one operation).
        .args(["--mode", "all", "--seed", "1", "--workers", "2"])
        .args(["--max-examples", &examples])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The whole report beside the build, the summary in the test output.
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-report.txt");
    std::fs::write(&report, text.as_bytes()).unwrap();
    std::fs::copy(&doc_path, report.with_file_name("openapi.json")).unwrap();
    println!("schemathesis report: {}", report.display());
    let summary = text.find("SUMMARY").map(|i| &text[i..]).unwrap_or(&text);
    println!("{summary}");
    let codes: Vec<&str> = summary
        .lines()
        .filter_map(|l| l.trim().strip_prefix("❌ "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("ST"))
        .collect();
    let unexpected: Vec<&&str> = codes.iter().filter(|c| !TOLERATED.contains(c)).collect();
    assert!(unexpected.is_empty(), "contract failures of kinds {unexpected:?}:\n{text}");
    assert!(
        summary.contains("Test cases:"),
        "schemathesis did not run to its summary:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_rejection_is_the_json_error_with_its_field() {
    let server = Server::start();
    let api = server.api().await;
    let cases = [
        (Method::GET, "/api/v1/events?x=1", "x"),
        (Method::GET, "/api/v1/audit?after=-1", "after"),
        (Method::GET, "/api/v1/boot-events?limit=ten", "limit"),
        (Method::GET, "/api/v1/machines?workflow_state=runing", "workflow_state"),
        (Method::GET, "/api/v1/machines?revision=x", "revision"),
        (Method::GET, "/api/v1/machines?name=a&name=b", "name"),
        (Method::GET, "/api/v1/audit?kind=nothing", "kind"),
        (Method::DELETE, "/api/v1/contents/plinth-default?force=maybe", "force"),
        (Method::GET, "/api/v1/contents/export?name=x", "version"),
    ];
    for (method, path, field) in cases {
        let r = api.send(method.clone(), path, None, None).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        assert_eq!(r.body["field"], field, "{method} {path}: {}", r.body);
        assert!(r.body["error"].is_string() && r.body["detail"].is_string(), "{}", r.body);
    }
    // A malformed If-Match is refused naming the header; a stale one is 412.
    let r = api.send(Method::DELETE, "/api/v1/templates/nothing", None, Some("")).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("If-Match")), "{}", r.body);
    let r = api.send(Method::DELETE, "/api/v1/templates/nothing", None, Some("\"3")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A body that is not an object, and an unknown field of a typed body.
    let r = api.send(Method::POST, "/api/v1/join-tokens", Some(json!([null, null])), None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = api.send(Method::POST, "/api/v1/join-tokens", Some(json!({"usess": 2})), None).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("usess")), "{}", r.body);
    // Every error, whoever raised it, is JSON.
    let http = server.http();
    let resp =
        http.get(format!("{}/api/v1/nothing/here/at/all", server.url)).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
}

#[tokio::test]
async fn method_not_allowed_carries_allow_and_options_answers_it() {
    let server = Server::start();
    let api = server.api().await;
    let http = server.http();
    for (method, path, allow) in [
        (Method::POST, "/api/v1/contents", "GET, HEAD, OPTIONS"),
        (Method::PUT, "/api/v1/contents/plinth-default", "GET, HEAD, DELETE, OPTIONS"),
        (Method::POST, "/api/v1/tokens", "GET, HEAD, OPTIONS"),
        (Method::DELETE, "/api/v1/machines", "GET, HEAD, POST, OPTIONS"),
        (Method::GET, "/api/v1/machines/whoami", "POST, OPTIONS"),
        (Method::TRACE, "/api/v1/info", "GET, HEAD, OPTIONS"),
    ] {
        let resp =
            http.request(method.clone(), format!("{}{path}", server.url)).bearer_auth(&api.token).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "method_not_allowed");
        let opt = http.request(Method::OPTIONS, format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(opt.status(), 204, "OPTIONS {path}");
        assert_eq!(opt.headers()["allow"], allow, "OPTIONS {path}");
    }
    // HEAD wherever GET is.
    let head = http.head(format!("{}/api/v1/machines", server.url)).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let unknown =
        http.request(Method::OPTIONS, format!("{}/api/v1/no/such/route/here", server.url)).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn a_job_names_an_existing_machine_and_task_and_only_an_admin_makes_one() {
    let server = Server::start();
    let api = server.api().await;
    api.post_ok("/api/v1/tasks", json!({"name": "noop", "templates": [{"name": "run", "contents": "true"}]})).await;
    let m = api.post_ok("/api/v1/machines", json!({"name": "j-1", "macs": ["52:54:00:aa:10:01"]})).await;
    let id = m["id"].as_str().unwrap();
    let ghost = "6f1c8a52-1111-4222-8333-944455556666";
    let r = api.post("/api/v1/jobs", json!({"machine": ghost, "task": "noop"})).await;
    assert_eq!(
        (r.status, r.body["field"].as_str(), r.body["error"].as_str()),
        (409, Some("machine"), Some("reference")),
        "{}",
        r.body
    );
    let r = api.post("/api/v1/jobs", json!({"machine": id, "task": "no-such-task"})).await;
    assert_eq!((r.status, r.body["field"].as_str()), (409, Some("task")), "{}", r.body);
    assert_eq!(api.post("/api/v1/jobs", json!({"machine": id, "task": "noop"})).await.status, 201);
    // An operator runs tasks through workflows; a job by hand is an admin's.
    api.post_ok("/api/v1/users", json!({"name": "op", "password": "op-password", "roles": ["operator"]})).await;
    let op = server.api_as("op", "op-password").await;
    let r = op.post("/api/v1/jobs", json!({"machine": id, "task": "noop"})).await;
    assert_eq!(r.status, 403, "{}", r.body);
}

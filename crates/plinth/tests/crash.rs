//! Acknowledged writes survive `kill -9`: writers run flat out, the server is
//! killed mid-stream, and after a restart every write that got a 201 is there
//! and the store opens cleanly.

mod common;

use common::Server;
use serde_json::json;
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut server = Server::start_in(tmp.path());
        let api = Arc::new(server.api().await);
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut writers = Vec::new();
        for w in 0..8 {
            let api = api.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..10_000 {
                    let name = format!("r{round}-w{w}-{i}");
                    let r = api
                        .http
                        .post(format!("{}/api/v1/templates", api.url))
                        .bearer_auth(&api.token)
                        .json(&json!({"name": name, "contents": "x".repeat(200)}))
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status() == 201 => acked.lock().unwrap().push(name),
                        _ => break, // the server died under us
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        server.kill9();
        for w in writers {
            let _ = w.await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() > 20, "round {round}: the writers got going ({} acked)", acked.len());

        let server = Server::start_in(tmp.path());
        let api = server.api().await;
        let mut stored = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/api/v1/templates?limit=10000&after={a}"),
                None => "/api/v1/templates?limit=10000".into(),
            };
            let page = api.get(&path).await;
            assert_eq!(page.status, 200);
            for t in page.body["items"].as_array().unwrap() {
                stored.insert(t["name"].as_str().unwrap().to_owned());
            }
            after = page.body["next"].as_str().map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        drop(server);
    }
}

//! API benchmark (not a test): create 10,000 machines over HTTPS, then
//! measure get-one and list-all latency and create throughput against the
//! real server binary. Run with `cargo bench -p plinth --bench api`; the
//! figures go in docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MACHINES: usize = 10_000;
const WRITERS: usize = 16;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = common::Server::start();
    let api = Arc::new(server.api().await);

    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (w..MACHINES).step_by(WRITERS) {
                let body = json!({"name": format!("node-{i:05}"), "macs": [format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff)],
                    "bootenv": if i % 100 == 0 { "local" } else { "discovery" }});
                let r = api.post("/api/v1/machines", body).await;
                assert_eq!(r.status, 201);
                ids.push(r.body["id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let create_secs = start.elapsed().as_secs_f64();

    let mut gets = Vec::new();
    for i in 0..2000 {
        let id = &ids[(i * 7919) % ids.len()];
        let t = Instant::now();
        let r = api.get(&format!("/api/v1/machines/{id}")).await;
        gets.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    gets.sort();

    let mut lists = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = api.get("/api/v1/machines?limit=10000").await;
        lists.push(t.elapsed());
        assert_eq!(r.body["items"].as_array().unwrap().len(), MACHINES);
    }
    lists.sort();

    let mut filtered = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = api.get("/api/v1/machines?bootenv=local&limit=10000").await;
        filtered.push(t.elapsed());
        assert_eq!(r.body["items"].as_array().unwrap().len(), MACHINES / 100);
    }
    filtered.sort();

    println!("| measurement | result |");
    println!("| --- | --- |");
    println!(
        "| create {MACHINES} machines, {WRITERS} concurrent clients | {:.0} creates/s ({create_secs:.1} s) |",
        MACHINES as f64 / create_secs
    );
    println!(
        "| get one machine (sequential, 2000 requests) | p50 {} · p99 {} |",
        ms(percentile(&gets, 0.5)),
        ms(percentile(&gets, 0.99))
    );
    println!(
        "| list all {MACHINES} machines in one page (10 runs) | p50 {} · max {} |",
        ms(percentile(&lists, 0.5)),
        ms(percentile(&lists, 1.0))
    );
    println!(
        "| list with filter `bootenv=local` (100 of {MACHINES}) | p50 {} · max {} |",
        ms(percentile(&filtered, 0.5)),
        ms(percentile(&filtered, 1.0))
    );
}

//! Rendering benchmark (not a test): 10,000 machines with 5 profiles each
//! (profiles that include others), a lease each, rendering the shipped iPXE
//! entry script and a full Rocky 9 kickstart. Measures the two costs a boot
//! request pays: loading the machine's view from the store (params resolved
//! across layers) and rendering. Run with
//! `cargo bench -p plinth-content --bench render`; figures go in
//! docs/benchmarks.md.

use plinth_model::{Kind, Machine};
use plinth_render::{Hooks, Provisioner};
use plinth_store::{Expect, Store, WriteOp};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

const MACHINES: usize = 10_000;
const PROFILES: usize = 40;

fn op(kind: Kind, v: Value) -> WriteOp {
    let (key, body) = plinth_model::normalize(kind, v).unwrap();
    WriteOp::Put { kind, key, body, expect: Expect::Absent }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = plinth_store::SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    plinth_content::install_missing(&store).await.unwrap();
    let mut ops = vec![
        op(Kind::Profile, json!({"name": "global", "params": {"timezone": "Europe/Paris"}})),
        op(
            Kind::Subnet,
            json!({"name": "dc", "cidr": "10.0.0.0/16", "range_start": "10.0.1.0", "range_end": "10.0.200.0",
            "router": "10.0.0.1", "dns_servers": ["10.0.0.2"], "domain_name": "dc.example.net"}),
        ),
    ];
    for p in 0..PROFILES {
        let includes: Vec<String> = if p % 4 == 0 && p > 0 { vec![format!("p{:02}", p - 1)] } else { vec![] };
        ops.push(op(
            Kind::Profile,
            json!({"name": format!("p{p:02}"), "profiles": includes, "params": {
            "packages": [format!("pkg-{p}"), "vim"], "ntp-servers": [format!("ntp{p}.example.net")],
            "ssh-authorized-keys": [format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{p:04} ops@example.net")],
            "kernel-extra-args": format!("rack={p}")}}),
        ));
    }
    store.apply(ops).await.unwrap();
    let mut machines = Vec::with_capacity(MACHINES);
    for chunk in (0..MACHINES).collect::<Vec<_>>().chunks(500) {
        let mut ops = Vec::new();
        for &i in chunk {
            let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff);
            let profiles: Vec<String> = (0..5).map(|k| format!("p{:02}", (i + k * 7) % PROFILES)).collect();
            let m = json!({"name": format!("node-{i:05}"), "macs": [mac], "bootenv": "rocky-9", "profiles": profiles,
                "params": {"install-disk": "/dev/sda", "network-config": if i % 2 == 0 { "dhcp" } else { "static" }}});
            let (key, body) = plinth_model::normalize(Kind::Machine, m).unwrap();
            machines.push(plinth_model::decode::<Machine>(body.clone()).unwrap());
            ops.push(WriteOp::Put { kind: Kind::Machine, key, body, expect: Expect::Absent });
            ops.push(op(
                Kind::Lease,
                json!({"address": format!("10.0.{}.{}", 1 + i / 250, i % 250 + 1), "mac": mac,
                "subnet": "dc", "state": "bound", "expires_at": "2099-01-01T00:00:00Z", "client_arch": 7}),
            ));
        }
        store.apply(ops).await.unwrap();
    }
    let provisioner = Provisioner {
        http: "http://10.0.0.10:8091".into(),
        api: "https://10.0.0.10:8092".into(),
        hooks: Hooks { machine_token: Some(Arc::new(|| Ok("plt_bench.token".into()))), ..Hooks::default() },
        ..Provisioner::default()
    };

    // 1. Load every machine's view (what each boot request does first).
    let t = Instant::now();
    let mut views = Vec::with_capacity(MACHINES);
    let shared = plinth_render::load_shared(&store).await.unwrap();
    for m in &machines {
        views.push(plinth_render::load_with(&store, &shared, m.clone()).await.unwrap());
    }
    let load = t.elapsed().as_secs_f64();
    println!(
        "load view (params over 5 profiles + includes, lease, subnet): {:.0}/s ({load:.2} s for {MACHINES})",
        MACHINES as f64 / load
    );

    // 2. Render from loaded views, one thread.
    for (what, path) in [("iPXE entry script", "ipxe"), ("full kickstart", "kickstart.cfg")] {
        let t = Instant::now();
        let mut bytes = 0;
        for v in &views {
            bytes += v.render_path(path, &provisioner).unwrap().unwrap().len();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "render {what}: {:.0}/s on one core ({secs:.2} s, {} bytes each)",
            MACHINES as f64 / secs,
            bytes / MACHINES
        );
    }

    // 3. End to end on both cores: load + render the iPXE script, as a
    //    boot storm of 10,000 machines would.
    let store: Arc<dyn Store> = Arc::new(store);
    let cache = Arc::new(plinth_render::SharedCache::new(store.clone()));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for half in 0..2 {
        let store = store.clone();
        let mine: Vec<Machine> = machines.iter().skip(half).step_by(2).cloned().collect();
        let provisioner = provisioner.clone();
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            for m in mine {
                let shared = cache.get().await.unwrap();
                let view = plinth_render::load_with(store.as_ref(), &shared, m).await.unwrap();
                let p = provisioner.clone();
                tokio::task::spawn_blocking(move || view.render_path("ipxe", &p).unwrap().unwrap()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!("load + render iPXE, 2 workers: {:.0}/s ({secs:.2} s for {MACHINES})", MACHINES as f64 / secs);
}

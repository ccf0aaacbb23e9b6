//! Upgrade-plan benchmark (not a test): a site with N machines on a
//! kickstart bootenv from a pack, each with its own params and a profile;
//! the next version of the pack changes the kickstart's partitioning part.
//! Times `plan` (every machine rendered with the old and the new content,
//! and diffed) for 1,000 and 10,000 machines. Run with
//! `cargo bench -p plinth-content --bench plan`; figures go in
//! docs/benchmarks.md.

use plinth_content::pack::Pack;
use plinth_model::Kind;
use plinth_store::{Expect, Store, WriteOp};
use serde_json::{Value, json};
use std::time::Instant;

fn op(kind: Kind, v: Value) -> WriteOp {
    let (key, body) = plinth_model::normalize(kind, v).unwrap();
    WriteOp::Put { kind, key, body, expect: Expect::Absent }
}

fn pack(version: &str, part: &str) -> Pack {
    let bundle = json!({"format": "plinth-pack/1",
    "manifest": {"name": "site-base", "version": version},
    "objects": [
        {"kind": "params", "key": "disk-size", "body": {"name": "disk-size", "schema": {"type": "integer", "minimum": 10, "default": 20}}},
        {"kind": "params", "key": "role", "body": {"name": "role", "schema": {"type": "string"}}},
        {"kind": "templates", "key": "ks.part", "body": {"name": "ks.part", "contents": part}},
        {"kind": "templates", "key": "ks", "body": {"name": "ks", "contents":
            "# kickstart for {{ machine.name }}\nlang en_US.UTF-8\nkeyboard us\ntimezone UTC\n{% include 'ks.part' %}\n%packages\n@core\n{{ param('role') }}-tools\n%end\n%post\necho {{ machine.id }} > /etc/machine-tag\n%end\n"}},
        {"kind": "bootenvs", "key": "inst", "body": {"name": "inst", "templates": [{"name": "ks", "template": "ks", "path": "ks.cfg"}]}},
    ]});
    Pack::from_bundle(&bundle).unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let v1 = pack("1.0.0", "clearpart --all\npart /boot --size=1024\npart / --size={{ param('disk-size') }}G\n");
    let v2 = pack(
        "1.1.0",
        "clearpart --all\npart /boot --size=1024\npart / --size={{ param('disk-size') }}G --fstype=xfs\n",
    );
    for n in [1_000usize, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = plinth_store::SqliteStore::open(&dir.path().join("bench.db")).unwrap();
        plinth_content::plan::install(&store, &v1, false, None, "server").await.unwrap();
        let mut ops = vec![op(Kind::Profile, json!({"name": "rack", "params": {"disk-size": 40}}))];
        for i in 0..n {
            ops.push(op(
                Kind::Machine,
                json!({"name": format!("m-{i:05}"), "bootenv": "inst", "profiles": if i % 2 == 0 { json!(["rack"]) } else { json!([]) },
                    "params": {"role": if i % 3 == 0 { "db" } else { "web" }}}),
            ));
        }
        for chunk in ops.chunks(1000) {
            store.apply(chunk.to_vec()).await.unwrap();
        }
        let start = Instant::now();
        let plan = plinth_content::plan::plan(&store, &v2, None).await.unwrap();
        let took = start.elapsed();
        assert_eq!(plan.machines.len(), n);
        assert!(plan.errors.is_empty());
        let bytes: usize = plan.machines.iter().flat_map(|m| &m.files).map(|f| f.diff.len()).sum();
        println!(
            "plan for {n} machines: {:.2} s ({:.0} machines/s), {} diffs, {} KiB of diff",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            plan.machines.len(),
            bytes / 1024
        );
        let _ = store.get(Kind::Machine, "x").await;
    }
}

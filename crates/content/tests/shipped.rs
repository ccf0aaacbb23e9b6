//! The shipped content rendered for three quite different machines, checked
//! two ways: against snapshots (`tests/snapshots/`, refreshed with
//! `UPDATE_EXPECT=1`) and by the real syntax tools of each installer where
//! Debian has them: `debconf-set-selections -c` for preseeds, `ksvalidator`
//! (pykickstart) for kickstarts, `cloud-init schema` for user-data.

use plinth_model::{Kind, Machine};
use plinth_render::{Hooks, Provisioner};
use plinth_store::{Store, StoreExt};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const BOOTENVS: &[&str] = &["local", "discovery", "debian-12", "ubuntu-24.04", "rocky-9", "alma-9"];

async fn put(store: &dyn Store, kind: Kind, v: Value) {
    let (key, body) = plinth_model::normalize(kind, v).unwrap();
    store.create(kind, &key, body).await.unwrap();
}

/// Three machines: a BIOS web server with no settings of its own, a UEFI
/// database server whose profiles choose other parts (static network, plain
/// partitions, NVMe disk, no agent), and an ARM64 machine.
async fn site(store: &dyn Store) -> Vec<Machine> {
    plinth_content::install_missing(store).await.unwrap();
    put(store, Kind::Profile, json!({"name": "global"})).await;
    put(
        store,
        Kind::Subnet,
        json!({"name": "rack1", "cidr": "10.20.0.0/24", "range_start": "10.20.0.100",
        "range_end": "10.20.0.200", "router": "10.20.0.1", "dns_servers": ["10.20.0.2", "10.20.0.3"],
        "domain_name": "rack1.example.net", "ntp_servers": ["10.20.0.4"]}),
    )
    .await;
    put(store, Kind::Profile, json!({"name": "site", "params": {
        "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsExampleKeyOnlyForTests ops@example.net"],
        "admin-password-hash": "$6$rounds=4096$saltsalt$J5bGJ5YEf4oPfq7WnN3cUdKdRTAjf5mvXQWYc6j7ERYQmgU1R6ZzQ5gFnLrG/0JXDvQZ4n3zoRGGsCy6vN2Q0.",
        "packages": ["vim", "htop"], "timezone": "Europe/Paris", "kernel-console": "console=ttyS0,115200n8"}}))
    .await;
    put(store, Kind::Profile, json!({"name": "db", "profiles": ["site"], "params": {"install-disk": "/dev/nvme0n1",
        "network-config": "static", "preseed-partitioning": "preseed.part-plain", "kickstart-partitioning": "kickstart.part-plain",
        "autoinstall-storage": "autoinstall.storage-plain", "post-install-agent": "post.none",
        "ntp-servers": ["ntp1.example.net", "ntp2.example.net"], "post-install-hook": "echo db > /etc/role"}}))
    .await;
    let machines = [
        json!({"id": "0b5e1c1e-0000-4000-8000-000000000001", "name": "web-1", "macs": ["52:54:00:00:00:01"]}),
        json!({"id": "0b5e1c1e-0000-4000-8000-000000000002", "name": "db-1", "macs": ["52:54:00:00:00:02", "52:54:00:00:01:02"],
            "profiles": ["db"], "params": {"http-proxy": "http://proxy.example.net:3128",
                "debian-mirror-key-url": "http://mirror.example.net/debian/site-key.gpg"}}),
        json!({"id": "0b5e1c1e-0000-4000-8000-000000000003", "name": "arm-1", "macs": ["52:54:00:00:00:03"], "arch": "arm64",
            "profiles": ["site"], "params": {"locale": "de_DE.UTF-8", "keyboard": "de"}}),
    ];
    let mut out = Vec::new();
    for (i, m) in machines.into_iter().enumerate() {
        put(store, Kind::Machine, m.clone()).await;
        // Leases as Plinth's DHCP writes them: the client's option 93 arch.
        let arch = [0, 7, 11][i];
        put(
            store,
            Kind::Lease,
            json!({"address": format!("10.20.0.{}", 101 + i), "mac": m["macs"][0], "subnet": "rack1",
            "state": "bound", "expires_at": "2099-01-01T00:00:00Z", "client_arch": arch}),
        )
        .await;
        out.push(plinth_model::normalize(Kind::Machine, m).map(|(_, b)| plinth_model::decode(b).unwrap()).unwrap());
    }
    out
}

fn provisioner() -> Provisioner {
    Provisioner {
        http: "http://10.20.0.10:8091".into(),
        api: "https://10.20.0.10:8092".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nTEST-CA\n-----END CERTIFICATE-----\n".into(),
        agent_sha256: [("amd64", "a".repeat(64)), ("arm64", "b".repeat(64))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        hooks: Hooks { machine_token: Some(Arc::new(|| Ok("plt_TEST.MACHINE-TOKEN".into()))), ..Hooks::default() },
        ..Provisioner::default()
    }
}

/// Every file of every shipped bootenv for `machine`: `(bootenv, file name, text)`.
async fn render_all(store: &dyn Store, machine: &Machine) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for name in BOOTENVS {
        let mut m = machine.clone();
        m.bootenv = name.parse().unwrap();
        let view = plinth_render::load(store, m).await.unwrap();
        for (file, path) in view.files(&provisioner()).unwrap() {
            let text = view
                .render_path(path.as_deref().unwrap_or(&file), &provisioner())
                .unwrap()
                .unwrap_or_else(|e| panic!("{} {name} {file}: {e}", machine.name));
            out.push((name.to_string(), path.unwrap_or(file), text));
        }
        if *name == "ubuntu-24.04" {
            let text = view.render(plinth_render::Source::Named("cloud-init-user-data"), &provisioner()).unwrap();
            out.push(("(template)".into(), "cloud-init-user-data".into(), text));
        }
    }
    out
}

#[tokio::test]
async fn shipped_templates_render_as_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let store = plinth_store::SqliteStore::open(&dir.path().join("db")).unwrap();
    for machine in site(&store).await {
        let mut doc = String::new();
        for (bootenv, path, text) in render_all(&store, &machine).await {
            doc.push_str(&format!("===== {bootenv}: {path}\n{text}\n"));
        }
        let file = format!("snapshots/{}.txt", machine.name);
        expect_test::expect_file![file].assert_eq(&doc);
    }
}

fn tool(name: &str) -> bool {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{name} is missing; .ci/run installs it");
        eprintln!("SKIPPED: {name} not installed");
    }
    found
}

fn check(cmd: &mut Command, what: &str, text: &str) {
    let out = cmd.output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} rejected:\n{all}\n--- input ---\n{text}");
    // debconf-set-selections -c exits 0 on lines it cannot parse, with a warning.
    let lower = all.to_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("warning"),
        "{what} reported a problem:\n{all}\n--- input ---\n{text}"
    );
}

#[tokio::test]
async fn installer_answers_pass_the_installers_own_checkers() {
    let dir = tempfile::tempdir().unwrap();
    let store = plinth_store::SqliteStore::open(&dir.path().join("db")).unwrap();
    let (deb, ks, ci) = (tool("debconf-set-selections"), tool("ksvalidator"), tool("cloud-init"));
    let mut checked = 0;
    for machine in site(&store).await {
        for (bootenv, path, text) in render_all(&store, &machine).await {
            let file = dir.path().join(format!("{}-{bootenv}-{}", machine.name, path.replace('/', "_")));
            std::fs::write(&file, &text).unwrap();
            let what = format!("{} {bootenv} {path}", machine.name);
            let f: &Path = &file;
            match path.as_str() {
                "preseed.cfg" if deb => check(Command::new("debconf-set-selections").arg("-c").arg(f), &what, &text),
                "kickstart.cfg" if ks => check(Command::new("ksvalidator").args(["-v", "RHEL9"]).arg(f), &what, &text),
                "user-data" | "cloud-init-user-data" if ci => {
                    check(Command::new("cloud-init").args(["schema", "--config-file"]).arg(f), &what, &text)
                }
                "meta-data" => {
                    serde_yaml_ng::from_str::<Value>(&text).unwrap();
                }
                _ => continue,
            }
            checked += 1;
        }
    }
    if deb && ks && ci {
        // 3 machines × (preseed, 2 kickstarts, user-data, cloud-init, meta-data).
        assert_eq!(checked, 18);
    }
}

#[tokio::test]
async fn the_shared_content_cache_sees_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(plinth_store::SqliteStore::open(&dir.path().join("db")).unwrap());
    plinth_content::install_missing(store.as_ref()).await.unwrap();
    let cache = plinth_render::SharedCache::new(store.clone());
    let first = cache.get().await.unwrap();
    assert!(Arc::ptr_eq(&first, &cache.get().await.unwrap()), "unchanged content is not reloaded");
    // A write to a machine (not shared content) keeps the snapshot.
    put(store.as_ref(), Kind::Machine, json!({"name": "m", "macs": ["52:54:00:00:00:09"]})).await;
    assert!(Arc::ptr_eq(&first, &cache.get().await.unwrap()));
    let mut t = store.get(Kind::Template, "ipxe-local").await.unwrap().unwrap().body;
    t["contents"] = json!("changed");
    store.put(Kind::Template, "ipxe-local", t, plinth_store::Expect::Any).await.unwrap();
    let after = cache.get().await.unwrap();
    assert_eq!(after.templates["ipxe-local"], "changed", "the very next render sees the write");
    put(store.as_ref(), Kind::Profile, json!({"name": "new-profile"})).await;
    assert!(cache.get().await.unwrap().profiles.contains_key(&"new-profile".parse().unwrap()));
}

//! ARM64: the statically built ARM64 agent (scripts/build-agent.sh arm64),
//! run under qemu-user as a plain process, joins with a join token and runs
//! a workflow against the real server, which records the machine as ARM64
//! and renders for it; and the ARM64 discovery image is assembled from
//! Debian's ARM64 kernel package and busybox, in the folder the discovery
//! bootenv's ARM64 variant boots.

mod common;

use common::{Server, lab, ok};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn qemu_user() -> Option<&'static str> {
    let found = ["/usr/bin/qemu-aarch64", "/usr/bin/qemu-aarch64-static"].into_iter().find(|p| Path::new(p).exists());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "qemu-user is missing: .ci/run installs it");
        eprintln!("SKIPPED: no qemu-aarch64 (apt-get install qemu-user)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arm64_agent_joins_and_runs_a_workflow() {
    let Some(assets) = lab::assets(&["arm64/plinth-agent"]) else { return };
    let Some(qemu) = qemu_user() else { return };
    let agent = assets.join("arm64/plinth-agent");
    let elf = std::fs::read(&agent).unwrap();
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0xb7, "an AArch64 executable");

    let server = Server::start();
    let api = server.api().await;
    let post = |path: &'static str, body: serde_json::Value| {
        let api = &api;
        async move {
            let r = api.post(path, body).await;
            assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
            r.body
        }
    };
    post("/api/v1/params", json!({"name": "reported", "schema": {"type": "string"}})).await;
    post(
        "/api/v1/tasks",
        json!({"name": "arch-report", "templates": [
            {"name": "arch", "path": "/etc/plinth-arch", "contents": "{{ machine.arch }}\n"},
            {"name": "run", "contents": "echo '{\"params\": {\"reported\": \"by {{ machine.name }}\"}}' > $PLINTH_RESULT\n"}]}),
    )
    .await;
    post("/api/v1/stages", json!({"name": "arch-report", "tasks": ["arch-report"]})).await;
    post("/api/v1/workflows", json!({"name": "arm", "stages": ["arch-report"]})).await;
    let join = post("/api/v1/join-tokens", json!({"uses": 1, "workflow": "arm", "ttl_secs": 600})).await;

    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(qemu)
        .arg(&agent)
        .args(["join", "--endpoint", &server.url, "--name", "arm-vm-1", "--boot-id", "arm-boot", "--once"])
        .arg("--state-dir")
        .arg(root.path().join("state"))
        .arg("--root")
        .arg(root.path())
        .arg("--work-dir")
        .arg(root.path().join("work"))
        .arg("--ca-cert")
        .arg(server.ca())
        .env("PLINTH_JOIN_TOKEN", join["token"].as_str().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the ARM64 agent did not finish in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("joined as arm-vm-1"), "{err}");

    let machines = api.get("/api/v1/machines?name=arm-vm-1").await.body["items"].as_array().unwrap().clone();
    assert_eq!(machines.len(), 1);
    let m = &machines[0];
    assert_eq!(m["workflow_state"], "complete", "{m}");
    assert_eq!((m["arch"].as_str(), m["inventory"]["arch"].as_str()), (Some("arm64"), Some("aarch64")), "{m}");
    // The job's script runs with the host's shell (qemu-user emulates only
    // the agent), so what proves ARM64 is the agent's own report above.
    assert_eq!(m["params"]["reported"], "by arm-vm-1", "{m}");
    assert_eq!(std::fs::read_to_string(root.path().join("etc/plinth-arch")).unwrap().trim(), "arm64");
    // The installed-OS agent download is rendered for the machine's arch.
    let id = m["id"].as_str().unwrap();
    let r = api.post("/api/v1/render", json!({"machine": id, "template": "post.agent"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["output"].as_str().unwrap().contains("/files/agent/plinth-agent-arm64"), "{}", r.body);
}

#[test]
fn the_arm64_discovery_image_is_built_from_debian_arm64_packages() {
    let Some(assets) =
        lab::assets(&["arm64/plinth-agent", "arm64/busybox", "arm64/vmlinuz", "arm64/kernel/lib/modules"])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    std::fs::create_dir_all(data.join("tls")).unwrap();
    std::fs::write(data.join("tls/ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let modules = std::fs::read_dir(assets.join("arm64/kernel/lib/modules")).unwrap().next().unwrap().unwrap().path();
    let package = std::fs::read_dir(assets.join("arm64"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the ARM64 kernel package lab-assets.sh keeps");
    // The kernel straight from Debian's package (read by Plinth, no dpkg),
    // or from the package unpacked by dpkg.
    let from_package = ["--kernel-package".to_owned(), package.display().to_string()];
    let from_folder = [
        "--kernel".to_owned(),
        assets.join("arm64/vmlinuz").display().to_string(),
        "--modules".to_owned(),
        modules.display().to_string(),
    ];
    let build = |kernel: &[String], busybox: &Path, extra: &[&str]| {
        Command::new(common::bin())
            .args(["discovery", "build"])
            .args(kernel)
            .arg("--busybox")
            .arg(busybox)
            .arg("--agent")
            .arg(assets.join("arm64/plinth-agent"))
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = ok(build(&from_package, &assets.join("arm64/busybox"), &["--arch", "arm64"]));
    assert!(out.contains("for arm64 (kernel ") && out.contains("built in discovery/arm64/"), "{out}");
    assert!(out.contains("virtio_net") && out.contains("nvme"), "NIC and disk modules of the ARM64 kernel: {out}");
    let files = data.join("files");
    assert_eq!(
        std::fs::read(files.join("discovery/arm64/vmlinuz")).unwrap(),
        std::fs::read(assets.join("arm64/vmlinuz")).unwrap()
    );
    assert!(!files.join("discovery/vmlinuz").exists(), "the x86-64 image is left alone");
    assert_eq!(
        std::fs::read(files.join("agent/plinth-agent-arm64")).unwrap(),
        std::fs::read(assets.join("arm64/plinth-agent")).unwrap()
    );
    // The initramfs unpacks (with the host's busybox) to the ARM64 agent and busybox.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let cpio = Command::new("/bin/busybox")
        .args(["cpio", "-i", "-d", "-F"])
        .arg(files.join("discovery/arm64/initrd.img"))
        .current_dir(&unpacked)
        .output()
        .unwrap();
    assert!(cpio.status.success(), "{}", String::from_utf8_lossy(&cpio.stderr));
    for f in ["bin/plinth-agent", "bin/busybox"] {
        let elf = std::fs::read(unpacked.join(f)).unwrap();
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0xb7, "{f} is AArch64");
    }
    let order = std::fs::read_to_string(unpacked.join("modules/order")).unwrap();
    let pos = |m: &str| order.lines().position(|l| l == m);
    assert!(pos("virtio_net").is_some() && pos("net_failover") < pos("virtio_net"), "dependencies first: {order}");

    // An x86-64 busybox with the ARM64 agent, or --arch amd64, is refused.
    let initrd = std::fs::read(files.join("discovery/arm64/initrd.img")).unwrap();
    let again = ok(build(&from_folder, &assets.join("arm64/busybox"), &[]));
    assert_eq!(again, out, "the same kernel and modules either way");
    assert_eq!(std::fs::read(files.join("discovery/arm64/initrd.img")).unwrap(), initrd, "byte for byte");
    let mixed = build(&from_folder, Path::new("/bin/busybox"), &[]);
    assert!(!mixed.status.success());
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("not built for arm64"), "{mixed:?}");
    let wrong = build(&from_folder, &assets.join("arm64/busybox"), &["--arch", "amd64"]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("--arch amd64"), "{wrong:?}");
}

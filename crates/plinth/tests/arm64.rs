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
    let post = |path: &'static str, body: serde_json::Value| api.post_ok(path, body);
    post("/api/v1/params", json!({"name": "reported", "schema": {"type": "string"}})).await;
    post(
        "/api/v1/tasks",
        json!({"name": "arch-report", "reports": ["reported"], "templates": [
            {"name": "arch", "path": "/etc/plinth-arch", "contents": "{{ machine.arch }}\n"},
            {"name": "run", "contents": "echo '{\"params\": {\"reported\": \"by {{ machine.name }}\"}}' > $PLINTH_RESULT\n"}]}),
    )
    .await;
    post("/api/v1/stages", json!({"name": "arch-report", "tasks": ["arch-report"]})).await;
    post("/api/v1/workflows", json!({"name": "arm", "stages": ["arch-report"]})).await;
    // The join token from the CLI, as an operator makes one for cloud-init.
    let work = tempfile::tempdir().unwrap();
    let pw = work.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let created = ok(server.cli(&["join-tokens", "create", "--workflow", "arm", "--ttl", "600", "-o", "json"], None));
    let join: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(join["uses"], 1, "{join}");
    let bad = server.cli(&["join-tokens", "create", "--workflow", "nope"], None);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("nope"), "{bad:?}");

    let root = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(qemu);
    cmd.arg(&agent);
    let mut child =
        common::agent_join(cmd, &server, root.path(), "arm-vm-1", join["token"].as_str().unwrap()).spawn().unwrap();
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

/// An unknown ARM64 machine network-boots: a VM (QEMU `virt`, Cortex-A57
/// under TCG, AAVMF UEFI firmware) PXE-boots from Plinth (DHCP client
/// architecture 11), gets GRUB for ARM64 (scripts/grub-netboot.sh; Debian
/// ships no ARM64 iPXE) over TFTP, which loads `grub/grub.cfg` (Plinth's
/// `grub-default` for unknown machines) and the ARM64 discovery image; its
/// busybox and agent run on the real ARM64 kernel, register the machine
/// with the single-use join token the config carried, and run a workflow.
#[test]
fn an_unknown_arm64_machine_pxe_boots_discovery_registers_and_runs_a_workflow() {
    let Some(assets) = lab::assets(&["arm64/plinth-agent", "arm64/busybox", "arm64/grubaa64.efi"]) else { return };
    let firmware = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd";
    let have =
        |p: &str| Path::new(p).exists() || Command::new("which").arg(p).output().is_ok_and(|o| o.status.success());
    if !common::netns::available() || !have("qemu-system-aarch64") || !have(firmware) {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-system-arm and qemu-efi-aarch64 are missing: .ci/run installs them"
        );
        eprintln!("SKIPPED: needs root, qemu-system-aarch64 (qemu-system-arm) and {firmware} (qemu-efi-aarch64)");
        return;
    }
    let package = std::fs::read_dir(assets.join("arm64"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the ARM64 kernel package lab-assets.sh keeps");
    let ns = lab::bridge("arm");
    let dir = tempfile::tempdir().unwrap();
    let server = lab::server(&ns, dir.path());
    let files = server.files();
    ok(Command::new(common::bin())
        .args(["discovery", "build", "--with-modules", "virtio_net,virtio_pci,virtio_blk", "--kernel-package"])
        .arg(&package)
        .arg("--busybox")
        .arg(assets.join("arm64/busybox"))
        .arg("--agent")
        .arg(assets.join("arm64/plinth-agent"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap());
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let create = |kind: &str, v: serde_json::Value| ok(server.cli(&[kind, "create", "--data", &v.to_string()], None));
    create("subnets", lab::subnet());
    create("params", json!({"name": "uname-m", "schema": {"type": "string"}}));
    create(
        "tasks",
        json!({"name": "arch-report", "reports": ["uname-m"], "templates": [{"name": "run", "contents":
            "echo \"{\\\"params\\\": {\\\"uname-m\\\": \\\"$(uname -m)\\\"}}\" > $PLINTH_RESULT\n(sleep 3; poweroff -f) >/dev/null 2>&1 &\n"}]}),
    );
    create("stages", json!({"name": "arch-report", "tasks": ["arch-report"]}));
    create("workflows", json!({"name": "arm", "stages": ["arch-report"]}));
    let global = json!({"params": {"discovery-workflow": "arm", "kernel-console": "console=ttyAMA0"}});
    ok(server.cli(&["profiles", "patch", "global", "--data", &global.to_string()], None));
    std::fs::copy(assets.join("arm64/grubaa64.efi"), files.join("grubaa64.efi")).unwrap();
    let loader = json!({"boot_files": {"uefi-arm64": "grubaa64.efi"}});
    ok(server.cli(&["subnets", "patch", "lab", "--data", &loader.to_string()], None));

    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 30).unwrap();
    let mac = "52:54:00:a6:40:01";
    let out = ns
        .exec(&["timeout", "500", "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-nographic"])
        .args(["-no-reboot", "-bios", firmware])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1")])
        .args(["-drive", &format!("file={},format=raw,if=none,id=d0", disk.display())])
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::write(std::env::temp_dir().join("plinth-arm64-vm.log"), console.as_bytes());
    let tail: String = console.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
    let machines: Vec<serde_json::Value> = serde_json::from_str(&ok(
        server.cli(&["machines", "list", "-o", "json", "--filter", &format!("macs={mac}")], None)
    ))
    .unwrap();
    assert_eq!(machines.len(), 1, "the VM registered; console tail:\n{tail}");
    let m = &machines[0];
    let inv = &m["inventory"];
    assert_eq!((m["arch"].as_str(), inv["arch"].as_str()), (Some("arm64"), Some("aarch64")), "{m}");
    assert_eq!(inv["boot_mode"], "uefi");
    let mem = inv["memory_bytes"].as_u64().unwrap();
    assert!(mem > 400 << 20 && mem <= 512 << 20, "memory {mem}");
    let vda = inv["disks"].as_array().unwrap().iter().find(|d| d["name"] == "vda").expect("the virtio disk");
    assert_eq!(vda["size_bytes"], 1u64 << 30);
    assert!(inv["nics"].as_array().unwrap().iter().any(|n| n["mac"] == mac && n["driver"] == "virtio_net"), "{inv}");
    assert_eq!(m["params"]["uname-m"], "aarch64", "the job ran on the ARM64 machine");
    assert_eq!(m["workflow_state"], "complete", "console tail:\n{tail}");
    let timeline: Vec<serde_json::Value> =
        serde_json::from_str(&ok(server.cli(&["machines", "timeline", m["id"].as_str().unwrap(), "-o", "json"], None)))
            .unwrap();
    let lines: Vec<String> = timeline
        .iter()
        .map(|e| format!("{} {}", e["service"].as_str().unwrap_or_default(), e["detail"].as_str().unwrap_or_default()))
        .collect();
    let mut at = 0;
    for want in [
        "Offer) 10.77.0.100 subnet lab file grubaa64.efi",
        "sent grubaa64.efi",
        "refused /grub/grub.cfg-01-52-54-00-a6-40-01",
        "sent /grub/grub.cfg",
        "sent /discovery/arm64/vmlinuz",
        "sent /discovery/arm64/initrd.img",
        "agent registered: a new machine",
        "workflow `arm` assigned",
        "finished: task `arch-report`",
        "workflow complete",
    ] {
        let found = lines[at..].iter().position(|l| l.contains(want));
        at += found.unwrap_or_else(|| panic!("`{want}` after #{at} in {lines:#?}")) + 1;
    }
}

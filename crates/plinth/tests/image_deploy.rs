//! A real OS from an image, on metal and on a cloud, in VMs under UEFI
//! firmware: the Debian 12 image `scripts/os-image.sh` builds from Debian's
//! packages (systemd, cloud-init, openssh-server).
//!
//! - Metal: an unknown machine PXE-boots discovery, registers, and runs the
//!   image-deploy workflow: the agent streams the zstd image to the disk
//!   (SHA-256 verified) and leaves the NoCloud seed; the VM reboots from
//!   its disk, systemd boots, cloud-init reads its metadata from Plinth
//!   with the machine's token (host name from a param, an SSH key from a
//!   profile, a file from user-data) and starts the agent, whose last task
//!   checks all three on the running system and reports them.
//! - Cloud: a second VM boots a copy of the same image (no PXE) with the
//!   seed URL in its SMBIOS serial, as a cloud gives it, and ends the same.

mod common;

use common::lab;
use common::{Server, ok};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Instant;

const NEEDED: &[&str] = &["vmlinuz", "plinth-agent", "kernel/lib/modules", "os/debian-12.raw.zst"];
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlinthTestKeyNotARealOne0000000000000000000 site@plinth";

/// A lab with Plinth serving the image, the checks and the params.
struct Lab {
    ns: common::netns::Netns,
    dir: tempfile::TempDir,
    server: Server,
}

fn lab(role: &str, assets: &std::path::Path, workflow_stages: &[&str]) -> Lab {
    let ns = lab::bridge(role);
    let dir = tempfile::tempdir().unwrap();
    let server = lab::server(&ns, dir.path());
    let files = server.files();
    ok(Command::new(common::bin()).args(["bootloaders", "install", "--file-root"]).arg(&files).output().unwrap());
    lab::discovery_build(assets, dir.path(), "virtio_pci,virtio_net,virtio_blk,ext4,crc32c_generic,efivarfs", &[]);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let started = Instant::now();
    let said = ok(server.cli(
        &[
            "images",
            "import",
            "debian-12",
            assets.join("os/debian-12.raw.zst").to_str().unwrap(),
            "--file-root",
            files.to_str().unwrap(),
        ],
        None,
    ));
    eprintln!("{said} (imported in {:.1} s)", started.elapsed().as_secs_f64());
    let create = |kind: &str, v: Value| ok(server.cli(&[kind, "create", "--data", &v.to_string()], None));
    create("subnets", lab::subnet());
    for p in ["os-hostname", "os-key", "os-file", "os-init"] {
        create("params", json!({"name": p, "schema": {"type": "string"}}));
    }
    // The last task runs on the installed system: what cloud-init did.
    create(
        "tasks",
        json!({"name": "check-os", "reports": ["os-hostname", "os-key", "os-file", "os-init"], "templates": [{"name": "run", "contents": r#"#!/bin/sh
set -u
key=$(cat /home/plinth/.ssh/authorized_keys 2>/dev/null | head -n 1)
file=$(cat /etc/plinth-test 2>/dev/null)
init=$(cat /proc/1/comm)
printf '{"params": {"os-hostname": "%s", "os-key": "%s", "os-file": "%s", "os-init": "%s"}}\n' "$(hostname)" "$key" "$file" "$init" > "$PLINTH_RESULT"
cat "$PLINTH_RESULT"
(sleep 3; systemctl poweroff) >/dev/null 2>&1 &
"#}]}),
    );
    create("stages", json!({"name": "check", "bootenv": "local", "tasks": ["check-os"]}));
    create("workflows", json!({"name": "deploy-check", "stages": workflow_stages}));
    let global = json!({"params": {"discovery-workflow": "deploy-check", "kernel-console": "console=ttyS0",
        "image": "debian-12", "hostname": "deployed-by-plinth", "ssh-authorized-keys": [KEY],
        "cloud-init-write-files": [{"path": "/etc/plinth-test", "content": "written by user-data\n"}]}});
    ok(server.cli(&["profiles", "patch", "global", "--data", &global.to_string()], None));
    Lab { ns, dir, server }
}

/// Runs the VM to its end; its console's tail, for the failure message,
/// and when it was powered on.
fn run(mut qemu: Command, name: &str) -> (String, chrono::DateTime<chrono::Utc>) {
    let started = chrono::Utc::now();
    let out = qemu.stdin(Stdio::null()).output().unwrap();
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::write(std::env::temp_dir().join(format!("plinth-{name}.log")), console.as_bytes());
    let tail: String = console.chars().rev().take(5000).collect::<Vec<_>>().into_iter().rev().collect();
    (tail, started)
}

/// Seconds from `on` to the end of the machine's job of `task`.
fn secs_to_end_of(jobs: &Value, task: &str, on: chrono::DateTime<chrono::Utc>) -> f64 {
    let job = jobs.as_array().unwrap().iter().find(|j| j["task"] == task).unwrap_or_else(|| panic!("no {task} job"));
    let ended: chrono::DateTime<chrono::Utc> = job["ended_at"].as_str().unwrap().parse().unwrap();
    (ended - on).num_milliseconds() as f64 / 1000.0
}

fn vm(ns: &common::netns::Netns, mac: &str, disk: &std::path::Path, timeout: u64) -> Command {
    let vm = plinth::lab::Vm {
        mac: mac.to_owned(),
        uefi: true,
        memory_mib: 768,
        disk: Some(disk.to_path_buf()),
        reboot: true,
        disk_first: true,
    };
    let mut cmd = plinth::lab::qemu(&ns.lab(), &vm, "tap0", Some(timeout));
    // q35: the `pc` machine's floppy controller makes cloud-init probe a floppy.
    cmd.args(["-machine", "q35", "-smp", "2"]);
    cmd
}

/// The machine's checks, as its last task reported them.
fn assert_configured(m: &Value, tail: &str) {
    assert_eq!(m["workflow_state"], "complete", "{m}\nconsole tail:\n{tail}");
    let p = &m["params"];
    assert_eq!(p["os-hostname"], "deployed-by-plinth", "the host name from param `hostname`: {p}");
    assert_eq!(p["os-key"], KEY, "the SSH key from the profile: {p}");
    assert_eq!(p["os-file"], "written by user-data", "the file from user-data: {p}");
    assert_eq!(p["os-init"], "systemd", "{p}");
}

fn timeline(server: &Server, id: &str) -> Vec<String> {
    let t = common::cli_json(server, &["machines", "timeline", id]);
    t.as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["service"].as_str().unwrap(), e["detail"].as_str().unwrap()))
        .collect()
}

fn in_order(lines: &[String], order: &[&str]) {
    let mut at = 0;
    for want in order {
        match lines[at..].iter().position(|l| l.contains(want)) {
            Some(i) => at += i + 1,
            None => panic!("timeline lacks `{want}` after line {at}:\n{}", lines.join("\n")),
        }
    }
}

#[test]
fn an_unknown_machine_is_deployed_from_an_image_and_configured_by_cloud_init() {
    let Some(assets) = lab::assets(NEEDED) else { return };
    if !lab::can_boot(true) {
        return;
    }
    let stages = ["image-deploy", "image-boot", "check"];
    let Lab { ns, dir, server } = lab("img", &assets, &stages);
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(3 << 30).unwrap();
    let mac = "52:54:00:1d:00:01";
    let (tail, on) = run(vm(&ns, mac, &disk, 1500), "image-deploy");
    let found = common::cli_json(&server, &["machines", "list", "--filter", &format!("macs={mac}")]);
    let m = found.as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("no machine\n{tail}"));
    assert_configured(&m, &tail);
    let id = m["id"].as_str().unwrap();
    let lines = timeline(&server, id);
    in_order(
        &lines,
        &[
            "workflow `deploy-check` assigned",
            "task `image-deploy`",
            "image to vda",
            "stage `image-boot`, bootenv `local`: reboot",
            "metadata served meta-data",
            "metadata served user-data",
            "metadata served vendor-data",
            "task `cloud-init-done`",
            "task `check-os`",
            "workflow complete",
        ],
    );
    // The deploy's log: the checksum held, the seed is on the disk.
    let jobs = common::cli_json(&server, &["jobs", "list", "--filter", &format!("machine={id}")]);
    let deploy = jobs.as_array().unwrap().iter().find(|j| j["task"] == "image-deploy").unwrap();
    let log = ok(server.cli(&["jobs", "log", deploy["id"].as_str().unwrap()], None));
    assert!(log.contains("SHA-256 verified") && log.contains("left the NoCloud seed"), "{log}");
    assert!(log.contains("UEFI boot entry"), "{log}");
    assert!(!log.contains("/t/plt_"), "the seed's token is not in the log: {log}");
    let rate = log.lines().find(|l| l.starts_with("wrote ")).unwrap_or_default().to_owned();
    // Power-on to cloud-init done: the VM's start to the end of cloud-init-done.
    eprintln!(
        "image path: {rate}; power-on to the image written {:.0} s, to cloud-init done {:.0} s",
        secs_to_end_of(&jobs, "image-deploy", on),
        secs_to_end_of(&jobs, "cloud-init-done", on)
    );
    eprintln!("{}", log.lines().filter(|l| !l.starts_with("plinth-progress")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn a_cloud_vm_boots_the_same_image_with_its_seed_url_and_ends_the_same() {
    let Some(assets) = lab::assets(NEEDED) else { return };
    if !lab::can_boot(true) || !common::have("zstd") {
        return;
    }
    let Lab { ns, dir, server } = lab("cloud", &assets, &["image-boot", "check"]);
    // The machine exists before it boots, as a cloud's instance does.
    let mac = "52:54:00:1d:00:02";
    let created = common::cli_json(
        &server,
        &["machines", "create", "--data", &json!({"name": "cloud-1", "macs": [mac], "bootenv": "local"}).to_string()],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    ok(server.cli(&["machines", "workflow", &id, "deploy-check"], None));
    let seed = common::cli_json(&server, &["machines", "metadata-token", &id]);
    // The image, copied to the VM's disk as a cloud copies it.
    let disk = dir.path().join("disk.raw");
    ok(Command::new("zstd")
        .args(["-q", "-d", "-f"])
        .arg(assets.join("os/debian-12.raw.zst"))
        .arg("-o")
        .arg(&disk)
        .output()
        .unwrap());
    let mut qemu = vm(&ns, mac, &disk, 900);
    qemu.arg("-smbios").arg(format!("type=1,serial={}", seed["kernel_arg"].as_str().unwrap()));
    let (tail, on) = run(qemu, "cloud-vm");
    let m = common::cli_json(&server, &["machines", "show", &id]);
    assert_configured(&m, &tail);
    let lines = timeline(&server, &id);
    in_order(&lines, &["metadata served meta-data", "task `cloud-init-done`", "task `check-os`", "workflow complete"]);
    assert!(!lines.iter().any(|l| l.contains("image-deploy")), "no deploy on the cloud path");
    let jobs = common::cli_json(&server, &["jobs", "list", "--filter", &format!("machine={id}")]);
    eprintln!("cloud path: power-on to cloud-init done {:.0} s", secs_to_end_of(&jobs, "cloud-init-done", on));
}

//! The product's promise on a VM: an unknown machine (QEMU/TCG; BIOS with
//! an e1000, or UEFI with virtio-net; 512 MiB, a 1 GiB virtio disk)
//! PXE-boots from Plinth, gets the
//! discovery image that `plinth discovery build` assembled, registers with
//! its inventory through the single-use join token its boot script
//! carried, runs the workflow the site set for discovered machines (a task
//! reporting a value back, a task failing once and passing on retry), and
//! ends `complete`; its timeline shows every step.

mod common;

use common::lab;
use common::ok;
use serde_json::{Value, json};
use std::process::{Command, Stdio};

/// What a run goes through after discovery.
#[derive(PartialEq, Clone, Copy)]
enum Mode {
    /// One boot: the workflow runs in discovery, the VM powers off.
    OneBoot,
    /// A stage switches the bootenv; the VM PXE-boots again.
    TwoBoots,
    /// An installer task writes an OS to the disk and leaves the agent's
    /// configuration there; a stage switches to `local`; the firmware boots
    /// the disk and the installed OS's agent finishes the workflow.
    Install,
}

#[test]
fn an_unknown_bios_machine_is_discovered_inventoried_and_runs_its_workflow() {
    discover(false, "52:54:00:d1:5c:01", Mode::OneBoot);
}

#[test]
fn an_unknown_uefi_machine_is_discovered_inventoried_and_runs_its_workflow() {
    discover(true, "52:54:00:d1:5c:02", Mode::OneBoot);
}

/// The installed-OS hand-off on a real disk boot: UEFI firmware, GRUB on
/// the EFI system partition, the kernel and the installed system's own init,
/// which downloads the agent from Plinth (as the installers' `post.agent`
/// does) and runs it with the machine token the installer left.
#[test]
fn an_installed_os_boots_from_its_disk_and_its_agent_finishes_the_workflow() {
    discover(true, "52:54:00:d1:5c:04", Mode::Install);
}

/// Installs nothing, but goes the installer's way: a stage switches the
/// bootenv, the agent reboots the VM, the machine PXE-boots that bootenv as a
/// known machine (its id and a machine token on its command line) and the
/// workflow resumes in the new boot.
#[test]
fn a_stage_switches_the_bootenv_the_vm_reboots_and_the_workflow_resumes() {
    discover(false, "52:54:00:d1:5c:03", Mode::TwoBoots);
}

fn discover(uefi: bool, mac: &str, mode: Mode) {
    let needed: &[&str] = if mode == Mode::Install {
        &["vmlinuz", "plinth-agent", "kernel/lib/modules", "os/disk.img.gz"]
    } else {
        &["vmlinuz", "plinth-agent", "kernel/lib/modules"]
    };
    let Some(assets) = lab::assets(needed) else { return };
    if !lab::can_boot(uefi) {
        return;
    }
    let ns = lab::bridge("disc");
    let dir = tempfile::tempdir().unwrap();
    let prefix = ns.prefix();
    let server = lab::server(&ns, dir.path());
    let files = server.files();
    ok(Command::new(common::bin()).args(["bootloaders", "install", "--file-root"]).arg(&files).output().unwrap());
    let built = lab::discovery_build(&assets, dir.path(), "e1000,virtio_pci,virtio_net,virtio_blk", &[]);
    assert!(built.contains("e1000") && built.contains("virtio_blk"), "{built}");
    assert!(files.join("agent/plinth-agent-amd64").is_file(), "the agent for installed systems");

    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let create = |kind: &str, v: Value| ok(server.cli(&[kind, "create", "--data", &v.to_string()], None));
    // A task declares the params it reports (here: those its script writes).
    let task = |name: &str, retries: u32, script: &str| {
        let reports: Vec<&str> = ["root-disk-bytes", "fresh-boot", "booted-from"]
            .into_iter()
            .filter(|p| script.contains(&format!("\\\"{p}\\\"")))
            .collect();
        create(
            "tasks",
            json!({"name": name, "retries": retries, "reports": reports, "templates": [{"name": "run", "contents": script}]}),
        )
    };
    create("subnets", lab::subnet());
    create("params", json!({"name": "root-disk-bytes", "schema": {"type": "integer"}}));
    create("params", json!({"name": "fresh-boot", "schema": {"type": "boolean"}}));
    task(
        "report-disk",
        0,
        "echo disks: $(ls /sys/block)\necho \"{\\\"params\\\": {\\\"root-disk-bytes\\\": $(( $(cat /sys/block/vda/size) * 512 ))}}\" > $PLINTH_RESULT\n",
    );
    task(
        "flaky",
        1,
        "if [ -e /tmp/tried ]; then echo second try passes; else touch /tmp/tried; echo first try fails; exit 7; fi\n",
    );
    task("done", 0, "echo all done; (sleep 3; poweroff -f) >/dev/null 2>&1 &\n");
    // Two boots: the first leaves a mark in its RAM; after the switch, a task
    // checks the mark is gone (a fresh boot) and reports so.
    task("mark", 0, "touch /tmp/first-boot-was-here\n");
    task(
        "check-fresh",
        0,
        "if [ -e /tmp/first-boot-was-here ]; then f=false; else f=true; fi\necho \"{\\\"params\\\": {\\\"fresh-boot\\\": $f}}\" > $PLINTH_RESULT\n(sleep 3; poweroff -f) >/dev/null 2>&1 &\n",
    );
    create("stages", json!({"name": "inventory-check", "tasks": ["report-disk"]}));
    create("stages", json!({"name": "burn-in", "tasks": ["flaky", "done"]}));
    create("stages", json!({"name": "first-boot", "tasks": ["mark"]}));
    create("stages", json!({"name": "second-boot", "bootenv": "discovery", "tasks": ["check-fresh"]}));
    create("workflows", json!({"name": "disco", "stages": ["inventory-check", "burn-in"]}));
    create("workflows", json!({"name": "two-boots", "stages": ["first-boot", "second-boot"]}));
    // The installer: the OS image onto the disk, then the agent's
    // configuration (its machine id and token, the CA, where Plinth is) in a
    // tar at 40 MiB, where the installed system's init reads it.
    std::fs::create_dir_all(files.join("os")).unwrap();
    if mode == Mode::Install {
        std::fs::copy(assets.join("os/disk.img.gz"), files.join("os/disk.img.gz")).unwrap();
    }
    task(
        "install-os",
        0,
        r#"set -e
http=$(sed -n 's/.*plinth.http=\([^ ]*\).*/\1/p' /proc/cmdline)
wget -q -O - "$http/files/os/disk.img.gz" | gunzip | dd of=/dev/vda bs=1M conv=fsync 2>/dev/null
mkdir -p /tmp/target/etc/plinth
cp /etc/plinth/ca.pem /tmp/target/etc/plinth/
{ cat /run/plinth/agent.env; echo "PLINTH_HTTP=$http"; } > /tmp/target/etc/plinth/agent.env
(cd /tmp/target && tar -c etc) | dd of=/dev/vda bs=1M seek=40 conv=fsync 2>/dev/null
sync
echo installed
"#,
    );
    create("params", json!({"name": "booted-from", "schema": {"type": "string"}}));
    task(
        "installed-check",
        0,
        "if grep -q plinth.installed=1 /proc/cmdline; then b=disk; else b=network; fi\necho \"{\\\"params\\\": {\\\"booted-from\\\": \\\"$b\\\"}}\" > $PLINTH_RESULT\n(sleep 3; poweroff -f) >/dev/null 2>&1 &\n",
    );
    // A machine that registered from discovery already has bootenv `local`
    // (so a stray reboot never re-runs discovery): the install stage asks
    // for the reboot itself.
    create("stages", json!({"name": "install", "tasks": ["install-os"], "reboot": true}));
    create("stages", json!({"name": "configure", "bootenv": "local", "tasks": ["installed-check"]}));
    create("workflows", json!({"name": "install", "stages": ["install", "configure"]}));
    let workflow = match mode {
        Mode::OneBoot => "disco",
        Mode::TwoBoots => "two-boots",
        Mode::Install => "install",
    };
    let global = json!({"params": {"discovery-workflow": workflow, "kernel-console": "console=ttyS0"}});
    ok(server.cli(&["profiles", "patch", "global", "--data", &global.to_string()], None));

    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 30).unwrap();
    // A reboot would be a failure in the one-boot runs: the VM ends instead.
    let mut qemu = lab::qemu_with(&ns, mac, uefi, Some(&disk), mode != Mode::OneBoot, mode == Mode::Install, 500);
    let out = qemu.stdin(Stdio::null()).output().unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::write(
        std::env::temp_dir().join(format!("plinth-discovery-{}.log", mac.replace(':', ""))),
        console.as_bytes(),
    );
    let tail: String = console.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();

    let filter = format!("macs={mac}");
    let machines: Vec<Value> =
        serde_json::from_str(&ok(server.cli(&["machines", "list", "-o", "json", "--filter", &filter], None))).unwrap();
    assert_eq!(machines.len(), 1, "the VM registered itself; console tail:\n{tail}");
    let m = &machines[0];
    let inv = &m["inventory"];
    let mem = inv["memory_bytes"].as_u64().unwrap();
    assert!(mem > 400 << 20 && mem <= 512 << 20, "memory {mem}");
    let vda = inv["disks"].as_array().unwrap().iter().find(|d| d["name"] == "vda").expect("the virtio disk");
    assert_eq!(vda["size_bytes"], 1u64 << 30);
    let driver = if uefi { "virtio_net" } else { "e1000" };
    assert!(inv["nics"].as_array().unwrap().iter().any(|n| n["mac"] == mac && n["driver"] == driver), "{inv}");
    assert_eq!(inv["boot_mode"], if uefi { "uefi" } else { "bios" });
    assert_eq!(m["workflow_state"], "complete", "console tail:\n{tail}");

    let id = m["id"].as_str().unwrap();
    let timeline: Vec<Value> =
        serde_json::from_str(&ok(server.cli(&["machines", "timeline", id, "-o", "json"], None))).unwrap();
    let lines: Vec<String> = timeline
        .iter()
        .map(|e| format!("{} {}", e["service"].as_str().unwrap(), e["detail"].as_str().unwrap()))
        .collect();
    let in_order = |order: &[&str]| {
        let mut at = 0;
        for want in order {
            let found = lines[at..]
                .iter()
                .position(|l| l.contains(want))
                .unwrap_or_else(|| panic!("`{want}` after #{at} in {lines:#?}"));
            at += found + 1;
        }
    };
    let ipxe = format!("http GET /ipxe/{} 200", mac.replace(':', "-"));
    if mode == Mode::Install {
        assert_eq!(m["params"]["booted-from"], "disk", "the last stage ran on the installed system");
        assert_eq!(m["bootenv"], "local");
        in_order(&[
            "agent registered: a new machine",
            "http GET /files/os/disk.img.gz 200",
            "finished: task `install-os`",
            "stage `configure`, bootenv `local`: reboot",
            "http GET /files/agent/plinth-agent-amd64 200",
            "agent back from a reboot",
            "finished: task `installed-check`",
            "workflow complete",
        ]);
        assert!(console.contains("PLINTH-OS: the installed system is up from its disk"), "{tail}");
        return;
    }
    if mode == Mode::TwoBoots {
        assert_eq!(m["params"]["fresh-boot"], true, "the second stage ran in a new boot");
        assert_eq!(m["bootenv"], "discovery");
        in_order(&[
            "agent registered: a new machine",
            "finished: task `mark`",
            "stage `second-boot`, bootenv `discovery`: reboot",
            ipxe.as_str(),
            "http GET /files/discovery/vmlinuz 200",
            "agent back from a reboot",
            "finished: task `check-fresh`",
            "workflow complete",
        ]);
        // The second boot was a known machine's: its boot file carried a
        // boot credential (printed on the console with the kernel's command
        // line), which the agent traded once for its session. A second
        // trade of it, as by someone who copied it, is refused and shows on
        // the machine's timeline.
        assert!(lines.iter().any(|l| l.contains("traded for a session")), "{lines:#?}");
        let boot_token = console
            .split("plinth.token=")
            .filter_map(|t| t.split_whitespace().next())
            .find(|t| t.starts_with("plt_"))
            .unwrap_or_else(|| panic!("no boot credential on the console: {tail}"))
            .to_owned();
        let url = format!("{}/api/v1/machines/{id}/session", server.url);
        let mut curl = Command::new(prefix[0]);
        curl.args(&prefix[1..])
            .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--cacert"])
            .arg(server.ca())
            .args(["-H", &format!("Authorization: Bearer {boot_token}"), &url]);
        assert_eq!(ok(curl.output().unwrap()), "401", "a second trade of the boot credential");
        let timeline = ok(server.cli(&["machines", "timeline", id, "-o", "json"], None));
        assert!(timeline.contains("a second trade of boot credential"), "{timeline}");
        return;
    }
    assert_eq!(m["params"]["root-disk-bytes"], 1u64 << 30, "the task reported a value back");
    let loader = if uefi { "tftp sent ipxe.efi" } else { "dhcp " };
    in_order(&[
        "dhcp ",
        loader,
        ipxe.as_str(),
        "http GET /files/discovery/vmlinuz 200",
        "http GET /files/discovery/initrd.img 200",
        "agent registered: a new machine",
        "workflow `disco` assigned",
        "agent reported inventory",
        "failed: task `flaky`, exit 7",
        "finished: task `flaky`, exit 0",
        "finished: task `done`, exit 0",
        "workflow complete",
    ]);
}

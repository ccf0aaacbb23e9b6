//! Power through BMCs, against OpenIPMI's simulator (`ipmi_sim`) driving
//! real QEMU guests, all inside network namespaces the tests create.
//!
//! `ipmi_sim` can tie a guest to its BMC two ways, and each test uses one:
//! through QEMU's external BMC device (`-device ipmi-bmc-extern` on the
//! simulator's VM serial port: power on starts the guest, off and reset go
//! to it over that device), which keeps no boot parameters; or through a
//! chassis-control program (this file's script), which starts and stops
//! the guest itself and keeps the one-time boot device. With a program
//! configured the simulator gives it chassis power too, so a boot device
//! and the external device's power cannot be had in one simulator.

mod common;

use common::lab;
use common::netns::Netns;
use common::{Server, cli_err, cli_json, have, ok, wait_until};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BMC_PASSWORD: &str = "bmc-Secret-4f9c2e";
const BMC_PORT: u16 = 6230;

fn can_run() -> bool {
    common::netns::available() && have("ipmi_sim") && have("ipmitool") && have("qemu-system-x86_64")
}

/// `ipmi_sim` inside `ns`, on its loopback at [`BMC_PORT`], with user
/// `admin` and [`BMC_PASSWORD`]; `guest` is the config's lines that tie it
/// to a guest. Stopped, with the guest, by PID on drop.
struct Bmc {
    sim: Child,
    dir: PathBuf,
}

impl Bmc {
    fn start(ns: &Netns, dir: &Path, guest: &str) -> Bmc {
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let conf = format!(
            "name \"plt\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {BMC_PORT}\n    priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n  endlan\n{guest}\n\
             \x20 user 2 true \"admin\" \"{BMC_PASSWORD}\" admin 10 none md2 md5 straight\n"
        );
        std::fs::write(dir.join("lan.conf"), conf).unwrap();
        std::fs::write(
            dir.join("x.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )
        .unwrap();
        let sim = ns
            .exec(&["timeout", "900", "ipmi_sim", "-c"])
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("x.emu"))
            .arg("-s")
            .arg(dir.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sim.log")).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Bmc { sim, dir: dir.to_owned() }
    }

    /// The guest's PID, while it runs.
    fn guest(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("qemu.pid")).ok()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        // SIGTERM to `timeout`, which passes it on to the simulator.
        let _ = Command::new("kill").args(["-TERM", &self.sim.id().to_string()]).status();
        let _ = self.sim.wait();
        if let Some(pid) = self.guest() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Watches every process's command line while a test runs: the BMC
/// password must never be on one (`ipmitool` gets it in its environment).
struct CmdlineWatch {
    stop: Arc<AtomicBool>,
    seen: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl CmdlineWatch {
    fn start() -> CmdlineWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let seen = std::thread::spawn(move || {
            let (mut ipmitools, mut leaks) = (0, Vec::new());
            let mut counted = std::collections::HashSet::new();
            while !s.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if line.contains(BMC_PASSWORD) {
                        leaks.push(line.clone());
                    }
                    if line.starts_with("ipmitool") || line.contains("/ipmitool ") {
                        counted.insert(e.file_name());
                        ipmitools = counted.len();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ipmitools, leaks)
        });
        CmdlineWatch { stop, seen }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.seen.join().unwrap()
    }
}

fn login(server: &Server, dir: &Path) {
    let pw = dir.join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
}

/// Gives machine `id` the simulator as its IPMI BMC (password from a file).
fn give_bmc(server: &Server, dir: &Path, id: &str, password: &str, port: u16) {
    let file = dir.join("bmc-pw");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    ok(server.cli(
        &[
            "machines",
            "bmc",
            id,
            "--driver",
            "ipmi",
            "--address",
            &format!("127.0.0.1:{port}"),
            "--username",
            "admin",
            "--password-file",
            file.to_str().unwrap(),
        ],
        None,
    ));
}

/// Power through QEMU's external BMC device: on starts the guest, cycle
/// and reset restart it, off stops it, and each state is read back; a
/// boot device this BMC keeps no parameters for, a wrong password and a
/// BMC that does not answer each end as a clear error on the machine and
/// in the CLI. The password is in no answer, log, event, audit entry or
/// process command line.
#[test]
fn ipmi_through_qemus_external_bmc_device_powers_a_real_guest() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("ipmi");
    let dir = tempfile::tempdir().unwrap();
    let bmc_dir = dir.path().join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    // The guest: no disk, no NIC; the firmware idles. The simulator starts
    // it on power on and talks to it over its VM serial port.
    let start = bmc_dir.join("start.sh");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\nexec timeout 600 qemu-system-x86_64 -accel tcg -m 64 -display none -nodefaults -serial null \
             -chardev socket,id=ipmi0,host=127.0.0.1,port=9002,reconnect=1 -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 \
             -device isa-ipmi-bt,bmc=bmc0 -pidfile {}\n",
            bmc_dir.join("qemu.pid").display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&start).status().unwrap();
    let guest = format!(
        "  serial 15 127.0.0.1 9002 codec VM\n  startcmd \"{}\"\n  startnow false\n  poweroff_wait 2\n  kill_wait 2",
        start.display()
    );
    let bmc = Bmc::start(&ns, &bmc_dir, &guest);
    let watch = CmdlineWatch::start();
    let server = Server::start_with(
        dir.path(),
        &ns.prefix(),
        &["--http-addr", "off", "--tftp-addr", "off", "--dhcp-port", "off", "--power-poll", "2"],
    );
    login(&server, dir.path());
    let m =
        cli_json(&server, &["machines", "create", "--data", r#"{"name": "guest-1", "macs": ["52:54:00:b0:00:01"]}"#]);
    let id = m["id"].as_str().unwrap().to_owned();
    // Every change event of the test, read as an operator would.
    let events_out = dir.path().join("events.json");
    let mut events = server
        .cli_command(&["events", "--kind", "machines", "-o", "json"], None)
        .stdout(std::fs::File::create(&events_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    give_bmc(&server, dir.path(), &id, BMC_PASSWORD, BMC_PORT);

    let shown = cli_json(&server, &["machines", "show", &id]);
    assert_eq!(shown["bmc"]["password"], "<secure>", "{shown}");
    let status = |server: &Server| cli_json(server, &["machines", "power", &id, "status"]);
    assert_eq!(status(&server)["state"], "off");
    assert!(bmc.guest().is_none());

    let on = cli_json(&server, &["machines", "power", &id, "on"]);
    assert_eq!(on["state"], "on", "{on}");
    wait_until("the guest to run", Duration::from_secs(20), || bmc.guest().is_some());
    let first = bmc.guest().unwrap();
    // Power on when on changes nothing.
    assert_eq!(cli_json(&server, &["machines", "power", &id, "on"])["state"], "on");
    assert_eq!(bmc.guest(), Some(first));

    let cycled = cli_json(&server, &["machines", "power", &id, "cycle"]);
    assert_eq!(cycled["action"], "cycle", "{cycled}");
    wait_until("a new guest after the cycle", Duration::from_secs(30), || bmc.guest().is_some_and(|p| p != first));
    wait_until("power on after the cycle", Duration::from_secs(20), || status(&server)["state"] == "on");

    let off = cli_json(&server, &["machines", "power", &id, "off"]);
    assert_eq!(off["action"], "off", "{off}");
    wait_until("the guest to stop", Duration::from_secs(30), || bmc.guest().is_none());
    assert_eq!(status(&server)["state"], "off");

    // This BMC keeps no boot parameters: said plainly.
    let err = cli_err(&server, &["machines", "boot-once", &id, "pxe"]);
    assert!(err.contains("unsupported") && err.contains("Boot Parameter"), "{err}");

    // The poller keeps the stored state current, and says when it read it.
    wait_until("a polled reading", Duration::from_secs(20), || {
        let m = cli_json(&server, &["machines", "show", &id]);
        m["power"]["state"] == "off" && m["power"]["checked_at"].is_string()
    });

    // The bulk form: every machine a filter selects, a line each, and a
    // failure for the one whose BMC does not answer.
    let m2 =
        cli_json(&server, &["machines", "create", "--data", r#"{"name": "guest-2", "macs": ["52:54:00:b0:00:02"]}"#]);
    give_bmc(&server, dir.path(), m2["id"].as_str().unwrap(), BMC_PASSWORD, BMC_PORT + 1);
    let bulk = server.cli(&["machines", "power", "status", "--filter", "bmc.driver=ipmi", "-o", "json"], None);
    assert!(!bulk.status.success());
    let rows: Value = serde_json::from_slice(&bulk.stdout).unwrap();
    let row = |name: &str| rows.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap_or_default();
    assert_eq!(
        (row("guest-1")["result"].as_str(), row("guest-1")["state"].as_str()),
        (Some("ok"), Some("off")),
        "{rows}"
    );
    assert_eq!(row("guest-2")["result"], "failed", "{rows}");
    assert!(row("guest-2")["detail"].as_str().unwrap().contains("unreachable"), "{rows}");
    assert!(String::from_utf8_lossy(&bulk.stderr).contains("1 of 2 machines failed"));

    // A wrong password, then a BMC that does not answer: clear errors, on
    // the machine too.
    give_bmc(&server, dir.path(), &id, "not-the-password", BMC_PORT);
    let err = cli_err(&server, &["machines", "power", &id, "status"]);
    assert!(err.contains("bad credentials"), "{err}");
    let m = cli_json(&server, &["machines", "show", &id]);
    assert_eq!(m["power"]["state"], "unknown");
    assert!(m["power"]["error"].as_str().unwrap().contains("bad credentials"), "{m}");
    give_bmc(&server, dir.path(), &id, BMC_PASSWORD, BMC_PORT + 1);
    let err = cli_err(&server, &["machines", "power", &id, "on"]);
    assert!(err.contains("unreachable"), "{err}");
    give_bmc(&server, dir.path(), &id, BMC_PASSWORD, BMC_PORT);

    // Audited with the real actor, on the timeline.
    let audit = ok(server.cli(&["audit", "--key", &id, "-o", "json"], None));
    assert!(audit.contains("power cycle: done") && audit.contains("user:admin"), "{audit}");
    let timeline = ok(server.cli(&["machines", "timeline", &id, "-o", "json"], None));
    assert!(timeline.contains("power on: done, now on"), "{timeline}");

    // Nowhere to be read: answers, the server's log, events, the audit log,
    // the timeline, and no process's command line.
    let _ = events.kill();
    let _ = events.wait();
    let events = std::fs::read_to_string(&events_out).unwrap();
    assert!(
        events.contains("<secure>") && events.contains("\"power\""),
        "the events carry the BMC and power: {events}"
    );
    let (ipmitools, leaks) = watch.finish();
    assert!(ipmitools >= 5, "the watch saw ipmitool run ({ipmitools} times)");
    assert!(leaks.is_empty(), "the BMC password on a command line: {leaks:?}");
    let everything = [
        ok(server.cli(&["machines", "list", "-o", "json"], None)),
        ok(server.cli(&["machines", "show", &id, "-o", "yaml"], None)),
        audit,
        timeline,
        events,
        server.log.lock().unwrap().join("\n"),
    ];
    for text in everything {
        assert!(!text.contains(BMC_PASSWORD), "the BMC password leaked: {text}");
    }
    let db = std::fs::read(dir.path().join("plinth.db")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&db).contains(BMC_PASSWORD), "the password is sealed at rest");
}

/// The chassis program a simulator calls (`get|set power|reset|boot …`):
/// it starts the guest itself, from the network only when a boot device
/// of `pxe` was set (once: then back to the disk, which here boots
/// nothing, and with no NIC ROM, so the guest never reaches Plinth
/// unasked).
fn chassis_script(dir: &Path, pxe: &[String], disk: &[String]) -> PathBuf {
    let quote = |args: &[String]| args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let script = format!(
        r#"#!/bin/sh
d={dir}
log() {{ echo "$(date +%s.%N) $*" >> $d/calls.log; }}
running() {{ [ -f $d/qemu.pid ] && kill -0 "$(cat $d/qemu.pid)" 2>/dev/null; }}
start() {{
  boot=$(cat $d/boot 2>/dev/null || echo default)
  echo default > $d/boot
  log "start from $boot"
  if [ "$boot" = pxe ]; then
    setsid {pxe} > $d/console-$(date +%s%N).log 2>&1 < /dev/null &
  else
    setsid {disk} > $d/console-$(date +%s%N).log 2>&1 < /dev/null &
  fi
  echo $! > $d/qemu.pid
}}
stop() {{
  if running; then
    kill "$(cat $d/qemu.pid)"
    for i in 1 2 3 4 5 6 7 8 9 10; do running || break; sleep 0.1; done
    kill -9 "$(cat $d/qemu.pid)" 2>/dev/null
  fi
  rm -f $d/qemu.pid
}}
case "$2 $3" in
  "get power") if running; then echo power:1; else echo power:0; fi ;;
  "set power") log "power $4"; if [ "$4" = 1 ]; then running || start; else stop; fi ;;
  "set reset") log reset; stop; start ;;
  "set shutdown") log shutdown; stop ;;
  "get boot") echo "boot:$(cat $d/boot 2>/dev/null || echo default)" ;;
  "set boot") log "boot $4"; echo "$4" > $d/boot ;;
esac
exit 0
"#,
        dir = dir.display(),
        pxe = quote(pxe),
        disk = quote(disk),
    );
    let path = dir.join("chassis.sh");
    std::fs::write(&path, script).unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

/// A lab VM behind an IPMI BMC, with nobody at it: boot once from the
/// network and power on takes it through discovery and its workflow;
/// `plinth machines rebuild` takes it back through the workflow, end to
/// end; a machine whose agent hung is recovered through the BMC; power off
/// leaves it off.
#[test]
fn boot_once_pxe_and_rebuild_take_a_vm_through_its_workflow_with_nobody_at_it() {
    let Some(assets) = lab::assets(&["vmlinuz", "plinth-agent", "kernel/lib/modules"]) else { return };
    if !can_run() || !lab::can_boot(false) {
        return;
    }
    let ns = lab::bridge("ipmivm");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &ns.prefix(),
        &[
            "--api-addr",
            "10.77.0.1:0",
            "--http-addr",
            "10.77.0.1:0",
            "--tftp-addr",
            "10.77.0.1:69",
            "--power-poll",
            "5",
            "--job-grace",
            "10",
        ],
    );
    let files = server.files();
    ok(Command::new(common::bin()).args(["bootloaders", "install", "--file-root"]).arg(&files).output().unwrap());
    lab::discovery_build(&assets, dir.path(), "e1000", &[]);
    login(&server, dir.path());
    let create = |kind: &str, v: Value| ok(server.cli(&[kind, "create", "--data", &v.to_string()], None));
    create("subnets", lab::subnet());
    create(
        "tasks",
        json!({"name": "hello", "templates": [{"name": "run", "contents": "echo hello from $(cat /proc/sys/kernel/random/boot_id)\n"}]}),
    );
    create("stages", json!({"name": "greet", "tasks": ["hello"]}));
    create("workflows", json!({"name": "greeting", "stages": ["greet"]}));
    let global = json!({"params": {"kernel-console": "console=ttyS0"}});
    ok(server.cli(&["profiles", "patch", "global", "--data", &global.to_string()], None));
    let mac = "52:54:00:b0:01:01";
    let m = cli_json(
        &server,
        &[
            "machines",
            "create",
            "--data",
            &json!({"name": "rack-vm", "macs": [mac], "bootenv": "discovery"}).to_string(),
        ],
    );
    let id = m["id"].as_str().unwrap().to_owned();
    ok(server.cli(&["machines", "workflow", &id, "greeting"], None));

    let bmc_dir = dir.path().join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let vm = |pxe: bool| {
        let c = lab::qemu(&ns, mac, false, Some(&disk), true, 600);
        let mut args: Vec<String> =
            std::iter::once(c.get_program()).chain(c.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
        // Booting "the disk" means no NIC ROM: the guest cannot PXE-boot.
        if !pxe {
            for a in args.iter_mut().filter(|a| a.starts_with("e1000,")) {
                a.push_str(",romfile=");
            }
        }
        args
    };
    let chassis = chassis_script(&bmc_dir, &vm(true), &vm(false));
    let bmc = Bmc::start(&ns, &bmc_dir, &format!("  chassis_control \"{} 0x20\"", chassis.display()));
    give_bmc(&server, dir.path(), &id, BMC_PASSWORD, BMC_PORT);
    let machine = || cli_json(&server, &["machines", "show", &id]);
    let finished_jobs = || {
        let jobs = cli_json(&server, &["jobs", "list", "--filter", &format!("machine={id}")]);
        jobs.as_array().unwrap().iter().filter(|j| j["state"] == "finished").count()
    };

    // Nobody at the machine: a network boot once, then power on.
    let set = cli_json(&server, &["machines", "boot-once", &id, "pxe"]);
    assert_eq!(set["device"], "pxe", "{set}");
    assert_eq!(cli_json(&server, &["machines", "power", &id, "on"])["state"], "on");
    wait_until("the workflow to complete", Duration::from_secs(240), || machine()["workflow_state"] == "complete");
    assert_eq!(finished_jobs(), 1);

    // Rebuild: the workflow again, from a fresh network boot.
    let rebuilt = cli_json(&server, &["machines", "rebuild", &id]);
    assert_eq!(
        (rebuilt["workflow"].as_str(), rebuilt["action"].as_str()),
        (Some("greeting"), Some("rebuild")),
        "{rebuilt}"
    );
    wait_until("the rebuilt workflow to complete", Duration::from_secs(240), || {
        machine()["workflow_state"] == "complete" && finished_jobs() == 2
    });
    let calls = std::fs::read_to_string(bmc_dir.join("calls.log")).unwrap();
    assert_eq!(calls.matches("start from pxe").count(), 2, "{calls}");

    // A hung agent: the job's script stops it (SIGSTOP, so the image's
    // init does not start another), and the job runs past its time limit
    // with no word; the server boots the machine once from the
    // network and cycles it, and the job is tried again on the new boot.
    create("params", json!({"name": "kill-agent", "schema": {"type": "boolean"}}));
    create(
        "tasks",
        json!({"name": "flaky", "timeout_secs": 5, "retries": 1, "templates": [{"name": "run",
        "contents": "{% if param('kill-agent') %}kill -STOP $(pidof plinth-agent); sleep 60{% else %}echo recovered{% endif %}\n"}]}),
    );
    create("stages", json!({"name": "flaky", "tasks": ["flaky"]}));
    create("workflows", json!({"name": "recovery", "stages": ["flaky"]}));
    ok(server.cli(&["machines", "patch", &id, "--data", r#"{"params": {"kill-agent": true}}"#], None));
    ok(server.cli(&["machines", "workflow", &id, "recovery"], None));
    let timeline = || ok(server.cli(&["machines", "timeline", &id, "-o", "json"], None));
    wait_until("the watchdog to cycle the machine", Duration::from_secs(90), || {
        timeline().contains("with no word from the agent")
    });
    ok(server.cli(&["machines", "patch", &id, "--data", r#"{"params": {"kill-agent": false}}"#], None));
    wait_until("the recovered workflow to complete", Duration::from_secs(240), || {
        machine()["workflow_state"] == "complete"
    });
    let calls = std::fs::read_to_string(bmc_dir.join("calls.log")).unwrap();
    assert_eq!(calls.matches("start from pxe").count(), 3, "{calls}");
    assert!(timeline().contains("incomplete"), "{}", timeline());

    // Off, and read back as off.
    cli_json(&server, &["machines", "power", &id, "off"]);
    wait_until("the VM to stop", Duration::from_secs(30), || bmc.guest().is_none());
    assert_eq!(cli_json(&server, &["machines", "power", &id, "status"])["state"], "off");
    let timeline = ok(server.cli(&["machines", "timeline", &id, "-o", "json"], None));
    for want in ["boot once from pxe: set", "rebuild: workflow `greeting` assigned", "power cycle (rebuild): done"] {
        assert!(
            timeline.contains(want) || ok(server.cli(&["audit", "--key", &id], None)).contains(want),
            "{want}: {timeline}"
        );
    }
}

//! Redfish against sushy-tools managing a libvirt guest (QEMU under TCG),
//! everything started by the test inside a network namespace it creates:
//! enrolment from the BMC, TLS checked against a pinned certificate,
//! power, a one-time boot device, and virtual media: the guest boots
//! Plinth's discovery ISO and registers, on a network with no DHCP at all.

mod common;

use common::lab;
use common::netns::Netns;
use common::{Server, cli_err, cli_json, have, ok, wait_until};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RF_PASSWORD: &str = "rf-Secret-77d1";
const RF_PORT: u16 = 8443;
const UUID: &str = "c0ffee00-0000-4000-8000-0000000000a1";
const MAC: &str = "52:54:00:b0:02:01";

/// sushy-emulator: `PLINTH_SUSHY_EMULATOR`, the virtualenv `.ci/run`
/// makes, or one on `PATH`.
fn sushy() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PLINTH_SUSHY_EMULATOR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sushy/bin/sushy-emulator")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| have("sushy-emulator").then(|| "sushy-emulator".into()))
}

/// A process started in the namespace behind `timeout`; SIGTERM (passed on
/// by `timeout`) by PID on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn daemon(ns: &Netns, args: &[&str], log: &Path) -> Daemon {
    let mut full = vec!["timeout", "900"];
    full.extend_from_slice(args);
    Daemon(
        ns.exec(&full)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// libvirt's daemons in the namespace, a storage pool `default` (sushy
/// puts inserted media there) and the guest, all removed on drop.
struct Libvirt {
    ns_name: String,
    _daemons: Vec<Daemon>,
}

impl Libvirt {
    fn virsh(ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "60", "virsh", "-c", "qemu:///system"])
            .args(args)
            .output()
            .unwrap()
    }

    fn start(ns: &Netns, dir: &Path) -> Libvirt {
        let virtlogd = daemon(ns, &["virtlogd"], &dir.join("virtlogd.log"));
        std::thread::sleep(Duration::from_millis(500));
        // libvirtd runs in a mount namespace of its own, with its own
        // /etc/libvirt (a copy, so the host's keeps no domain or pool of the
        // test's) whose qemu.conf turns off the per-guest /dev namespaces.
        // And where /dev/kvm exists but KVM does not work (as here),
        // libvirtd judges its cached QEMU capabilities outdated at every
        // look and probes QEMU again, some 40 s per domain change: the guest
        // runs under TCG anyway, so /dev/kvm there is an empty file.
        let no_kvm = dir.join("no-kvm");
        std::fs::write(&no_kvm, "").unwrap();
        let etc = dir.join("etc");
        let script = format!(
            "cp -a /etc/libvirt '{etc}' && echo 'namespaces = []' > '{etc}/qemu.conf' && mount --bind '{etc}' /etc/libvirt \
             && {{ [ ! -e /dev/kvm ] || mount --bind '{}' /dev/kvm; }} && exec libvirtd",
            no_kvm.display(),
            etc = etc.display()
        );
        let libvirtd = daemon(ns, &["unshare", "-m", "sh", "-c", &script], &dir.join("libvirtd.log"));
        wait_until("libvirtd's socket", Duration::from_secs(30), || Path::new("/run/libvirt/libvirt-sock").exists());
        let lv = Libvirt { ns_name: ns.name.clone(), _daemons: vec![libvirtd, virtlogd] };
        // libvirtd probes every QEMU binary on the host on first use (under
        // TCG, a minute or more on a fresh host; cached after): done here,
        // so the BMC's first answer is not held up behind it.
        let probe = Command::new("ip")
            .args(["netns", "exec", &ns.name, "timeout", "300", "virsh", "-c", "qemu:///system", "capabilities"])
            .output()
            .unwrap();
        ok(probe);
        let pool = dir.join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        ok(Self::virsh(&ns.name, &["pool-define-as", "default", "dir", "--target", pool.to_str().unwrap()]));
        ok(Self::virsh(&ns.name, &["pool-start", "default"]));
        let xml = format!(
            "<domain type='qemu'><name>plt-rf-vm</name><uuid>{UUID}</uuid><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><devices>\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <interface type='ethernet'><mac address='{MAC}'/><target dev='tap0' managed='no'/><model type='e1000'/></interface>\
             <serial type='file'><source path='{}'/><target port='0'/></serial></devices></domain>",
            dir.join("console.log").display()
        );
        std::fs::write(dir.join("vm.xml"), xml).unwrap();
        ok(Self::virsh(&ns.name, &["define", dir.join("vm.xml").to_str().unwrap()]));
        lv
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let _ = Self::virsh(&self.ns_name, &["destroy", "plt-rf-vm"]);
        let _ = Self::virsh(&self.ns_name, &["undefine", "plt-rf-vm"]);
        let _ = Self::virsh(&self.ns_name, &["pool-destroy", "default"]);
        let _ = Self::virsh(&self.ns_name, &["pool-undefine", "default"]);
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Enrolment, TLS, power, boot override and virtual media through
/// sushy-tools and libvirt, with one guest boot: it boots the discovery
/// ISO Plinth inserted and runs its workflow with no DHCP on its network.
#[test]
fn redfish_enrols_powers_and_boots_a_guest_from_virtual_media_without_dhcp() {
    let Some(assets) = lab::assets(&["vmlinuz", "plinth-agent", "kernel/lib/modules"]) else { return };
    if !common::netns::available() || !have("libvirtd") || !have("virsh") || !have("grub-mkrescue") || !have("xorriso")
    {
        return;
    }
    let Some(sushy) = sushy() else {
        assert!(std::env::var_os("CI").is_none(), "sushy-emulator is missing: .ci/run installs it");
        eprintln!("SKIPPED: sushy-emulator (pip install sushy-tools) is not installed");
        return;
    };
    if Path::new("/run/libvirt/libvirt-sock").exists() {
        assert!(std::env::var_os("CI").is_none(), "a libvirtd already runs on this host");
        eprintln!("SKIPPED: a libvirtd already runs on this host; the test starts its own");
        return;
    }
    let ns = lab::bridge("rf");
    let dir = tempfile::tempdir().unwrap();
    // libvirt runs the guest as its own user, which must reach the pool.
    Command::new("chmod").arg("755").arg(dir.path()).status().unwrap();
    let lv_dir = dir.path().join("libvirt");
    std::fs::create_dir_all(&lv_dir).unwrap();
    let _libvirt = Libvirt::start(&ns, &lv_dir);

    // sushy-emulator over TLS with a certificate of its own, behind basic
    // auth (a bcrypt htpasswd).
    let (cert, key) = (lv_dir.join("cert.pem"), lv_dir.join("key.pem"));
    ok(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=bmc", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap());
    let fp = ok(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap());
    let fingerprint = fp.trim().rsplit('=').next().unwrap().to_owned();
    let python = sushy.with_file_name("python3");
    let hash = ok(Command::new(if python.is_file() { python.as_os_str() } else { "python3".as_ref() })
        .args([
            "-c",
            &format!("import bcrypt; print(bcrypt.hashpw(b'{RF_PASSWORD}', bcrypt.gensalt(rounds=4)).decode())"),
        ])
        .output()
        .unwrap());
    std::fs::write(lv_dir.join("htpasswd"), format!("admin:{}\n", hash.trim())).unwrap();
    std::fs::write(
        lv_dir.join("sushy.conf"),
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {RF_PORT}\n\
             SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\nSUSHY_EMULATOR_AUTH_FILE = '{}'\n\
             SUSHY_EMULATOR_LIBVIRT_URI = 'qemu:///system'\n",
            cert.display(),
            key.display(),
            lv_dir.join("htpasswd").display()
        ),
    )
    .unwrap();
    let conf = lv_dir.join("sushy.conf");
    let _sushy = daemon(&ns, &[sushy.to_str().unwrap(), "--config", conf.to_str().unwrap()], &lv_dir.join("sushy.log"));

    // Plinth with no DHCP at all: the guest gets its address from the image.
    let server = Server::start_with(
        dir.path(),
        &ns.prefix(),
        &[
            "--api-addr",
            "10.77.0.1:0",
            "--http-addr",
            "10.77.0.1:0",
            "--tftp-addr",
            "off",
            "--dhcp-port",
            "off",
            "--power-poll",
            "0",
        ],
    );
    let built = lab::discovery_build(&assets, dir.path(), "e1000", &["--iso"]);
    assert!(built.contains("discovery.iso"), "{built}");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let create = |kind: &str, v: Value| ok(server.cli(&[kind, "create", "--data", &v.to_string()], None));
    create("subnets", lab::subnet());
    create(
        "tasks",
        json!({"name": "hello", "templates": [{"name": "run", "contents": "echo hello from virtual media\n"}]}),
    );
    create("stages", json!({"name": "greet", "tasks": ["hello"]}));
    create("workflows", json!({"name": "greeting", "stages": ["greet"]}));
    let global = json!({"params": {"kernel-console": "console=ttyS0"}});
    ok(server.cli(&["profiles", "patch", "global", "--data", &global.to_string()], None));
    let bmc_pw = dir.path().join("bmc-pw");
    std::fs::write(&bmc_pw, format!("{RF_PASSWORD}\n")).unwrap();
    let address = format!("https://127.0.0.1:{RF_PORT}");
    let enroll = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> =
            ["machines", "enroll", "--address", &address, "--username", "admin", "--password-file"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.push(bmc_pw.to_str().unwrap().to_owned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    wait_until("sushy-emulator", Duration::from_secs(30), || {
        let probe = ns
            .exec(&["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", &format!("{address}/redfish/v1/")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&probe.stdout).starts_with('2')
    });

    // TLS: the host's roots do not know this BMC, another pin is refused.
    let err = cli_err(&server, &refs(&enroll(&[])));
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    let wrong = "AB:".repeat(31) + "AB";
    let err = cli_err(&server, &refs(&enroll(&["--fingerprint", &wrong])));
    assert!(err.contains("TLS") && err.contains("not the pinned"), "{err}");

    // Enrolled from what the BMC says: its UUID and NIC.
    let r = cli_json(
        &server,
        &refs(&enroll(&["--fingerprint", &fingerprint, "--name", "rf-vm", "--workflow", "greeting"])),
    );
    assert_eq!(r["created"], true, "{r}");
    let id = r["machine"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r["machine"]["macs"], json!([MAC]), "{r}");
    assert_eq!(r["machine"]["inventory"]["system"]["uuid"], UUID);
    assert_eq!(r["machine"]["bmc"]["password"], "<secure>");
    let again = cli_json(&server, &refs(&enroll(&["--fingerprint", &fingerprint])));
    assert_eq!(
        (again["created"].as_bool(), again["machine"]["id"].as_str()),
        (Some(false), Some(id.as_str())),
        "{again}"
    );
    // A static address for the image: no DHCP here.
    ok(server.cli(&["machines", "patch", &id, "--data", r#"{"address": "10.77.0.50"}"#], None));

    let status = || cli_json(&server, &["machines", "power", &id, "status"]);
    assert_eq!(status()["state"], "off");
    assert_eq!(cli_json(&server, &["machines", "boot-once", &id, "pxe"])["device"], "pxe");
    let xml = ok(Libvirt::virsh(&ns.name, &["dumpxml", "plt-rf-vm"]));
    // sushy-tools boots a libvirt guest from its NIC by boot order.
    let nic = xml.split("<interface").nth(1).and_then(|n| n.split("</interface>").next()).unwrap_or("");
    assert!(nic.contains("<boot order='1'/>"), "the boot override did not reach the guest: {xml}");

    // Virtual media: inserted, booted once, powered on; the guest runs
    // its workflow.
    let media = cli_json(&server, &["machines", "boot-media", &id]);
    assert_eq!(media["state"], "on", "{media}");
    assert!(media["image"].as_str().unwrap().contains("/files/media/"), "{media}");
    let machine = || cli_json(&server, &["machines", "show", &id]);
    let console = || std::fs::read_to_string(lv_dir.join("console.log")).unwrap_or_default();
    let start = Instant::now();
    while machine()["workflow_state"] != "complete" {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the guest did not finish its workflow; console:\n{}",
            console()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let timeline = ok(server.cli(&["machines", "timeline", &id, "-o", "json"], None));
    for want in [
        "enrolled from its BMC",
        "virtual media inserted",
        "boot once from cd: set",
        "traded for a session",
        "workflow complete",
    ] {
        assert!(timeline.contains(want), "{want}: {timeline}");
    }
    assert!(!timeline.contains("\"dhcp\""), "no DHCP here: {timeline}");
    assert!(console().contains("plinth-discovery: network up"), "{}", console());

    // Off, media out, its image gone; a wrong password said plainly.
    ok(server.cli(&["machines", "power", &id, "off"], None));
    wait_until("power off", Duration::from_secs(30), || status()["state"] == "off");
    ok(server.cli(&["machines", "boot-media", &id, "--eject"], None));
    let left: Vec<_> = std::fs::read_dir(server.files().join("media")).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::write(&bmc_pw, "not-it\n").unwrap();
    let bmc = [
        "machines",
        "bmc",
        &id,
        "--driver",
        "redfish",
        "--address",
        &address,
        "--username",
        "admin",
        "--password-file",
    ];
    let mut args = bmc.to_vec();
    args.extend([bmc_pw.to_str().unwrap(), "--fingerprint", &fingerprint]);
    ok(server.cli(&args, None));
    let err = cli_err(&server, &["machines", "power", &id, "status"]);
    assert!(err.contains("bad credentials"), "{err}");
    let text =
        [timeline, server.log.lock().unwrap().join("\n"), ok(server.cli(&["audit", "--key", &id, "-o", "json"], None))];
    for t in text {
        assert!(!t.contains(RF_PASSWORD), "the BMC password leaked: {t}");
    }
}

/// The discovery ISO boots under UEFI firmware as well as BIOS: OVMF
/// starts GRUB's EFI image from the CD, which boots the discovery kernel
/// into the image's init (no network here: nothing further is asked).
#[test]
fn the_discovery_iso_boots_under_uefi_firmware() {
    let Some(assets) = lab::assets(&["vmlinuz", "plinth-agent", "kernel/lib/modules"]) else { return };
    if !lab::can_boot(true) || !have("grub-mkrescue") || !have("xorriso") || !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    ok(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=plinth-test-ca", "-keyout"])
        .arg(dir.path().join("ca-key.pem"))
        .arg("-out")
        .arg(dir.path().join("tls/ca.pem"))
        .output()
        .unwrap());
    lab::discovery_build(&assets, dir.path(), "e1000", &["--iso"]);
    let iso = dir.path().join("files/discovery/discovery.iso");
    let console = dir.path().join("console.log");
    let mut vm = Command::new("timeout")
        .args(["180", "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-display", "none", "-nodefaults"])
        .args(["-bios", "/usr/share/ovmf/OVMF.fd", "-net", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-cdrom")
        .arg(&iso)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read = || String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    let start = Instant::now();
    while !read().contains("plinth-discovery: API") && start.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = Command::new("kill").args(["-TERM", &vm.id().to_string()]).status();
    let _ = vm.wait();
    let text = read();
    assert!(text.contains("GNU GRUB") && text.contains("Linux version"), "{text}");
    assert!(text.contains("plinth-discovery: API"), "the image's init did not start under UEFI: {text}");
}

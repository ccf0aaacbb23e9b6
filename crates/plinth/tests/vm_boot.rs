//! The truest test: a QEMU VM (TCG) in a network namespace PXE-boots from
//! Plinth alone. It gets its address and loader from Plinth's DHCP, iPXE
//! chains to Plinth's boot HTTP server, a Debian kernel and a busybox initrd
//! served by Plinth boot, get a lease again, fetch a file from Plinth and
//! power off. Legacy BIOS and UEFI (OVMF). Assets come from
//! `scripts/lab-assets.sh` (run by .ci/run).

mod common;

use common::lab;
use common::netns::{self, Netns};
use common::{Server, have, ok};
use std::process::{Command, Stdio};
use std::time::Duration;

fn log_has(server: &Server, needle: &str) -> bool {
    server.log.lock().unwrap().iter().any(|l| l.contains(needle))
}

fn boot(uefi: bool, proxy: bool, mac: &str) {
    let Some(assets) = lab::assets(&["vmlinuz", "initrd.img"]) else { return };
    if !lab::can_boot(uefi) {
        return;
    }
    let ns = lab::bridge("vm");

    let dir = tempfile::tempdir().unwrap();
    let prefix = ns.prefix();
    // Port 69: PXE firmware fetches its loader from the standard TFTP port.
    let server =
        Server::start_with(dir.path(), &prefix, &["--http-addr", "10.77.0.1:0", "--tftp-addr", "10.77.0.1:69"]);
    let http = server.addr("http");
    let files = server.files();
    ok(Command::new(common::bin()).args(["bootloaders", "install", "--file-root"]).arg(&files).output().unwrap());
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(assets.join(f), files.join(f)).unwrap();
    }
    std::fs::write(files.join("hello.txt"), "plinth-says-hello").unwrap();
    std::fs::create_dir_all(files.join("ipxe")).unwrap();
    // `initrd=` names the initrd for the EFI stub (LAB-NOTES); harmless on BIOS.
    std::fs::write(
        files.join("ipxe/default.ipxe"),
        format!(
            "#!ipxe\nkernel http://{http}/files/vmlinuz initrd=initrd.img console=ttyS0 loglevel=3 panic=5 plinth={http}\ninitrd http://{http}/files/initrd.img\nboot\n"
        ),
    )
    .unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let subnet = if proxy {
        serde_json::json!({"name": "lab", "cidr": "10.77.0.0/24", "proxy": true, "interface": "br0"})
    } else {
        serde_json::json!({"name": "lab", "cidr": "10.77.0.0/24", "range_start": "10.77.0.100", "range_end": "10.77.0.199",
            "interface": "br0", "lease_secs": 600})
    };
    ok(server.cli(&["subnets", "create", "--data", &subnet.to_string()], None));
    if !proxy {
        // A known machine: its iPXE script is the shipped `ipxe-boot-linux`
        // template rendered for it through its bootenv, and the kernel
        // command line carries a value that comes from one of its profiles.
        std::fs::remove_file(files.join("ipxe/default.ipxe")).unwrap();
        let bootenv = serde_json::json!({"name": "lab-linux", "kernel": "vmlinuz", "initrds": ["initrd.img"],
            "boot_args": "console=ttyS0 loglevel=3 panic=5 plinth={{ provisioner.http | url_host }} {{ param('kernel-extra-args') }}",
            "templates": [{"name": "ipxe", "template": "ipxe-boot-linux"}]});
        ok(server.cli(&["bootenvs", "create", "--data", &bootenv.to_string()], None));
        let profile =
            serde_json::json!({"name": "rack42", "params": {"kernel-extra-args": "plinth.site=rack42-from-profile"}});
        ok(server.cli(&["profiles", "create", "--data", &profile.to_string()], None));
        let machine =
            serde_json::json!({"name": "uefi-vm", "macs": [mac], "bootenv": "lab-linux", "profiles": ["rack42"]});
        ok(server.cli(&["machines", "create", "--data", &machine.to_string()], None));
    }

    // proxyDHCP: addresses come from dnsmasq (PXE off) on another host of
    // the same segment; Plinth only adds boot information.
    let mut other_dhcp = None;
    let dhcp_ns = proxy.then(|| Netns::new("dhcp"));
    if let Some(dns) = &dhcp_ns {
        netns::veth(&ns, "vd0", dns, "vd1");
        ns.ip(&["link", "set", "vd0", "master", "br0"]);
        dns.ip(&["addr", "add", "10.77.0.2/24", "dev", "vd1"]);
        let leasefile = dir.path().join("dnsmasq.leases");
        let child = dns
            .exec(&[
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=vd1",
                "--bind-interfaces",
                "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h",
                "--dhcp-authoritative",
            ])
            .arg(format!("--dhcp-leasefile={}", leasefile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        other_dhcp = Some(child);
    }

    // BIOS: e1000 with QEMU's iPXE option ROM, as on SeaBIOS machines.
    // UEFI: virtio-net without an option ROM: OVMF's own PXE client (arch 7)
    // does the first DHCP and fetches ipxe.efi over Plinth's TFTP.
    let mut qemu = lab::qemu(&ns, mac, uefi, None, false, 300);
    let out = qemu.stdin(Stdio::null()).output().unwrap();
    if let Some(mut c) = other_dhcp {
        let _ = c.kill();
        let _ = c.wait();
    }
    let console = String::from_utf8_lossy(&out.stdout);
    let tail: String = console.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(
        console.contains("PLINTH-LAB: fetched [plinth-says-hello]"),
        "the VM did not phone home; console tail:\n{tail}"
    );

    // Plinth saw the whole chain: a bound lease for the VM's MAC, and its
    // HTTP requests for the kernel, the initrd and the file.
    let leases: Vec<serde_json::Value> = serde_json::from_str(&ok(
        server.cli(&["leases", "list", "-o", "json", "--filter", &format!("mac={mac}")], None)
    ))
    .unwrap();
    if proxy {
        assert!(leases.is_empty(), "proxyDHCP never hands out addresses: {leases:?}");
        assert!(
            console.contains("PLINTH-LAB: leased 10.77.0.5") || console.contains("PLINTH-LAB: leased 10.77.0.60"),
            "the address came from dnsmasq"
        );
        assert!(log_has(&server, "proxy=true"), "Plinth answered as proxyDHCP");
    } else {
        assert!(leases.iter().any(|l| l["state"] == "bound"), "{leases:?}");
    }
    let log = server.log.lock().unwrap().join("\n");
    for path in ["/ipxe/", "/files/vmlinuz", "/files/initrd.img", "/files/hello.txt"] {
        assert!(log.contains(&format!("path={path}")), "no HTTP request for {path} in the server log");
    }
    // Every step is in the machine's boot events, found by its MAC (HTTP and
    // TFTP clients are matched to the MAC through their lease).
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&ok(server.cli(&["boot-events", "--mac", mac, "-o", "json"], None))).unwrap();
    let services: Vec<&str> = events.iter().filter_map(|e| e["service"].as_str()).collect();
    assert!(services.contains(&"dhcp"), "{events:?}");
    if !proxy {
        assert!(
            events
                .iter()
                .any(|e| e["service"] == "http" && e["detail"].as_str().unwrap().contains("/files/vmlinuz 200")),
            "{events:?}"
        );
    }
    if uefi {
        assert!(
            events.iter().any(|e| e["service"] == "tftp" && e["detail"].as_str().unwrap().contains("sent ipxe.efi")),
            "{events:?}"
        );
    }
    if !proxy {
        // The guest's own /proc/cmdline: the profile's value, and the EFI
        // `initrd=` the shipped template adds only when iPXE runs as `efi`.
        let cmdline = console.lines().find(|l| l.contains("PLINTH-LAB: cmdline [")).unwrap_or_default();
        assert!(cmdline.contains("plinth.site=rack42-from-profile"), "{cmdline}");
        assert_eq!(cmdline.contains("initrd=initrd.img"), uefi, "{cmdline}");
    }
    for line in log.lines().filter(|l| l.contains("dhcp") && l.contains("reply=")) {
        eprintln!("{line}");
    }
    if uefi {
        assert!(log.contains("file=ipxe.efi"), "UEFI firmware was offered the UEFI loader");
        assert!(log.contains("file=ipxe.efi") && log.contains("tftp: sent"), "and fetched it over TFTP");
    }
    drop(server);
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn bios_vm_pxe_boots_from_plinth() {
    boot(false, false, "52:54:00:aa:00:01");
}

#[test]
fn uefi_vm_pxe_boots_from_plinth() {
    boot(true, false, "52:54:00:aa:00:02");
}

#[test]
fn proxy_dhcp_boots_a_vm_next_to_another_dhcp_server() {
    if !have("dnsmasq") {
        return;
    }
    boot(false, true, "52:54:00:aa:00:03");
}

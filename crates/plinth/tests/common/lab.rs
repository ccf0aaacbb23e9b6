//! What the VM tests share: the prepared assets (`scripts/lab-assets.sh`),
//! the checks that QEMU and the firmware are there, and a namespace with a
//! bridge holding the server's address and one tap for the guest.

use super::have;
use super::netns::{self, Netns};
use std::path::PathBuf;

/// The lab assets folder, when it holds every file in `needed`. In CI
/// missing assets are a failure; elsewhere the test says so and passes.
pub fn assets(needed: &[&str]) -> Option<PathBuf> {
    let dir = std::env::var_os("PLINTH_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/lab"));
    if !needed.iter().all(|n| dir.join(n).exists()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "VM assets missing in {}: .ci/run runs scripts/lab-assets.sh",
            dir.display()
        );
        eprintln!("SKIPPED: run scripts/lab-assets.sh to prepare {}", dir.display());
        return None;
    }
    Some(dir)
}

/// Whether namespaces, QEMU, iPXE and (for UEFI) OVMF are all there.
pub fn can_boot(uefi: bool) -> bool {
    netns::available()
        && have("qemu-system-x86_64")
        && have("/usr/lib/ipxe/undionly.kpxe")
        && (!uefi || have("/usr/share/ovmf/OVMF.fd"))
}

/// A namespace with bridge `br0` at 10.77.0.1/24 and `tap0` enslaved to
/// it, built by the same code as `plinth lab up`.
pub fn bridge(role: &str) -> Netns {
    let ns = Netns::new(role);
    ns.lab().add_bridge("br0", "10.77.0.1/24").unwrap();
    ns.lab().add_tap("tap0", "br0").unwrap();
    ns
}

/// Plinth in `ns` (made by [`bridge`]) on its bridge address: the API and
/// boot HTTP on free ports, TFTP on 69, DHCP on `br0` (inside the
/// namespace only).
pub fn server(ns: &Netns, dir: &std::path::Path) -> super::Server {
    super::Server::start_with(
        dir,
        &ns.prefix(),
        &["--api-addr", "10.77.0.1:0", "--http-addr", "10.77.0.1:0", "--tftp-addr", "10.77.0.1:69"],
    )
}

/// The subnet Plinth serves on [`bridge`]'s `br0`: `.100`–`.199`, the
/// server (`.1`) as router.
pub fn subnet() -> serde_json::Value {
    serde_json::json!({"name": "lab", "cidr": "10.77.0.0/24", "range_start": "10.77.0.100",
        "range_end": "10.77.0.199", "interface": "br0", "lease_secs": 600, "router": "10.77.0.1"})
}

/// The QEMU command line `plinth lab` uses, for a guest on `tap0`.
pub fn qemu(
    ns: &Netns,
    mac: &str,
    uefi: bool,
    disk: Option<&std::path::Path>,
    reboot: bool,
    timeout: u64,
) -> std::process::Command {
    qemu_with(ns, mac, uefi, disk, reboot, false, timeout)
}

/// [`qemu`], optionally booting the disk first (then the network).
pub fn qemu_with(
    ns: &Netns,
    mac: &str,
    uefi: bool,
    disk: Option<&std::path::Path>,
    reboot: bool,
    disk_first: bool,
    timeout: u64,
) -> std::process::Command {
    let vm = plinth::lab::Vm {
        mac: mac.to_owned(),
        uefi,
        memory_mib: 512,
        disk: disk.map(std::path::Path::to_path_buf),
        reboot,
        disk_first,
    };
    plinth::lab::qemu(&ns.lab(), &vm, "tap0", Some(timeout))
}

/// `plinth discovery build` from the lab assets into `data_dir`'s file
/// root, with the NIC modules `modules` (comma-separated) and `extra`
/// flags (`--iso`); what it printed.
pub fn discovery_build(assets: &std::path::Path, data_dir: &std::path::Path, modules: &str, extra: &[&str]) -> String {
    let kernel_modules = std::fs::read_dir(assets.join("kernel/lib/modules")).unwrap().next().unwrap().unwrap().path();
    super::ok(
        std::process::Command::new(super::bin())
            .args(["discovery", "build"])
            .args(extra)
            .args(["--with-modules", modules, "--kernel"])
            .arg(assets.join("vmlinuz"))
            .arg("--modules")
            .arg(&kernel_modules)
            .arg("--agent")
            .arg(assets.join("plinth-agent"))
            .arg("--data-dir")
            .arg(data_dir)
            .output()
            .unwrap(),
    )
}

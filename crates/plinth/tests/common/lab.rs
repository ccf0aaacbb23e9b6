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

/// A namespace with bridge `br0` at 10.77.0.1/24 and `tap0` enslaved to it.
pub fn bridge(role: &str) -> Netns {
    let ns = Netns::new(role);
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "br0"]);
    ns.ip(&["link", "set", "br0", "up"]);
    ns.ip(&["tuntap", "add", "tap0", "mode", "tap"]);
    ns.ip(&["link", "set", "tap0", "master", "br0"]);
    ns.ip(&["link", "set", "tap0", "up"]);
    ns
}

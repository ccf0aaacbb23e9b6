//! `plinth discovery build`: assembles the discovery image into the file
//! root (`discovery/vmlinuz`, `discovery/initrd.img`): a distribution
//! kernel, and an initramfs Plinth writes itself (newc cpio) holding
//! busybox, the agent, the server's CA certificate, the NIC and disk
//! modules the kernel needs (dependencies resolved from each module's own
//! `depends=` field, in load order) and an init that gets an address and
//! runs `plinth-agent join`. Works with Debian and Ubuntu kernel packages
//! (`--kernel-package`, read by [`crate::debpkg`]) or unpacked with `dpkg -x`.

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use plinth_model::Arch;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules included by default: common NICs and disks of servers and VMs,
/// and what the image deploy needs.
pub const DEFAULT_MODULES: &[&str] = &[
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "bnxt_en",
    "tg3",
    "r8169",
    "virtio_net",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "ahci",
    "ata_piix",
    "sd_mod",
    "nvme",
    "mlx5_core",
    // The image deploy mounts the image's root file system (its cloud-init
    // seed) and writes a UEFI boot entry.
    "ext4",
    "crc32c_generic",
    "efivarfs",
];

/// A newc ("070701") cpio archive being written.
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Default for Cpio {
    fn default() -> Self {
        Cpio::new()
    }
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio { out: Vec::new(), ino: 1 }
    }

    fn header(&mut self, name: &str, mode: u32, len: usize) {
        let fields = [self.ino, mode, 0, 0, 1, 0, len as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.header(name, 0o040755, 0);
    }

    /// A file with `mode` permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, 0o100000 | mode, data.len());
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, 0o120777, target.len());
        self.out.extend_from_slice(target.as_bytes());
        self.pad();
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0);
        self.out
    }
}

/// The `depends=` list of a module file (`.modinfo` strings are NUL-separated).
pub fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| String::from_utf8_lossy(d).split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Finds `<name>.ko`, `.ko.xz` or `.ko.zst` (`-` and `_` are the same in
/// module names) under `dir`.
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let want = format!("{}.ko", name.replace('-', "_"));
    let matches = |f: &str| {
        let f = f.replace('-', "_");
        f == want || f.strip_suffix(".xz").or_else(|| f.strip_suffix(".zst")) == Some(want.as_str())
    };
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|f| matches(&f.to_string_lossy())) {
                return Some(p);
            }
        }
    }
    None
}

/// Modules `wanted` and what they depend on, in load order, as (name, bytes).
/// Names the kernel does not have are skipped (a built-in driver, or not
/// built for this kernel); xz and zstd modules (Debian 13, Ubuntu) are
/// decompressed, busybox's insmod loading only plain ones; a gzip one is an
/// error.
pub fn resolve_modules(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    fn add(
        dir: &Path,
        name: &str,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if depth > 32 || !seen.insert(name.clone()) {
            return Ok(());
        }
        let Some(path) = find_module(dir, &name) else {
            if find_module_ext(dir, &format!("{name}.ko.gz")) {
                bail!("module {name} is gzip-compressed (.ko.gz); unpack the modules first");
            }
            return Ok(());
        };
        let raw = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = crate::debpkg::decompress(&raw).with_context(|| format!("{}", path.display()))?.into_owned();
        for d in depends(&bytes) {
            add(dir, &d, seen, out, depth + 1)?;
        }
        out.push((name, bytes));
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        add(dir, w, &mut seen, &mut out, 0)?;
    }
    Ok(out)
}

fn find_module_ext(dir: &Path, file: &str) -> bool {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|f| f.to_string_lossy().replace('-', "_") == file) {
                return true;
            }
        }
    }
    false
}

const INIT: &str = r#"#!/bin/busybox sh
# Plinth discovery: bring up the network, then run the agent, which
# registers this machine and runs the jobs Plinth hands it.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /run /var/lib
for m in $(cat /modules/order); do insmod "/modules/$m.ko" 2>/dev/null; done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
api=$(arg plinth.api)
join=$(arg plinth.join)
machine=$(arg plinth.machine)
token=$(arg plinth.token)
echo "plinth-discovery: API $api"
up=""
# A static address (virtual media on a network without DHCP): on the NIC
# with plinth.mac, else the first.
static=$(arg plinth.ip)
if [ -n "$static" ]; then
  want=$(arg plinth.mac)
  for nic in $(ls /sys/class/net | grep -v '^lo$'); do
    if [ -z "$want" ] || [ "$(cat /sys/class/net/$nic/address)" = "$want" ]; then
      ip link set "$nic" up
      ip addr add "$static" dev "$nic"
      gw=$(arg plinth.gw)
      [ -n "$gw" ] && ip route add default via "$gw" dev "$nic"
      : > /etc/resolv.conf
      for d in $(arg plinth.dns | tr ',' ' '); do echo "nameserver $d" >> /etc/resolv.conf; done
      up=$nic
      break
    fi
  done
fi
for i in 1 2 3 4 5; do
  [ -n "$up" ] && break
  for nic in $(ls /sys/class/net | grep -v '^lo$'); do
    ip link set "$nic" up
    if udhcpc -i "$nic" -q -n -t 5 -T 2 -s /etc/udhcpc.sh; then up=$nic; break 2; fi
  done
  sleep 2
done
[ -n "$up" ] || { echo "plinth-discovery: no DHCP answer on any NIC"; sleep 30; reboot -f; }
echo "plinth-discovery: network up on $up"
mkdir -p /run/plinth
# A known machine's bootenv gives it its id and a machine token; an
# unknown one gets a join token and registers.
if [ -n "$machine" ] && [ -n "$token" ]; then
  printf 'PLINTH_MACHINE=%s\nPLINTH_TOKEN=%s\n' "$machine" "$token" > /run/plinth/agent.env
fi
while true; do
  if [ -f /run/plinth/agent.env ]; then
    . /run/plinth/agent.env
    /bin/plinth-agent run --endpoint "$api" --machine "$PLINTH_MACHINE" --token "$PLINTH_TOKEN" \
      --ca-cert /etc/plinth/ca.pem --state-file /run/plinth/agent.env \
      --work-dir /var/lib/plinth-agent --reboot-command "reboot -f" --poweroff-command "poweroff -f"
  else
    /bin/plinth-agent join --endpoint "$api" --token "$join" --ca-cert /etc/plinth/ca.pem --state-dir /run/plinth \
      --work-dir /var/lib/plinth-agent --reboot-command "reboot -f" --poweroff-command "poweroff -f"
  fi
  echo "plinth-discovery: the agent stopped; starting it again in 10 s"
  sleep 10
done
"#;

const UDHCPC: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
"#;

/// Builds the initramfs bytes.
pub fn initramfs(busybox: &[u8], agent: &[u8], ca: &[u8], modules: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut c = Cpio::new();
    for d in ["bin", "sbin", "etc", "etc/plinth", "proc", "sys", "dev", "modules", "tmp", "run", "var", "var/lib"] {
        c.dir(d);
    }
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("bin/plinth-agent", 0o755, agent);
    c.file("etc/plinth/ca.pem", 0o644, ca);
    c.file("etc/udhcpc.sh", 0o755, UDHCPC.as_bytes());
    c.file("init", 0o755, INIT.as_bytes());
    let order: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    c.file("modules/order", 0o644, format!("{}\n", order.join("\n")).as_bytes());
    for (name, bytes) in modules {
        c.file(&format!("modules/{name}.ko"), 0o644, bytes);
    }
    c.finish()
}

/// The architecture a 64-bit little-endian ELF executable is built for,
/// from its header's `e_machine`.
pub fn elf_arch(elf: &[u8]) -> Option<Arch> {
    if elf.len() < 20 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([elf[18], elf[19]]) {
        0x3e => Some(Arch::Amd64),
        0xb7 => Some(Arch::Arm64),
        _ => None,
    }
}

/// The architecture a kernel image boots on: an x86 bzImage carries `HdrS`
/// at 0x202, an ARM64 `Image` carries `ARM\x64` at 0x38, an EFI zboot image
/// (`MZ` … `zimg`) names it in its PE header's machine field. A gzip'd
/// image is not recognised.
pub fn kernel_arch(image: &[u8]) -> Option<Arch> {
    if image.get(0x202..0x206) == Some(b"HdrS") {
        Some(Arch::Amd64)
    } else if image.get(0x38..0x3c) == Some(b"ARM\x64") {
        Some(Arch::Arm64)
    } else if image.starts_with(b"MZ") && image.get(4..8) == Some(b"zimg") {
        let pe = u32::from_le_bytes(image.get(0x3c..0x40)?.try_into().ok()?) as usize;
        match image.get(pe + 4..pe + 6) {
            Some([0x64, 0xaa]) => Some(Arch::Arm64),
            Some([0x64, 0x86]) => Some(Arch::Amd64),
            _ => None,
        }
    } else {
        None
    }
}

/// Where the image of `arch` goes in the file root, as the discovery
/// bootenv names it.
fn image_dir(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "discovery",
        Arch::Arm64 => "discovery/arm64",
    }
}

fn is_static(elf: &[u8]) -> bool {
    // An ELF with no PT_INTERP program header needs no dynamic loader.
    !elf.windows(b"/lib64/ld-linux".len()).any(|w| w == b"/lib64/ld-linux")
        && !elf.windows(b"/lib/ld-linux".len()).any(|w| w == b"/lib/ld-linux")
}

/// What `plinth discovery build` made.
pub struct Built {
    /// Read from the agent.
    pub arch: Arch,
    /// The folder in the file root.
    pub dir: &'static str,
    /// The kernel's version (its modules folder's name).
    pub kernel_version: Option<String>,
    /// The modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// The virtual media image (`--iso`), when asked for.
    pub iso: Option<PathBuf>,
}

/// The GRUB platforms a BIOS and UEFI bootable image needs, and the Debian
/// packages that have them.
const ISO_PLATFORMS: [(&str, &str); 2] = [("i386-pc", "grub-pc-bin"), ("x86_64-efi", "grub-efi-amd64-bin")];

/// Writes `discovery.iso` next to the image in `dest`: BIOS and UEFI
/// bootable (GRUB through `grub-mkrescue`, with `xorriso` and `mtools`),
/// its GRUB booting the discovery kernel with the arguments of
/// `/plinth/seed.cfg`, which the server writes for each machine it boots
/// from the image (`plinth machines boot-media`). The image itself carries
/// no credential.
fn build_iso(dest: &Path, arch: Arch) -> Result<PathBuf> {
    if arch != Arch::Amd64 {
        bail!("--iso builds x86-64 images (BIOS and UEFI); this agent is for {}", arch.as_str());
    }
    for (platform, package) in ISO_PLATFORMS {
        if !Path::new("/usr/lib/grub").join(platform).is_dir() {
            bail!(
                "--iso needs GRUB's {platform} modules: apt-get install {package} (and grub-common, xorriso, mtools)"
            );
        }
    }
    let stage = tempfile::Builder::new().prefix("plinth-iso-").tempdir().context("cannot make a scratch folder")?;
    let s = stage.path();
    std::fs::create_dir_all(s.join("boot/grub"))?;
    std::fs::create_dir_all(s.join("discovery"))?;
    std::fs::create_dir_all(s.join("plinth"))?;
    std::fs::write(s.join("boot/grub/grub.cfg"), plinth_power::media::GRUB_CFG)?;
    std::fs::write(s.join("plinth/seed.cfg"), "set plinth_args=\"\"\n")?;
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(dest.join(f), s.join("discovery").join(f)).with_context(|| format!("cannot copy {f}"))?;
    }
    let out = dest.join("discovery.iso");
    let tmp = dest.join(".discovery.iso.tmp");
    let run = std::process::Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&tmp)
        .arg(s)
        .arg("--")
        .args(["-volid", "PLINTH"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run grub-mkrescue (apt-get install grub-common xorriso mtools)")?;
    if !run.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("grub-mkrescue failed: {}", String::from_utf8_lossy(&run.stderr).trim());
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// `plinth discovery build`.
pub fn run(m: &ArgMatches) -> Result<Built> {
    let data_dir = m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data"));
    let root = m.get_one::<PathBuf>("file-root").cloned().unwrap_or_else(|| data_dir.join("files"));
    // From packages: unpacked into a scratch folder, removed when done.
    let packages: Vec<PathBuf> = m.get_many::<PathBuf>("kernel-package").into_iter().flatten().cloned().collect();
    let mut _scratch = None;
    let (kernel, modules_dir, kernel_version) = if packages.is_empty() {
        let modules = m.get_one::<PathBuf>("modules").cloned().context("--modules is required with --kernel")?;
        let version = modules.file_name().map(|v| v.to_string_lossy().into_owned());
        (
            m.get_one::<PathBuf>("kernel").cloned().context("give --kernel-package, or --kernel and --modules")?,
            modules,
            version,
        )
    } else {
        // A folder of our own: an unpredictable name, made owner-only in one
        // step, so no other local user can plant a link in it or swap a
        // module before it is packed. Removed when done.
        let scratch = _scratch.insert(
            tempfile::Builder::new()
                .prefix("plinth-kernel-")
                .tempdir()
                .context("cannot make a scratch folder for the kernel package")?,
        );
        let k = crate::debpkg::unpack_kernel(&packages, scratch.path())?;
        (k.image, k.modules, Some(k.version))
    };
    let busybox = m.get_one::<PathBuf>("busybox").cloned().unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let agent = match m.get_one::<PathBuf>("agent") {
        Some(a) => a.clone(),
        None => std::env::current_exe()?.with_file_name("plinth-agent"),
    };
    let ca = m.get_one::<PathBuf>("ca-cert").cloned().unwrap_or_else(|| data_dir.join("tls/ca.pem"));
    let read = |p: &Path, what: &str| -> Result<Vec<u8>> {
        let len = std::fs::metadata(p).with_context(|| format!("cannot read the {what} {}", p.display()))?.len();
        if len > crate::debpkg::MAX_FILE {
            bail!("the {what} {} is {} MiB, more than a {what} can be; refused", p.display(), len >> 20);
        }
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let busybox_bytes = read(&busybox, "busybox")?;
    let agent_bytes = read(&agent, "agent")?;
    for (what, bytes, path) in [("busybox", &busybox_bytes, &busybox), ("agent", &agent_bytes, &agent)] {
        if !is_static(bytes) {
            bail!(
                "{what} {} is dynamically linked; the discovery image has no C library: use a static build (busybox-static; the agent built with RUSTFLAGS=\"-C target-feature=+crt-static\")",
                path.display()
            );
        }
    }
    let arch = elf_arch(&agent_bytes)
        .with_context(|| format!("the agent {} is not an x86-64 or ARM64 Linux executable", agent.display()))?;
    if elf_arch(&busybox_bytes) != Some(arch) {
        bail!("busybox {} is not built for {}, as the agent is", busybox.display(), arch.as_str());
    }
    let kernel_bytes = read(&kernel, "kernel")?;
    match kernel_arch(&kernel_bytes) {
        Some(k) if k != arch => {
            bail!("the kernel {} is for {}, the agent for {}", kernel.display(), k.as_str(), arch.as_str())
        }
        _ => {}
    }
    if let Some(want) = m.get_one::<String>("arch")
        && want != arch.as_str()
    {
        bail!("--arch {want} was asked for, but the agent is built for {}", arch.as_str());
    }
    let ca_bytes = read(&ca, "CA certificate")?;
    let wanted: Vec<String> = match m.get_one::<String>("with-modules") {
        Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
    };
    let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let modules = resolve_modules(&modules_dir, &wanted_refs)?;
    if modules.is_empty() {
        bail!(
            "none of the modules ({}) is under {}; point --modules at the kernel's lib/modules/<version>",
            wanted.join(","),
            modules_dir.display()
        );
    }
    let image = initramfs(&busybox_bytes, &agent_bytes, &ca_bytes, &modules);
    let dest = root.join(image_dir(arch));
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    for (name, bytes) in [("vmlinuz", kernel_bytes), ("initrd.img", image)] {
        let tmp = dest.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, dest.join(name))?;
    }
    // The same agent, for installed systems to download (post.agent).
    let agents = root.join("agent");
    std::fs::create_dir_all(&agents).with_context(|| format!("cannot create {}", agents.display()))?;
    let tmp = agents.join(format!(".plinth-agent-{}.tmp", arch.as_str()));
    std::fs::write(&tmp, &agent_bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, agents.join(format!("plinth-agent-{}", arch.as_str())))?;
    let iso = if m.get_flag("iso") { Some(build_iso(&dest, arch)?) } else { None };
    Ok(Built {
        iso,
        arch,
        dir: image_dir(arch),
        kernel_version,
        modules: modules.into_iter().map(|(n, _)| n).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_is_newc_that_busybox_reads_back() {
        let mut c = Cpio::new();
        c.dir("etc");
        c.file("etc/hello", 0o644, b"hello\n");
        c.symlink("link", "etc/hello");
        let bytes = c.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &bytes).unwrap();
        if !Path::new("/bin/busybox").exists() {
            return;
        }
        let out = std::process::Command::new("/bin/busybox")
            .args(["cpio", "-i", "-d", "-F"])
            .arg(&archive)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/hello")).unwrap(), "hello\n");
        assert_eq!(std::fs::read_link(dir.path().join("link")).unwrap(), Path::new("etc/hello"));
    }

    #[test]
    fn architectures_are_read_from_elf_and_kernel_headers() {
        let elf = |machine: u16| {
            let mut h = vec![0u8; 64];
            h[..6].copy_from_slice(b"\x7fELF\x02\x01");
            h[18..20].copy_from_slice(&machine.to_le_bytes());
            h
        };
        assert_eq!(elf_arch(&elf(0x3e)).map(Arch::as_str), Some("amd64"));
        assert_eq!(elf_arch(&elf(0xb7)).map(Arch::as_str), Some("arm64"));
        assert_eq!(elf_arch(&elf(0x28)).map(Arch::as_str), None, "32-bit ARM is not built");
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
        assert_eq!(elf_arch(b""), None);
        if let Ok(bytes) = std::fs::read("/proc/self/exe") {
            assert_eq!(
                elf_arch(&bytes).map(Arch::as_str),
                Some(if cfg!(target_arch = "x86_64") { "amd64" } else { "arm64" })
            );
        }
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz).map(Arch::as_str), Some("amd64"));
        let mut image = vec![0u8; 0x40];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&image).map(Arch::as_str), Some("arm64"));
        let mut zboot = vec![0u8; 0x100];
        zboot[..2].copy_from_slice(b"MZ");
        zboot[4..8].copy_from_slice(b"zimg");
        zboot[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        zboot[0x84..0x86].copy_from_slice(&[0x64, 0xaa]);
        assert_eq!(kernel_arch(&zboot).map(Arch::as_str), Some("arm64"));
        assert_eq!(kernel_arch(&zboot[..0x20]), None, "a truncated header is unknown, not a panic");
        assert_eq!(kernel_arch(b"junk"), None);
    }

    #[test]
    fn module_dependencies_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, deps: &str| {
            std::fs::write(
                dir.path().join(format!("{name}.ko")),
                format!("\0license=GPL\0depends={deps}\0vermagic=6.1\0"),
            )
            .unwrap()
        };
        w("virtio_net", "net_failover,virtio_ring");
        w("net_failover", "failover");
        w("failover", "");
        w("virtio_ring", "");
        let order: Vec<String> =
            resolve_modules(dir.path(), &["virtio_net", "missing"]).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["failover", "net_failover", "virtio_ring", "virtio_net"]);
        // Compressed modules are taken decompressed; a broken one is an error.
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &b"\0depends=failover\0"[..], &mut xz).unwrap();
        std::fs::write(dir.path().join("e1000e.ko.xz"), &xz).unwrap();
        let got = resolve_modules(dir.path(), &["e1000e"]).unwrap();
        assert_eq!(got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["failover", "e1000e"]);
        assert_eq!(got[1].1, b"\0depends=failover\0");
        std::fs::write(dir.path().join("igb.ko.zst"), b"\x28\xb5\x2f\xfdjunk").unwrap();
        assert!(format!("{:#}", resolve_modules(dir.path(), &["igb"]).unwrap_err()).contains("zstd"));
        std::fs::write(dir.path().join("tg3.ko.gz"), b"x").unwrap();
        assert!(resolve_modules(dir.path(), &["tg3"]).unwrap_err().to_string().contains("gzip"));
    }
}

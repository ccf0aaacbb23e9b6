#!/usr/bin/env bash
# Prepares what the VM boot tests need in one folder (default target/lab):
# a Debian kernel (unpacked from its package, never installed), its e1000
# module, and an initrd of busybox that gets an address by DHCP, fetches a
# file from Plinth's boot HTTP server and powers off. Idempotent.
set -euo pipefail
dir=${1:-target/lab}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ ! -f "$dir/vmlinuz" ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || { echo "cannot find the kernel package behind linux-image-amd64 (run apt-get update)" >&2; exit 1; }
  (cd "$dir" && rm -f linux-image-*.deb && apt-get download "$pkg" >/dev/null)
  rm -rf "$dir/kernel"
  dpkg -x "$dir"/linux-image-*.deb "$dir/kernel"
  cp "$dir"/kernel/boot/vmlinuz-* "$dir/vmlinuz.tmp"
  mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
fi

# NIC drivers for e1000 and virtio-net; their dependencies are resolved
# from each module's own `depends=` field (.modinfo), no depmod needed.
wanted=(e1000 virtio_net virtio_pci virtio_blk)
busybox=$(command -v busybox)
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || [ -f /bin/busybox ] || { echo "needs busybox-static" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,etc,tmp,modules}
cp /bin/busybox "$root/bin/busybox"
: > "$root/modules/order"
declare -A seen=()
module_file() { find "$dir/kernel/lib/modules" -name "$1.ko*" | head -n 1; }
add_module() {
  local m=$1 f deps d
  [ -z "${seen[$m]:-}" ] || return 0
  seen[$m]=1
  f=$(module_file "$m")
  # Absent means built into the kernel.
  [ -n "$f" ] || return 0
  case "$f" in
    *.xz) xz -dc "$f" > "$root/modules/$m.ko" ;;
    *.zst) zstd -dcq "$f" > "$root/modules/$m.ko" ;;
    *) cp "$f" "$root/modules/$m.ko" ;;
  esac
  deps=$(tr '\0' '\n' < "$root/modules/$m.ko" | sed -n 's/^depends=//p' | head -n 1)
  for d in ${deps//,/ }; do add_module "$d"; done
  echo "$m" >> "$root/modules/order"
}
for m in "${wanted[@]}"; do add_module "$m"; done
grep -qx e1000 "$root/modules/order" || { echo "e1000 module not found in the kernel package" >&2; exit 1; }
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "PLINTH-LAB: insmod $m failed"; done; ls /sys/class/net
ip link set eth0 up
server=$(sed -n 's/.*plinth=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "PLINTH-LAB: initrd up, server $server"
echo "PLINTH-LAB: cmdline [$(cat /proc/cmdline)]"
if udhcpc -i eth0 -q -n -t 10 -T 2 -s /udhcpc.sh; then
  hello=$(wget -q -O - "http://$server/files/hello.txt?from=$(cat /sys/class/net/eth0/address)")
  echo "PLINTH-LAB: fetched [$hello]"
else
  echo "PLINTH-LAB: no DHCP lease"
fi
poweroff -f
INIT
cat > "$root/udhcpc.sh" <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew) ip addr add "$ip/$mask" dev "$interface"; echo "PLINTH-LAB: leased $ip" ;;
esac
SCRIPT
chmod +x "$root/init" "$root/udhcpc.sh"
(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -9) > "$dir/initrd.img.tmp"
mv "$dir/initrd.img.tmp" "$dir/initrd.img"

# An "installed OS" disk image for the hand-off test (UEFI): a GPT disk whose
# EFI system partition holds GRUB (EFI/BOOT/BOOTX64.EFI), the kernel and an
# initramfs that reads /etc/plinth (agent.env, ca.pem) from the tar the
# installer task left at 40 MiB, downloads the agent from Plinth as
# post.agent does, and runs it. Needs grub-efi-amd64-bin, mtools, dosfstools
# and fdisk; skipped without them.
if command -v grub-mkstandalone >/dev/null && [ -d /usr/lib/grub/x86_64-efi ] && command -v mcopy >/dev/null \
  && command -v mkfs.vfat >/dev/null && command -v sfdisk >/dev/null && [ ! -f "$dir/os/disk.img.gz" ]; then
  cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /etc /tmp /run /var/lib
for m in $(cat /modules/order); do insmod "/modules/$m.ko" 2>/dev/null; done
echo "PLINTH-OS: the installed system is up from its disk [$(cat /proc/cmdline)]"
if ! dd if=/dev/vda bs=1M skip=40 count=1 2>/dev/null | tar -x -C /; then
  echo "PLINTH-OS: no agent configuration on the disk"; poweroff -f
fi
set -a; . /etc/plinth/agent.env; set +a
ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 2 -s /udhcpc.sh || { echo "PLINTH-OS: no DHCP lease"; poweroff -f; }
wget -q -O /bin/plinth-agent "$PLINTH_HTTP/files/agent/plinth-agent-amd64" && chmod 755 /bin/plinth-agent
/bin/plinth-agent run --ca-cert /etc/plinth/ca.pem --state-file /etc/plinth/agent.env \
  --work-dir /var/lib/plinth-agent --reboot-command "reboot -f" --poweroff-command "poweroff -f"
echo "PLINTH-OS: the agent stopped"
poweroff -f
INIT
  os=$(mktemp -d)
  (cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -9) > "$os/initrd.img"
  cat > "$os/grub.cfg" <<'CFG'
search --no-floppy --file /plinth-installed-os --set=root
linux /vmlinuz console=ttyS0 plinth.installed=1
initrd /initrd.img
boot
CFG
  grub-mkstandalone -O x86_64-efi --locales= --themes= --fonts= --modules="part_gpt fat search linux" \
    --install-modules="part_gpt fat search search_fs_file linux normal echo boot" \
    -o "$os/BOOTX64.EFI" "boot/grub/grub.cfg=$os/grub.cfg"
  mkfs.vfat -C "$os/esp.img" $((32 * 1024)) >/dev/null
  mmd -i "$os/esp.img" ::/EFI ::/EFI/BOOT
  mcopy -i "$os/esp.img" "$os/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$os/esp.img" "$dir/vmlinuz" ::/vmlinuz
  mcopy -i "$os/esp.img" "$os/initrd.img" ::/initrd.img
  echo plinth > "$os/marker" && mcopy -i "$os/esp.img" "$os/marker" ::/plinth-installed-os
  truncate -s 48M "$os/disk.img"
  printf 'label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"\n' \
    | sfdisk -q "$os/disk.img"
  dd if="$os/esp.img" of="$os/disk.img" bs=1M seek=1 conv=notrunc status=none
  mkdir -p "$dir/os"
  gzip -9 -c "$os/disk.img" > "$dir/os/disk.img.gz.tmp"
  mv "$dir/os/disk.img.gz.tmp" "$dir/os/disk.img.gz"
  rm -rf "$os"
fi
# Static plinth-agents for the discovery images the VM tests build, and for
# the ARM64 agent test (run under qemu-user). ARM64 needs the cross tools
# scripts/build-agent.sh names; without them that agent is skipped.
repo=$(cd "$(dirname "$0")/.." && pwd)
stale() { [ ! -x "$1" ] || [ -n "$(find "$repo/crates/agent" "$repo/Cargo.lock" -newer "$1" \( -name '*.rs' -o -name '*.toml' -o -name Cargo.lock \) | head -n 1)" ]; }
if stale "$dir/plinth-agent"; then
  "$repo/scripts/build-agent.sh" amd64 "$dir/plinth-agent"
fi
if command -v aarch64-linux-gnu-gcc >/dev/null && stale "$dir/arm64/plinth-agent"; then
  "$repo/scripts/build-agent.sh" arm64 "$dir/arm64/plinth-agent"
fi
# An ARM64 kernel and busybox, for building the ARM64 discovery image, when
# dpkg knows the arm64 architecture (dpkg --add-architecture arm64).
if dpkg --print-foreign-architectures | grep -qx arm64 && [ ! -f "$dir/arm64/vmlinuz" ]; then
  mkdir -p "$dir/arm64"
  pkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || { echo "cannot find the kernel package behind linux-image-arm64:arm64 (run apt-get update)" >&2; exit 1; }
  (cd "$dir/arm64" && rm -f ./*.deb && apt-get download "$pkg" busybox-static:arm64 >/dev/null 2>&1)
  rm -rf "$dir/arm64/kernel" "$dir/arm64/bb"
  dpkg -x "$dir"/arm64/linux-image-*.deb "$dir/arm64/kernel"
  dpkg -x "$dir"/arm64/busybox-static_*.deb "$dir/arm64/bb"
  cp "$dir/arm64/bb/bin/busybox" "$dir/arm64/busybox"
  # GRUB for ARM64 UEFI network boot (Debian has no ARM64 iPXE).
  command -v grub-mkimage >/dev/null && "$(dirname "$0")/grub-netboot.sh" arm64 "$dir/arm64/grubaa64.efi"
  # The kernel package stays: a test reads it with --kernel-package.
  rm -rf "$dir/arm64/bb" "$dir"/arm64/busybox-static_*.deb
  cp "$dir"/arm64/kernel/boot/vmlinuz-* "$dir/arm64/vmlinuz.tmp"
  mv "$dir/arm64/vmlinuz.tmp" "$dir/arm64/vmlinuz"
fi
echo "lab assets ready in $dir"

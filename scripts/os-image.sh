#!/usr/bin/env bash
# Builds a Debian 12 cloud image from Debian's packages, as a site would
# build one for the image deploy: a raw GPT disk with an EFI system
# partition (a standalone GRUB at \EFI\BOOT\BOOTX64.EFI, so firmware boots
# it without a boot entry) and an ext4 root (linux-image, systemd,
# cloud-init, openssh-server, ifupdown), with cloud-init reading NoCloud.
#   scripts/os-image.sh OUT_DIR
# Writes OUT_DIR/debian-12.raw.zst (zstd) and keeps it while this script is
# unchanged (the stamp is the script's SHA-256). Needs root, mmdebstrap,
# e2fsprogs, dosfstools, mtools, fdisk, zstd and grub-efi-amd64-bin, and
# the Debian mirror (MIRROR, default http://deb.debian.org/debian).
set -euo pipefail
out=${1:?usage: os-image.sh OUT_DIR}
mirror=${MIRROR:-http://deb.debian.org/debian}
mkdir -p "$out"
stamp=$(sha256sum "$0" | cut -c1-16)
if [ -f "$out/debian-12.raw.zst" ] && [ "$(cat "$out/debian-12.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "OS image up to date in $out"
  exit 0
fi
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk zstd grub-mkstandalone; do
  command -v "$tool" >/dev/null || { echo "os-image.sh needs $tool" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
started=$(date +%s)
mmdebstrap --variant=minbase --mode=root --quiet \
  --include=linux-image-amd64,initramfs-tools,systemd-sysv,udev,dbus,locales,cloud-init,openssh-server,sudo,ifupdown,isc-dhcp-client,iproute2,netbase,curl,ca-certificates,grub-efi-amd64-bin \
  --customize-hook='chroot "$1" apt-get clean' \
  bookworm "$root" "$mirror"
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/lib/apt/lists/*

root_uuid=$(cat /proc/sys/kernel/random/uuid)
kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n 1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$root/boot/$initrd" ] || { echo "the image has no $initrd" >&2; exit 1; }
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$root_uuid" > "$root/etc/fstab"
printf 'debian\n' > "$root/etc/hostname"
: > "$root/etc/machine-id"
# cloud-init: NoCloud only (a seed URL from SMBIOS, the kernel command line
# or the deploy's cloud.cfg.d), then nothing; the network comes from its
# fallback (DHCP on the first NIC) or the metadata's network-config.
cat > "$root/etc/cloud/cloud.cfg.d/90-datasources.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
# C.UTF-8 is there without generating anything; user-data may set another.
locale: C.UTF-8
EOF
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' > "$root/etc/network/interfaces"
# The serial console shows the boot (the VM tests read it).
mkdir -p "$root/etc/systemd/system/getty.target.wants"
ln -sf /lib/systemd/system/serial-getty@.service "$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"

# GRUB, standalone, with its configuration inside: find the root by UUID.
cat > "$work/grub.cfg" <<EOF
set timeout=0
search --no-floppy --fs-uuid --set=root $root_uuid
linux /boot/$kernel root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8
initrd /boot/$initrd
boot
EOF
grub-mkstandalone -O x86_64-efi -d "$root/usr/lib/grub/x86_64-efi" -o "$work/BOOTX64.EFI" \
  --modules="part_gpt ext2 search_fs_uuid linux normal" "boot/grub/grub.cfg=$work/grub.cfg"

# The disk: 1 MiB gap, a 32 MiB ESP, the root to the end.
esp_mib=32
root_mib=1400
mkfs.vfat -C -n ESP "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mkfs.ext4 -q -F -L root -U "$root_uuid" -d "$root" "$work/root.img" "${root_mib}M"
disk=$work/debian-12.raw
truncate -s $(( (1 + esp_mib + root_mib + 1) * 1048576 )) "$disk"
sfdisk --quiet "$disk" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP
start=$((1 + esp_mib))MiB, size=${root_mib}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root
EOF
dd if="$work/esp.img" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$disk" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
zstd -q -3 -T0 -f "$disk" -o "$out/debian-12.raw.zst.tmp"
mv "$out/debian-12.raw.zst.tmp" "$out/debian-12.raw.zst"
echo "$stamp" > "$out/debian-12.stamp"
echo "OS image $out/debian-12.raw.zst ($(du -h "$out/debian-12.raw.zst" | cut -f1)) in $(( $(date +%s) - started )) s"

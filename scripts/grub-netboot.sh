#!/usr/bin/env bash
# Builds a GRUB network boot loader for UEFI machines, for sites whose
# firmware needs one (Debian ships no ARM64 iPXE):
#   scripts/grub-netboot.sh arm64|x86_64 OUT.efi
# Then put it in the file root and name it for those clients, e.g.
#   plinth subnets patch lab --data '{"boot_files": {"uefi-arm64": "grubaa64.efi"}}'
# GRUB loads grub/grub.cfg over TFTP from the server it came from; Plinth
# answers with the machine's bootenv file named `grub`, or, for a machine it
# does not know, the `grub-default` template (discovery with a join token).
# Needs grub-mkimage (grub-common); the modules come from
# grub-efi-<arch>-bin, downloaded and unpacked (not installed) when this
# machine is of another architecture.
set -euo pipefail
arch=${1:?usage: grub-netboot.sh arm64|x86_64 OUT.efi}
out=${2:?usage: grub-netboot.sh arm64|x86_64 OUT.efi}
case "$arch" in
  arm64) pkg=grub-efi-arm64-bin:arm64 ;;
  x86_64) pkg=grub-efi-amd64-bin:amd64 ;;
  *) echo "unknown architecture $arch (arm64, x86_64)" >&2; exit 2 ;;
esac
command -v grub-mkimage >/dev/null || { echo "needs grub-mkimage (apt-get install grub-common)" >&2; exit 1; }
modules=/usr/lib/grub/$arch-efi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ! -d "$modules" ]; then
  (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) \
    || { echo "cannot download $pkg (for arm64: dpkg --add-architecture arm64 && apt-get update)" >&2; exit 1; }
  dpkg -x "$tmp"/grub-efi-*.deb "$tmp/root"
  modules=$tmp/root/usr/lib/grub/$arch-efi
fi
grub-mkimage -O "$arch-efi" -d "$modules" -p /grub -o "$out.tmp" \
  efinet tftp net normal linux configfile echo test search part_gpt fat ext2 chain
mv "$out.tmp" "$out"

#!/usr/bin/env bash
# Image write benchmark: Plinth's image deploy against `wget | gunzip | dd`
# of the same image, on the same VM (UEFI, TCG, 2 vCPUs), in the same
# boot, from the same server. Not a test; prints a Markdown table for
# docs/benchmarks.md.
#   The image: scripts/os-image.sh's Debian 12 image, recompressed with
#   gzip -1 (busybox in discovery has gunzip, not zstd), and as zstd.
#   The VM PXE-boots discovery from Plinth in a network namespace this
#   script creates (and removes); one workflow runs, in order:
#     floor:  wget -O - URL | gunzip | dd of=/dev/vda bs=4M conv=fsync
#     plinth: plinth-agent deploy-image, the same raw.gz (SHA-256 verified, disk ends wiped)
#     zstd:   plinth-agent deploy-image of the raw.zst
#   each timed on the VM from /proc/uptime and reported as a param.
# Needs root, iproute2, qemu-system-x86, ovmf, ipxe, zstd, and the lab
# assets (scripts/lab-assets.sh target/lab; scripts/os-image.sh target/lab/os).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${PLINTH_LAB_DIR:-target/lab}
for f in vmlinuz plinth-agent os/debian-12.raw.zst; do
  [ -e "$LAB/$f" ] || { echo "missing $LAB/$f: run scripts/lab-assets.sh and scripts/os-image.sh" >&2; exit 1; }
done
cargo build --release -q -p plinth --bin plinth
PLINTH=$PWD/target/release/plinth
NS=plt-bench-img-$$
. bench/lab.sh
lab_up 10.78.0 "$PLINTH"
modules=$(ls -d "$LAB"/kernel/lib/modules/*)
"$PLINTH" discovery build --with-modules virtio_pci,virtio_net,virtio_blk,ext4,crc32c_generic,efivarfs \
  --kernel "$LAB/vmlinuz" --modules "$modules" --agent "$LAB/plinth-agent" --data-dir "$work/plinth" >/dev/null
zstd -q -d -c "$LAB/os/debian-12.raw.zst" | gzip -1 > "$work/debian-12.raw.gz"
cli images import deb-gz "$work/debian-12.raw.gz" --file-root "$files" >/dev/null 2>&1
cli images import deb-zst "$LAB/os/debian-12.raw.zst" --file-root "$files" >/dev/null 2>&1
raw=$(zstd -q -d -c "$LAB/os/debian-12.raw.zst" | wc -c)
cli subnets create --data '{"name":"bench","cidr":"10.78.0.0/24","range_start":"10.78.0.100","range_end":"10.78.0.199","interface":"br0","lease_secs":600,"router":"10.78.0.1"}' >/dev/null
for p in floor-secs plinth-secs zstd-secs; do
  cli params create --data "{\"name\":\"$p\",\"schema\":{\"type\":\"string\"}}" >/dev/null
done
# A task that times COMMAND on the VM and reports the seconds as PARAM.
timed() { # name, param, command
  local script
  script="t0=\$(cut -d' ' -f1 /proc/uptime)
$3
t1=\$(cut -d' ' -f1 /proc/uptime)
secs=\$(awk -v a=\$t0 -v b=\$t1 'BEGIN { printf \"%.1f\", b - a }')
printf '{\"params\": {\"$2\": \"%s\"}}' \"\$secs\" > \"\$PLINTH_RESULT\""
  cli tasks create --data "$(python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "reports": [sys.argv[2]], "templates": [{"name": "run", "contents": sys.argv[3]}]}))' "$1" "$2" "$script")" >/dev/null
}
sha() { cli images show "$1" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])'; }
url=http://10.78.0.1:18091/files/images
timed floor floor-secs "wget -q -O - $url/deb-gz.raw.gz | gunzip | dd of=/dev/vda bs=4M conv=fsync 2>/dev/null"
timed plinth plinth-secs "\"\$PLINTH_AGENT\" deploy-image --url $url/deb-gz.raw.gz --sha256 $(sha deb-gz) --format raw.gz"
timed zstd zstd-secs "\"\$PLINTH_AGENT\" deploy-image --url $url/deb-zst.raw.zst --sha256 $(sha deb-zst) --format raw.zst"
cli tasks create --data '{"name":"off","templates":[{"name":"run","contents":"(sleep 2; poweroff -f) >/dev/null 2>&1 &"}]}' >/dev/null
cli stages create --data '{"name":"bench","tasks":["floor","plinth","zstd","off"]}' >/dev/null
cli workflows create --data '{"name":"bench","stages":["bench"]}' >/dev/null
cli profiles patch global --data '{"params":{"discovery-workflow":"bench","kernel-console":"console=ttyS0"}}' >/dev/null
truncate -s 3G "$work/disk.img"
in_ns timeout 1800 qemu-system-x86_64 -accel tcg -machine q35 -smp 2 -m 768 -nographic -no-reboot \
  -bios /usr/share/ovmf/OVMF.fd -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:1e:00:01,romfile=,bootindex=1 \
  -drive file="$work/disk.img",format=raw,if=none,id=d0 -device virtio-blk-pci,drive=d0 \
  > "$work/console.log" 2>&1 < /dev/null || true
m=$(cli machines list --filter macs=52:54:00:1e:00:01 -o json)
get() { echo "$m" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m[0]["params"].get(sys.argv[1], "") if m else "")' "$1"; }
f=$(get floor-secs); p=$(get plinth-secs); z=$(get zstd-secs)
[ -n "$f" ] && [ -n "$p" ] && [ -n "$z" ] || { echo "the VM did not report all three; console tail:" >&2; tail -40 "$work/console.log" >&2; exit 1; }
mib=$(awk -v b="$raw" 'BEGIN{printf "%.0f", b/1048576}')
rate() { awk -v m="$mib" -v s="$1" 'BEGIN{printf "%.1f", m/s}'; }
echo "| write of the ${mib} MiB image to the VM's disk | time | MiB/s | ratio to the floor |"
echo "| --- | --- | --- | --- |"
echo "| floor: \`wget -O - \\| gunzip \\| dd\` of the raw.gz ($(du -m "$work/debian-12.raw.gz" | cut -f1) MiB) | ${f} s | $(rate "$f") | 1.00 |"
echo "| Plinth \`deploy-image\`, the same raw.gz (SHA-256, wipe, partition table last) | ${p} s | $(rate "$p") | $(awk -v a="$p" -v b="$f" 'BEGIN{printf "%.2f", a/b}') |"
echo "| Plinth \`deploy-image\`, raw.zst ($(du -m "$LAB/os/debian-12.raw.zst" | cut -f1) MiB) | ${z} s | $(rate "$z") | $(awk -v a="$z" -v b="$f" 'BEGIN{printf "%.2f", a/b}') |"

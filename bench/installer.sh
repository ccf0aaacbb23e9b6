#!/usr/bin/env bash
# The installer path, end to end, and its time from power-on: Debian's own
# netboot installer (package debian-installer-12-netboot-amd64) boots from
# Plinth in a UEFI VM (TCG), reads Plinth's rendered preseed, and installs
# Debian from a partial mirror Plinth's boot HTTP serves: Debian's packages
# and installer udebs, indexed with apt-ftparchive and signed with a test
# key the preseed makes the installer and the installed apt trust. The
# installed system's agent (post-install.sh) finishes the workflow.
# Too slow for CI on 2 cores; docs/images.md records what it measured.
#   sudo bench/installer.sh
# Prints power-on to the install's end and to the workflow's end.
# Needs root, iproute2, qemu-system-x86, ovmf, ipxe, apt-utils
# (apt-ftparchive), gnupg, mmdebstrap, curl, debian-installer-12-netboot-amd64,
# the lab assets (scripts/lab-assets.sh target/lab) and Debian's mirror
# (MIRROR, default http://deb.debian.org/debian) to build the partial one,
# which is kept in target/lab/di-mirror while this script is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${PLINTH_LAB_DIR:-target/lab}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DI=/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64
for f in "$DI/linux" "$DI/initrd.gz" "$LAB/vmlinuz" "$LAB/plinth-agent"; do
  [ -e "$f" ] || { echo "missing $f (debian-installer-12-netboot-amd64; scripts/lab-assets.sh)" >&2; exit 1; }
done
started_all=$(date +%s)

# The partial mirror: every installer udeb of bookworm, and the debs an
# install with the ssh-server task needs, resolved by mmdebstrap.
mirror=$PWD/$LAB/di-mirror
stamp=$(sha256sum "$0" | cut -c1-16)
if [ "$(cat "$mirror/stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$mirror"
  mkdir -p "$mirror/pool/main/udeb" "$mirror/pool/main/deb" "$mirror/gnupg"
  chmod 700 "$mirror/gnupg"
  curl -fsS "$MIRROR/dists/bookworm/main/debian-installer/binary-amd64/Packages.xz" | xz -dc > "$mirror/udebs.list"
  # The netboot installer downloads every component its initrd lacks from
  # its mirror: all of them must be there.
  sed -n 's/^Filename: //p' "$mirror/udebs.list" \
    | xargs -P 4 -I{} sh -c 'curl -fsS -o "$1/pool/main/udeb/$(basename "$2")" "$0/$2" 2>/dev/null || echo "$2" >> "$1/missing"' "$MIRROR" "$mirror" {}
  if [ -s "$mirror/missing" ]; then
    echo "$(wc -l < "$mirror/missing") of $(grep -c '^Filename:' "$mirror/udebs.list") installer udebs could not be fetched from $MIRROR" \
      "(e.g. $(head -n 1 "$mirror/missing")): the netboot installer needs them on its mirror" >&2
    rm -rf "$mirror"
    exit 2
  fi
  mmdebstrap --variant=important --quiet --skip=download/empty --skip=cleanup/apt/cache \
    --include=linux-image-amd64,grub-efi-amd64,grub-efi-amd64-signed,shim-signed,efibootmgr,os-prober,tasksel,task-ssh-server,openssh-server,curl,ca-certificates,sudo,locales,console-setup,keyboard-configuration,discover,laptop-detect,installation-report,popularity-contest,busybox,dmidecode,pciutils,usbutils,eject,bzip2,xz-utils,lsb-release,wget,file \
    --customize-hook="sync-out /var/cache/apt/archives $mirror/pool/main/deb" \
    bookworm /dev/null "$MIRROR"
  rm -f "$mirror/pool/main/deb/lock"; rm -rf "$mirror/pool/main/deb/partial"
  (
    cd "$mirror"
    mkdir -p dists/bookworm/main/binary-amd64 dists/bookworm/main/debian-installer/binary-amd64
    apt-ftparchive packages pool/main/deb > dists/bookworm/main/binary-amd64/Packages
    apt-ftparchive packages pool/main/udeb > dists/bookworm/main/debian-installer/binary-amd64/Packages
    for p in dists/bookworm/main/binary-amd64/Packages dists/bookworm/main/debian-installer/binary-amd64/Packages; do
      gzip -9 -k -f "$p"; xz -k -f "$p"
    done
    apt-ftparchive -o APT::FTPArchive::Release::Origin=Plinth -o APT::FTPArchive::Release::Label=Plinth \
      -o APT::FTPArchive::Release::Suite=stable -o APT::FTPArchive::Release::Codename=bookworm \
      -o APT::FTPArchive::Release::Architectures=amd64 -o APT::FTPArchive::Release::Components=main \
      release dists/bookworm > Release.tmp
    mv Release.tmp dists/bookworm/Release
    export GNUPGHOME=$mirror/gnupg
    gpg --batch --quiet --passphrase '' --quick-gen-key 'Plinth test mirror <mirror@plinth.invalid>' rsa3072 sign never
    gpg --batch --quiet --yes --detach-sign -o dists/bookworm/Release.gpg dists/bookworm/Release
    gpg --batch --quiet --yes --clearsign -o dists/bookworm/InRelease dists/bookworm/Release
    gpg --batch --quiet --export > key.gpg
  )
  echo "$stamp" > "$mirror/stamp"
fi
echo "mirror: $(du -sm "$mirror/pool" | cut -f1) MiB, $(find "$mirror/pool" -type f | wc -l) packages" >&2
[ -z "${MIRROR_ONLY:-}" ] || exit 0

cargo build -q -p plinth --bin plinth
PLINTH=$PWD/target/debug/plinth
NS=plt-bench-di-$$
. bench/lab.sh
lab_up 10.79.0 "$PLINTH" --machine-token-ttl 3600
# The agent for the installed system, where post.agent fetches it.
"$PLINTH" discovery build --with-modules virtio_pci,virtio_net,virtio_blk --kernel "$LAB/vmlinuz" \
  --modules "$(ls -d "$LAB"/kernel/lib/modules/*)" --agent "$LAB/plinth-agent" --data-dir "$work/plinth" >/dev/null
mkdir -p "$files/debian-12"
cp "$DI/linux" "$DI/initrd.gz" "$files/debian-12/"
cp -al "$mirror" "$files/mirror" 2>/dev/null || cp -a "$mirror" "$files/mirror"
rm -rf "$files/mirror/gnupg"
cli subnets create --data '{"name":"lab","cidr":"10.79.0.0/24","range_start":"10.79.0.100","range_end":"10.79.0.199","interface":"br0","lease_secs":3600,"router":"10.79.0.1","dns_servers":["10.79.0.1"]}' >/dev/null
cli params create --data '{"name":"installed-init","schema":{"type":"string"}}' >/dev/null
cli tasks create --data '{"name":"installed","reports":["installed-init"],"templates":[{"name":"run","contents":"printf '"'"'{\"params\": {\"installed-init\": \"%s\"}}'"'"' \"$(cat /proc/1/comm)\" > \"$PLINTH_RESULT\"\n(sleep 3; systemctl poweroff) >/dev/null 2>&1 &\n"}]}' >/dev/null
cli stages create --data '{"name":"install","bootenv":"debian-12"}' >/dev/null
cli stages create --data '{"name":"installed","bootenv":"local","tasks":["installed"]}' >/dev/null
cli workflows create --data '{"name":"install","stages":["install","installed"]}' >/dev/null
mac=52:54:00:1f:00:01
id=$(cli machines create --data "{\"name\":\"di-1\",\"macs\":[\"$mac\"],\"trusted\":true,\"params\":{
  \"debian-mirror-host\":\"10.79.0.1:18091\",\"debian-mirror-directory\":\"/files/mirror\",
  \"debian-mirror-key-url\":\"http://10.79.0.1:18091/files/mirror/key.gpg\",\"debian-tasks\":\"ssh-server\",
  \"preseed-partitioning\":\"preseed.part-plain\",\"kernel-console\":\"console=ttyS0,115200\",
  \"admin-password-hash\":\"!\"}}" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
cli machines workflow "$id" install >/dev/null
truncate -s 6G "$work/disk.img"
t0=$(date +%s)
in_ns timeout 5400 qemu-system-x86_64 -accel tcg -machine q35 -smp 2 -m 1536 -nographic \
  -bios /usr/share/ovmf/OVMF.fd -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
  -device virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=2 \
  -drive file="$work/disk.img",format=raw,if=none,id=d0 -device virtio-blk-pci,drive=d0,bootindex=1 \
  > "$work/console.log" 2>&1 < /dev/null || true
t1=$(date +%s)
m=$(cli machines show "$id" -o json)
state=$(echo "$m" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["workflow_state"], m["params"].get("installed-init", ""))')
cp "$work/console.log" /tmp/plinth-installer-console.log
timeline=$(cli machines timeline "$id" -o json)
secs_to() { echo "$timeline" | python3 -c '
import json, sys, datetime
t0 = datetime.datetime.fromtimestamp(int(sys.argv[1]), datetime.timezone.utc)
for e in json.load(sys.stdin):
    if sys.argv[2] in e["detail"]:
        at = datetime.datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
        print(int((at - t0).total_seconds())); break
' "$t0" "$1"; }
echo "workflow: $state (the installed system's init from its agent)"
echo "power-on to the installed system's agent: $(secs_to 'traded for a session') s; to the workflow's end: $(secs_to 'workflow complete') s; the VM ran $((t1 - t0)) s"
echo "the whole script: $(( $(date +%s) - started_all )) s (console: /tmp/plinth-installer-console.log)"
[ "${state%% *}" = complete ]

#!/usr/bin/env bash
# Boot-services benchmark: Plinth against the reference peers, same machine,
# same run. Not a test; prints a Markdown table for docs/benchmarks.md.
#   DHCP: perfdhcp 4-way exchanges/s and drops vs dnsmasq and Kea (memfile),
#         each server alone in a network namespace this script creates.
#   TFTP: one 50 MB file and 100 concurrent 5 MB transfers vs tftpd-hpa (loopback).
#   HTTP: large-file throughput and small-file requests/s with wrk vs nginx (loopback).
# Needs root, iproute2, kea-admin (perfdhcp), kea-dhcp4-server, dnsmasq-base,
# tftpd-hpa, atftp, nginx-light, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
PLINTH=$PWD/target/release/plinth
work=$(mktemp -d)
pids=()
NS_S=plt-bench-s-$$
NS_C=plt-bench-c-$$
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_C" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
RATE=${RATE:-20000}
SECS=${SECS:-10}

row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }

# ---------------------------------------------------------------- DHCP
ip netns add "$NS_S"; ip netns add "$NS_C"
ip link add vs0 netns "$NS_S" type veth peer name vc0 netns "$NS_C"
ip -n "$NS_S" link set lo up; ip -n "$NS_C" link set lo up
ip -n "$NS_S" link set vs0 up; ip -n "$NS_C" link set vc0 up
ip -n "$NS_S" addr add 10.99.0.1/16 dev vs0
ip -n "$NS_C" addr add 10.99.0.2/16 dev vc0  # perfdhcp needs an address to send from

perf() { # prints "exchanges/s drops%"
  local out
  out=$(ip netns exec "$NS_C" timeout $((SECS + 30)) perfdhcp -4 -l vc0 -r "$RATE" -R 60000 -p "$SECS" "$@" 2>&1 || true)
  local rate sent drops
  rate=$(sed -n 's/^Rate: \([0-9.]*\) 4-way exchanges\/second.*/\1/p' <<<"$out" | head -1)
  sent=$(awk '/DISCOVER-OFFER/{f=1} f && /sent packets:/{print $3; exit}' <<<"$out")
  drops=$(awk '/DISCOVER-OFFER/{f=1} f && /drops:/{print $2; exit}' <<<"$out")
  local pct="?"
  if [ -n "$sent" ] && [ "$sent" -gt 0 ]; then pct=$(awk -v d="${drops:-0}" -v s="$sent" 'BEGIN{printf "%.1f", 100*d/s}'); fi
  echo "${rate:-0} $pct"
}

# Plinth
ip netns exec "$NS_S" env PLINTH_ADMIN_PASSWORD=bench-password PLINTH_LOG=warn "$PLINTH" serve --data-dir "$work/plinth" \
  --api-addr 127.0.0.1:18092 --http-addr off --tftp-addr off 2>"$work/plinth.log" &
pids+=($!); ppid=$!
sleep 2
cli() { ip netns exec "$NS_S" env PLINTH_ENDPOINT=https://127.0.0.1:18092 PLINTH_CA_CERT="$work/plinth/tls/ca.pem" PLINTH_CONFIG="$work/cli.json" "$PLINTH" "$@"; }
echo bench-password | cli login --password-stdin >/dev/null
cli subnets create --data '{"name":"bench","cidr":"10.99.0.0/16","range_start":"10.99.1.0","range_end":"10.99.255.254","interface":"vs0","lease_secs":3600,"unknown_share":100}' >/dev/null
sleep 1
read -r p_rate p_drop < <(perf)
kill "$ppid" 2>/dev/null || { echo "plinth died during the DHCP run:" >&2; tail -20 "$work/plinth.log" >&2; }; wait "$ppid" 2>/dev/null || true

# dnsmasq
ip netns exec "$NS_S" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=vs0 --bind-interfaces \
  --dhcp-range=10.99.1.0,10.99.255.254,255.255.0.0,1h --dhcp-lease-max=100000 --dhcp-leasefile="$work/dnsmasq.leases" \
  --dhcp-authoritative --quiet-dhcp 2>/dev/null &
pids+=($!); dpid=$!
sleep 1
read -r d_rate d_drop < <(perf)
kill "$dpid"; wait "$dpid" 2>/dev/null || true

# Kea
cat > "$work/kea.json" <<JSON
{"Dhcp4": {"interfaces-config": {"interfaces": ["vs0"]},
  "lease-database": {"type": "memfile", "persist": true, "name": "$work/kea.leases"},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.99.0.0/16", "pools": [{"pool": "10.99.1.0 - 10.99.255.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "ERROR", "output_options": [{"output": "stderr"}]}]}}
JSON
ip netns exec "$NS_S" env KEA_PIDFILE_DIR="$work" KEA_LOCKFILE_DIR="$work" kea-dhcp4 -c "$work/kea.json" 2>"$work/kea.log" &
pids+=($!); kpid=$!
sleep 2
read -r k_rate k_drop < <(perf)
kill "$kpid"; wait "$kpid" 2>/dev/null || true

echo
echo "### DHCP (perfdhcp -r $RATE for $SECS s, 60000 clients, DORA)"
echo
echo "| server | 4-way exchanges/s | DISCOVER drops | ratio Plinth/peer |"
echo "| --- | --- | --- | --- |"
row "Plinth (lease fsynced before ACK)" "$p_rate" "$p_drop %" "—"
row "dnsmasq" "$d_rate" "$d_drop %" "$(awk -v a="$p_rate" -v b="$d_rate" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "?" }')"
row "Kea (memfile)" "$k_rate" "$k_drop %" "$(awk -v a="$p_rate" -v b="$k_rate" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "?" }')"

# ---------------------------------------------------------------- TFTP
files=$work/files; mkdir -p "$files"
head -c 50000000 /dev/urandom > "$files/big.bin"
head -c 5000000 /dev/urandom > "$files/mid.bin"
chmod -R a+rX "$work"
env PLINTH_ADMIN_PASSWORD=bench-password PLINTH_LOG=warn "$PLINTH" serve --data-dir "$work/plinth2" --api-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:18091 --tftp-addr 127.0.0.1:16969 --tftp-per-client 100 --dhcp-port off --file-root "$files" &
pids+=($!)
in.tftpd -L -a 127.0.0.1:16970 -s "$files" -u root &
pids+=($!)
sleep 2

one() { # port opts... -> seconds for big.bin
  local port=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  atftp --get -r big.bin -l "$work/out.big" "$@" 127.0.0.1 "$port" >/dev/null 2>&1
  t1=$(date +%s.%N)
  cmp -s "$work/out.big" "$files/big.bin" || { echo "corrupt transfer" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}'
}
many() { # port opts... -> seconds for 100 concurrent mid.bin
  local port=$1; shift
  local t0 t1 ps=()
  t0=$(date +%s.%N)
  for i in $(seq 1 100); do
    atftp --get -r mid.bin -l "$work/out.$i" "$@" 127.0.0.1 "$port" >/dev/null 2>&1 &
    ps+=($!)
  done
  for p in "${ps[@]}"; do wait "$p"; done
  t1=$(date +%s.%N)
  for i in $(seq 1 100); do cmp -s "$work/out.$i" "$files/mid.bin" || { echo "corrupt transfer $i" >&2; exit 1; }; done
  rm -f "$work"/out.*
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}'
}
mbps() { awk -v s="$1" -v b="$2" 'BEGIN{ printf "%.1f MB/s", b/1e6/s }'; }
p1=$(one 16969 --option "blksize 1468"); h1=$(one 16970 --option "blksize 1468")
p0=$(one 16969); h0=$(one 16970)
pw=$(one 16969 --option "blksize 1468" --option "windowsize 16")
pm=$(many 16969 --option "blksize 1468"); hm=$(many 16970 --option "blksize 1468")
echo
echo "### TFTP (atftp client, loopback)"
echo
echo "| transfer | Plinth | tftpd-hpa | ratio Plinth/peer (time) |"
echo "| --- | --- | --- | --- |"
row "50 MB, blksize 512" "${p0} s ($(mbps "$p0" 50000000))" "${h0} s ($(mbps "$h0" 50000000))" "$(awk -v a="$p0" -v b="$h0" 'BEGIN{printf "%.2f", a/b}')"
row "50 MB, blksize 1468" "${p1} s ($(mbps "$p1" 50000000))" "${h1} s ($(mbps "$h1" 50000000))" "$(awk -v a="$p1" -v b="$h1" 'BEGIN{printf "%.2f", a/b}')"
row "50 MB, blksize 1468, windowsize 16" "${pw} s ($(mbps "$pw" 50000000))" "not supported" "—"
row "100 × 5 MB concurrent, blksize 1468" "${pm} s ($(mbps "$pm" 500000000))" "${hm} s ($(mbps "$hm" 500000000))" "$(awk -v a="$pm" -v b="$hm" 'BEGIN{printf "%.2f", a/b}')"

# ---------------------------------------------------------------- HTTP
head -c 200000000 /dev/urandom > "$files/large.bin"
head -c 4096 /dev/urandom > "$files/small.bin"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:18080; location /files/ { alias $files/; } }
}
CONF
nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
sleep 1
wrk_run() { wrk -t2 -c"$2" -d"${SECS}s" "$1" 2>/dev/null | awk '/Requests\/sec/{r=$2} /Transfer\/sec/{t=$2} END{print r, t}'; }
read -r pl_r pl_t < <(wrk_run http://127.0.0.1:18091/files/large.bin 4)
read -r ng_r ng_t < <(wrk_run http://127.0.0.1:18080/files/large.bin 4)
read -r ps_r ps_t < <(wrk_run http://127.0.0.1:18091/files/small.bin 32)
read -r ns_r ns_t < <(wrk_run http://127.0.0.1:18080/files/small.bin 32)
echo
echo "### HTTP (wrk, 2 threads, loopback)"
echo
echo "| load | Plinth | nginx | ratio Plinth/peer |"
echo "| --- | --- | --- | --- |"
row "200 MB file, 4 connections" "$pl_t/s ($pl_r req/s)" "$ng_t/s ($ng_r req/s)" "$(awk -v a="$pl_r" -v b="$ng_r" 'BEGIN{printf "%.2f", a/b}')"
row "4 KB file, 32 connections" "$ps_r req/s" "$ns_r req/s" "$(awk -v a="$ps_r" -v b="$ns_r" 'BEGIN{printf "%.2f", a/b}')"

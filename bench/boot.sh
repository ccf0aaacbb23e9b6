#!/usr/bin/env bash
# Boot-services benchmark: Plinth against the reference peers, same machine,
# same run. Not a test; prints a Markdown table for docs/benchmarks.md.
#   DHCP: the knee sweep: 4-way exchanges/s and exchanges lost at each
#         offered rate, Plinth against Kea (memfile, 2 threads), each server
#         fresh and alone in a network namespace this script creates; once with
#         perfdhcp (RATES) and once with dhcpload (DHCPLOAD_RATES, server and
#         generator on a core each); LOADGENS picks them.
#   TFTP: one 50 MB file, and 100 concurrent 5 MB transfers from 100 clients
#         (a namespace and an address each), vs tftpd-hpa.
#   HTTP: large-file throughput and small-file requests/s with wrk vs nginx (loopback).
# ONLY picks sections (default "dhcp tftp http"); SECS, CLIENTS, RATES tune the sweep.
# Needs root, iproute2, kea-admin (perfdhcp), kea-dhcp4-server, tftpd-hpa,
# atftp, nginx-light, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
cargo build --release -q -p plinth-dhcp --example dhcpload
PLINTH=$PWD/target/release/plinth
DHCPLOAD=$PWD/target/release/examples/dhcpload
work=$(mktemp -d)
chmod 755 "$work"  # nginx's workers (www-data) read the files under it
pids=()
nets=()
NS_S=plt-bench-s-$$
NS_C=plt-bench-c-$$
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Servers started from subshells are not in pids: whatever still runs in
  # this script's own namespaces is stopped by its PID.
  for n in "$NS_S" "$NS_C" "${nets[@]}"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  done
  sleep 0.5
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_C" 2>/dev/null || true
  for n in "${nets[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-150000}
RATES=${RATES:-2000 4000 6000 8000 10000 12000 16000 24000}
# The sweep runs once per load generator: perfdhcp (Kea's), then
# dhcpload (crates/dhcp/examples/dhcpload.rs), which costs a fraction of
# perfdhcp's CPU per exchange, so the servers and not the generator set the
# knee. dhcpload runs with the server on core 0 and itself on core 1.
LOADGENS=${LOADGENS:-perfdhcp dhcpload}
DHCPLOAD_RATES=${DHCPLOAD_RATES:-2000 4000 6000 8000 9000 10000 11000 12000 13000 14000 15000 16000 20000 30000 45000}
ONLY=${ONLY:-dhcp tftp http}  # sections to run
# Load generators and the server share the machine's cores, as they would
# a host under a storm: the server that needs less CPU per exchange leaves
# more to the generators and reaches a higher rate. PIN_SERVER/PIN_CLIENT
# (e.g. "taskset -c 1") pin them instead.
GENERATORS=${GENERATORS:-2}
PIN_SERVER=${PIN_SERVER:-}
PIN_CLIENT=${PIN_CLIENT:-}
PERF_OPTS=${PERF_OPTS:-}  # more perfdhcp options, e.g. "-g single"

row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }

# ---------------------------------------------------------------- DHCP
# The knee sweep: each server, fresh, at each offered rate; the knee is the
# highest offered rate with under 1 % of exchanges lost.
dhcp_sweep() {
ip netns add "$NS_S"; ip netns add "$NS_C"
ip link add vs0 netns "$NS_S" type veth peer name vc0 netns "$NS_C"
ip -n "$NS_S" link set lo up; ip -n "$NS_C" link set lo up
ip -n "$NS_S" link set vs0 up; ip -n "$NS_C" link set vc0 up
ip -n "$NS_S" addr add 10.99.0.1/10 dev vs0
for i in $(seq 1 "$GENERATORS"); do  # perfdhcp needs an address to send from
  ip -n "$NS_C" addr add "10.99.0.$((i + 1))/10" dev vc0
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system ticks
perf() { # rate server-pid -> "exchanges/s lost% cpu-ms-per-1000" (lost: DISCOVERs sent that got no ACK)
  # $GENERATORS perfdhcp processes share the offered rate, each from an
  # address and a MAC range of its own; dhcpload is one process.
  local c0 c1 i pids_p=()
  c0=$(cpu "$2")
  if [ "$LOADGEN" = dhcpload ]; then
    local line per=?
    # Every exchange a client of its own (new leases, never renewals).
    local clients=$(($1 * SECS > CLIENTS ? $1 * SECS : CLIENTS))
    line=$(ip netns exec "$NS_C" timeout $((SECS + 30)) $PIN_CLIENT "$DHCPLOAD" 10.99.0.2 10.99.0.1 "$1" "$SECS" "$clients" 02:00:01 | tail -1)
    c1=$(cpu "$2")
    # "discovers D offers O acks A lost L% rate R"
    read -r _ _ _ _ _ acks _ lost _ rate <<<"$line"
    [ "${acks:-0}" -gt 0 ] && per=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v a="$acks" 'BEGIN{printf "%.0f", 1e6*t/hz/a}')
    printf '%s %s %s\n' "${rate:-0}" "${lost%\%}" "$per"
    return
  fi
  for i in $(seq 1 "$GENERATORS"); do
    ip netns exec "$NS_C" timeout $((SECS + 30)) $PIN_CLIENT perfdhcp $PERF_OPTS -4 -l "10.99.0.$((i + 1))" \
      -b "mac=02:00:0$i:00:00:00" -r $(($1 / GENERATORS)) -R $((CLIENTS / GENERATORS)) -p "$SECS" 10.99.0.1 >"$work/perf.$i" 2>&1 &
    pids_p+=($!)
  done
  for i in "${pids_p[@]}"; do wait "$i" || true; done
  c1=$(cpu "$2")
  local rate=0 sent=0 acks=0 out r d a
  for i in $(seq 1 "$GENERATORS"); do
    out=$(cat "$work/perf.$i")
    r=$(sed -n 's/^Rate: \([0-9.]*\) 4-way exchanges\/second.*/\1/p' <<<"$out" | head -1)
    d=$(awk '/DISCOVER-OFFER/{f=1} f && /sent packets:/{print $3; exit}' <<<"$out")
    a=$(awk '/REQUEST-ACK/{f=1} f && /received packets:/{print $3; exit}' <<<"$out")
    rate=$(awk -v x="$rate" -v y="${r:-0}" 'BEGIN{print x + y}')
    sent=$((sent + ${d:-0})); acks=$((acks + ${a:-0}))
  done
  local pct="?" per=?
  if [ "$sent" -gt 0 ]; then pct=$(awk -v a="$acks" -v s="$sent" 'BEGIN{printf "%.1f", 100*(s-a)/s}'); fi
  [ "$acks" -gt 0 ] && per=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v a="$acks" 'BEGIN{printf "%.0f", 1e6*t/hz/a}')
  printf '%.0f %s %s\n' "$rate" "$pct" "$per"
}
ready() { # waits until the server in $NS_S completes exchanges (at most 10 s)
  local i
  for i in $(seq 10); do
    ip netns exec "$NS_C" timeout 5 perfdhcp -4 -l 10.99.0.2 -b mac=02:ff:00:00:00:00 -r 20 -R 20 -p 1 10.99.0.1 2>&1 \
      | grep -q '^Rate: [1-9]' && return 0
  done
  echo "the DHCP server did not answer within 10 s" >&2
  return 1
}
plinth_rate() { # rate -> line of perf on a fresh Plinth
  local dir=$work/plinth-$1
  ip netns exec "$NS_S" env PLINTH_ADMIN_PASSWORD=bench-password PLINTH_LOG=warn $PIN_SERVER "$PLINTH" serve --data-dir "$dir" \
    --api-addr 127.0.0.1:18092 --http-addr off --tftp-addr off 2>"$work/plinth.log" &
  local ppid=$!
  pids+=("$ppid")
  for _ in $(seq 50); do [ -f "$dir/tls/ca.pem" ] && break; sleep 0.2; done
  sleep 1
  cli() { ip netns exec "$NS_S" env PLINTH_ENDPOINT=https://127.0.0.1:18092 PLINTH_CA_CERT="$dir/tls/ca.pem" PLINTH_CONFIG="$work/cli.json" "$PLINTH" "$@"; }
  echo bench-password | cli login --password-stdin >/dev/null
  cli subnets create --data '{"name":"bench","cidr":"10.64.0.0/10","range_start":"10.100.0.0","range_end":"10.127.255.254","interface":"vs0","lease_secs":3600,"unknown_share":100}' >/dev/null
  ready || true
  perf "$1" "$ppid"
  [ "${KEEP_LOG:-}" ] && cp "$work/plinth.log" "/tmp/plinth-bench-$1.log"
  kill "$ppid" 2>/dev/null || { echo "plinth died during the DHCP run:" >&2; tail -20 "$work/plinth.log" >&2; }
  wait "$ppid" 2>/dev/null || true
  rm -rf "$dir"
}
kea_rate() { # rate -> line of perf on a fresh Kea
  rm -f "$work/kea.leases"*
  cat > "$work/kea.json" <<JSON
{"Dhcp4": {"interfaces-config": {"interfaces": ["vs0"]},
  "lease-database": {"type": "memfile", "persist": true, "name": "$work/kea.leases"},
  "valid-lifetime": 3600,
  "multi-threading": {"enable-multi-threading": true, "thread-pool-size": 2, "packet-queue-size": 64},
  "subnet4": [{"id": 1, "subnet": "10.64.0.0/10", "pools": [{"pool": "10.100.0.0 - 10.127.255.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "stderr"}]}]}}
JSON
  local kpid try
  for try in 1 2 3; do
    ip netns exec "$NS_S" env KEA_PIDFILE_DIR="$work" KEA_LOCKFILE_DIR="$work" $PIN_SERVER kea-dhcp4 -c "$work/kea.json" >"$work/kea.log" 2>&1 &
    kpid=$!
    pids+=("$kpid")
    # Kea 2.2 now and then starts and answers nothing here (nothing in its
    # log at WARN); a restart cures it.
    ready && break
    echo "kea: restart $try" >&2
    kill "$kpid"; wait "$kpid" 2>/dev/null || true
    rm -f "$work"/*.pid "$work/kea.leases"*
  done
  local line
  line=$(perf "$1" "$kpid")
  echo "$line"
  [ "${line%% *}" = 0 ] && { echo "kea answered nothing at $1/s:" >&2; cat "$work/kea.log" >&2; }
  kill "$kpid"; wait "$kpid" 2>/dev/null || true
  rm -f "$work"/*.pid
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "?" }'; }

local user_pin_server=$PIN_SERVER user_pin_client=$PIN_CLIENT
for LOADGEN in $LOADGENS; do
local rates=$RATES
PIN_SERVER=$user_pin_server; PIN_CLIENT=$user_pin_client
if [ "$LOADGEN" = dhcpload ]; then
  rates=$DHCPLOAD_RATES
  PIN_SERVER=${DHCPLOAD_PIN_SERVER:-taskset -c 0}; PIN_CLIENT=${DHCPLOAD_PIN_CLIENT:-taskset -c 1}
fi
echo
echo "### DHCP knee sweep ($LOADGEN, $CLIENTS clients, $SECS s per rate, DORA; lost = DISCOVERs without an ACK)"
echo
echo "| offered/s | Plinth exchanges/s | Plinth lost | Plinth CPU ms per 1000 | Kea exchanges/s | Kea lost | Kea CPU ms per 1000 | ratio Plinth/Kea |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
local p_knee=0 k_knee=0 p_knee_rate=0 k_knee_rate=0
for r in $rates; do
  read -r pr pd pc < <(plinth_rate "$r")
  read -r kr kd kc < <(kea_rate "$r")
  printf '| %s | %s | %s %% | %s | %s | %s %% | %s | %s |\n' "$r" "$pr" "$pd" "$pc" "$kr" "$kd" "$kc" "$(ratio "$pr" "$kr")"
  if awk -v d="$pd" 'BEGIN{exit !(d != "?" && d < 1)}'; then p_knee=$r; p_knee_rate=$pr; fi
  if awk -v d="$kd" 'BEGIN{exit !(d != "?" && d < 1)}'; then k_knee=$r; k_knee_rate=$kr; fi
done
echo
echo "Knee (highest offered rate with under 1 % lost): Plinth $p_knee/s ($p_knee_rate achieved), Kea $k_knee/s ($k_knee_rate achieved), ratio $(ratio "$p_knee" "$k_knee")."
done
ip netns del "$NS_S"; ip netns del "$NS_C"
}

# ---------------------------------------------------------------- TFTP
# Both servers in one namespace on a bridge; each of the 100 concurrent
# clients is a machine of its own (a namespace with its own address), as on
# a provisioning network, so no per-client limit is in play.
tftp_bench() {
local NS_T=plt-bench-t-$$
ip netns add "$NS_T"
nets+=("$NS_T")
ip -n "$NS_T" link set lo up
ip -n "$NS_T" link add br0 type bridge
ip -n "$NS_T" addr add 10.98.0.1/16 dev br0
ip -n "$NS_T" link set br0 up
for i in $(seq 1 100); do
  local ns=$NS_T-$i
  ip netns add "$ns"; nets+=("$ns")
  ip -n "$ns" link set lo up
  ip link add "pb$i" netns "$NS_T" type veth peer name eth0 netns "$ns"
  ip -n "$NS_T" link set "pb$i" master br0 up
  ip -n "$ns" addr add "10.98.1.$i/16" dev eth0
  ip -n "$ns" link set eth0 up
done
files=$work/files; mkdir -p "$files"
head -c 50000000 /dev/urandom > "$files/big.bin"
head -c 5000000 /dev/urandom > "$files/mid.bin"
chmod -R a+rX "$work"
ip netns exec "$NS_T" env PLINTH_ADMIN_PASSWORD=bench-password PLINTH_LOG=warn "$PLINTH" serve --data-dir "$work/plinth2" --api-addr 127.0.0.1:0 \
  --http-addr off --tftp-addr 10.98.0.1:16969 --dhcp-port off --file-root "$files" &
pids+=($!)
ip netns exec "$NS_T" in.tftpd -L -a 10.98.0.1:16970 -s "$files" -u root &
pids+=($!)
sleep 2

one() { # port opts... -> seconds for big.bin
  local port=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  ip netns exec "$NS_T-1" atftp --get -r big.bin -l "$work/out.big" "$@" 10.98.0.1 "$port" >/dev/null 2>&1
  t1=$(date +%s.%N)
  cmp -s "$work/out.big" "$files/big.bin" || { echo "corrupt transfer" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}'
}
many() { # port opts... -> seconds for 100 concurrent mid.bin, one per client
  local port=$1; shift
  local t0 t1 ps=()
  t0=$(date +%s.%N)
  for i in $(seq 1 100); do
    ip netns exec "$NS_T-$i" atftp --get -r mid.bin -l "$work/out.$i" "$@" 10.98.0.1 "$port" >/dev/null 2>&1 &
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
echo "### TFTP (atftp clients, each in a namespace of its own on one bridge)"
echo
echo "| transfer | Plinth | tftpd-hpa | ratio Plinth/peer (time) |"
echo "| --- | --- | --- | --- |"
row "50 MB, blksize 512" "${p0} s ($(mbps "$p0" 50000000))" "${h0} s ($(mbps "$h0" 50000000))" "$(awk -v a="$p0" -v b="$h0" 'BEGIN{printf "%.2f", a/b}')"
row "50 MB, blksize 1468" "${p1} s ($(mbps "$p1" 50000000))" "${h1} s ($(mbps "$h1" 50000000))" "$(awk -v a="$p1" -v b="$h1" 'BEGIN{printf "%.2f", a/b}')"
row "50 MB, blksize 1468, windowsize 16" "${pw} s ($(mbps "$pw" 50000000))" "not supported" "—"
row "100 × 5 MB concurrent, blksize 1468" "${pm} s ($(mbps "$pm" 500000000))" "${hm} s ($(mbps "$hm" 500000000))" "$(awk -v a="$pm" -v b="$hm" 'BEGIN{printf "%.2f", a/b}')"
}

# ---------------------------------------------------------------- HTTP
http_bench() {
files=$work/files; mkdir -p "$files"
env PLINTH_ADMIN_PASSWORD=bench-password PLINTH_LOG=warn "$PLINTH" serve --data-dir "$work/plinth3" --api-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:18091 --tftp-addr off --dhcp-port off --file-root "$files" &
pids+=($!)
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
# Both answer the files whole before anything is timed.
for port in 18091 18080; do
  for f in large.bin small.bin; do
    want="200 $(stat -c %s "$files/$f")"
    for _ in $(seq 50); do
      got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port/files/$f" || true)
      [ "$got" = "$want" ] && break
      sleep 0.2
    done
    [ "$got" = "$want" ] || { echo "http bench: port $port answers $got for $f, not $want" >&2; exit 1; }
  done
done
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
}

for section in $ONLY; do
  case $section in
    dhcp) dhcp_sweep ;;
    tftp) tftp_bench ;;
    http) http_bench ;;
    *) echo "unknown section $section (dhcp, tftp, http)" >&2; exit 2 ;;
  esac
done

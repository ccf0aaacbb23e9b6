#!/usr/bin/env bash
# Power-status benchmark: Plinth reading N IPMI BMCs with bounded
# concurrency against ipmitool in a shell loop over the same BMCs, same
# machine, same run. Not a test; prints a Markdown table for
# docs/benchmarks.md.
#   N OpenIPMI simulators (ipmi_sim), each its own BMC on its own UDP port,
#   all on the loopback of a network namespace this script creates (and
#   removes), with Plinth's server in the same namespace.
#   Plinth: `plinth machines power status --filter profiles=bench
#           --concurrency C` (the server runs at most --power-concurrency C
#           ipmitool calls at once); wall time, and CPU of the server (its
#           ipmitool children included) and the CLI.
#   Peer:   ipmitool over the same BMCs, one after another, and C at a time
#           (xargs -P C); wall time and CPU.
# Needs root, iproute2, openipmi (ipmi_sim), ipmitool. Background processes
# are started with `ip netns exec` itself (which execs), so $! is their PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}
C=${C:-16}
cargo build --release -q -p plinth --bin plinth
PLINTH=$PWD/target/release/plinth
work=$(mktemp -d)
NS=plt-bench-pw-$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }
PASSWORD=bench-bmc-pw
BASE=16000

# N simulators.
printf 'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n' > "$work/x.emu"
for i in $(seq 0 $((N - 1))); do
  d=$work/bmc$i
  mkdir -p "$d/state"
  cat > "$d/lan.conf" <<CONF
name "b$i"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $((BASE + i))
    priv_limit admin
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789ab$(printf '%04x' "$i")
  endlan
  user 2 true "admin" "$PASSWORD" admin 10 none md2 md5 straight
CONF
  ip netns exec "$NS" timeout 3600 ipmi_sim -c "$d/lan.conf" -f "$work/x.emu" -s "$d/state" -n </dev/null >/dev/null 2>"$d/sim.log" &
  pids+=($!)
done
sleep 2

# Plinth, and N machines with those BMCs.
ip netns exec "$NS" env PLINTH_ADMIN_PASSWORD=bench-password PLINTH_LOG=warn "$PLINTH" serve --data-dir "$work/plinth" \
  --api-addr 127.0.0.1:18092 --http-addr off --tftp-addr off --dhcp-port off --power-poll 0 \
  --power-concurrency "$C" 2>"$work/plinth.log" &
pids+=($!); server=$!
sleep 2
cli() { in_ns env PLINTH_ENDPOINT=https://127.0.0.1:18092 PLINTH_CA_CERT="$work/plinth/tls/ca.pem" PLINTH_CONFIG="$work/cli.json" "$PLINTH" "$@"; }
echo bench-password | cli login --password-stdin >/dev/null
cli profiles create --data '{"name":"bench"}' >/dev/null
for i in $(seq 0 $((N - 1))); do
  mac=$(printf '52:54:00:fe:%02x:%02x' $((i / 256)) $((i % 256)))
  cli machines create --data "{\"name\":\"bmc-$i\",\"macs\":[\"$mac\"],\"profiles\":[\"bench\"],\"bmc\":{\"driver\":\"ipmi\",\"address\":\"127.0.0.1:$((BASE + i))\",\"username\":\"admin\",\"password\":\"$PASSWORD\"}}" >/dev/null
done

# CPU seconds of a process and its reaped children (utime+stime+cutime+cstime).
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14+$15+$16+$17)/hz }' "/proc/$1/stat"; }
now() { date +%s.%N; }

# Plinth: one warm-up pass, then the measured one.
cli machines power status --filter profiles=bench --concurrency "$C" -o json >/dev/null || true
before=$(cpu "$server"); t0=$(now)
/usr/bin/time -f '%U %S' -o "$work/cli.time" env PLINTH_ENDPOINT=https://127.0.0.1:18092 PLINTH_CA_CERT="$work/plinth/tls/ca.pem" \
  PLINTH_CONFIG="$work/cli.json" ip netns exec "$NS" "$PLINTH" machines power status --filter profiles=bench --concurrency "$C" -o json > "$work/plinth.json"
t1=$(now); after=$(cpu "$server")
p_wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
p_cpu=$(awk -v a="$before" -v b="$after" -v c="$(cat "$work/cli.time")" 'BEGIN{split(c,x," "); printf "%.2f", b-a+x[1]+x[2]}')
p_on=$(grep -Eo '"state": *"(on|off)"' "$work/plinth.json" | wc -l || true)
p_fail=$(grep -Eo '"result": *"failed"' "$work/plinth.json" | wc -l || true)

# ipmitool over the same BMCs.
one() { IPMI_PASSWORD=$PASSWORD ipmitool -I lanplus -H 127.0.0.1 -p "$1" -U admin -E -C 3 -N 2 -R 2 chassis power status; }
export -f one; export PASSWORD
seq $BASE $((BASE + N - 1)) > "$work/ports"
/usr/bin/time -f '%e %U %S' -o "$work/seq.time" ip netns exec "$NS" bash -c 'while read -r p; do one "$p"; done < "$0"' "$work/ports" > "$work/seq.out"
/usr/bin/time -f '%e %U %S' -o "$work/par.time" ip netns exec "$NS" bash -c "xargs -P $C -I{} bash -c 'one {}' < \"\$0\"" "$work/ports" > "$work/par.out"
read -r s_wall s_u s_s < "$work/seq.time"
read -r x_wall x_u x_s < "$work/par.time"
s_on=$(grep -c '^Chassis Power is' "$work/seq.out" || true)
x_on=$(grep -c '^Chassis Power is' "$work/par.out" || true)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "?" }'; }
echo
echo "| $N BMCs | wall | CPU | read | Plinth's wall ÷ this |"
echo "| --- | --- | --- | --- | --- |"
echo "| Plinth, $C at a time (\`machines power status --filter\`) | ${p_wall} s | ${p_cpu} s | $p_on ($p_fail failed) | 1 |"
echo "| ipmitool, shell loop, one at a time | ${s_wall} s | $(awk -v u="$s_u" -v s="$s_s" 'BEGIN{printf "%.2f", u+s}') s | $s_on | $(ratio "$p_wall" "$s_wall") |"
echo "| ipmitool, \`xargs -P $C\` | ${x_wall} s | $(awk -v u="$x_u" -v s="$x_s" 'BEGIN{printf "%.2f", u+s}') s | $x_on | $(ratio "$p_wall" "$x_wall") |"

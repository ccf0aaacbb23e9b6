# Shared by the VM benchmarks (bench/image.sh, bench/installer.sh); sourced,
# not run. `lab_up NET PLINTH [serve flags...]` creates the network
# namespace $NS with bridge br0 at NET.1/24 and tap0 for the guest, starts
# Plinth's server in it (its DHCP socket, 0.0.0.0:67, exists only inside
# $NS, answering on br0: never on this machine's own interfaces), logs the
# `cli` function in and installs the iPXE loaders. The EXIT trap stops what
# it started, by PID, and removes the namespace and $work.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The server drains its connections on SIGTERM; past 5 s it is killed.
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }
lab_up() {
  local net=$1 plinth=$2
  shift 2
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip -n "$NS" link add br0 type bridge
  ip -n "$NS" addr add "$net.1/24" dev br0
  ip -n "$NS" link set br0 up
  ip -n "$NS" tuntap add tap0 mode tap
  ip -n "$NS" link set tap0 master br0
  ip -n "$NS" link set tap0 up
  # Started with `ip netns exec` itself (it execs), not a shell function, so
  # that $! is the server's own PID.
  ip netns exec "$NS" env PLINTH_ADMIN_PASSWORD=bench-password PLINTH_LOG=warn "$plinth" serve --data-dir "$work/plinth" \
    --api-addr "$net.1:18092" --http-addr "$net.1:18091" --tftp-addr "$net.1:69" --power-poll 0 "$@" \
    > "$work/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do [ -f "$work/plinth/tls/ca.pem" ] && break; sleep 0.1; done
  sleep 1
  LAB_API=https://$net.1:18092
  LAB_PLINTH=$plinth
  echo bench-password | cli login --password-stdin >/dev/null
  files=$work/plinth/files
  "$plinth" bootloaders install --file-root "$files" >/dev/null
}
cli() { in_ns env PLINTH_ENDPOINT="$LAB_API" PLINTH_CA_CERT="$work/plinth/tls/ca.pem" PLINTH_CONFIG="$work/cli.json" "$LAB_PLINTH" "$@"; }

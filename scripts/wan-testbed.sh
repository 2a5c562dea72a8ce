#!/usr/bin/env bash
# The WAN testbed (docs/wan.md): each node of a devnet in its own Linux network namespace, its
# only interface a TUN device held by `wan-relay`, which carries every packet between nodes with
# the delay, jitter, loss and link rate of a profile (testbed/profiles/PROFILE.toml). Needs root.
#
#   scripts/wan-testbed.sh PROFILE probe              # only measure the profile: RTT, loss, rate
#   scripts/wan-testbed.sh PROFILE devnet [ARGS...]   # probe, then `trellis devnet ARGS` across it
#
# Everything it creates (namespaces TWAN-ns<i>, devices TWAN<i> and TWANc, the host's route to
# 10.77.0.0/24, the relay and the devnet) is removed on exit, also on error or Ctrl-C. Traffic
# stays inside the namespaces and the relay: nodes listen on 10.77.0.<i+1>, the host reaches them
# as 10.77.0.254 (unshaped, for the devnet's monitor and RPC).
#
# Environment: TRELLIS (the trellis binary, default target/release/trellis), WAN_RELAY (default
# next to it), WAN_DIR (logs and the devnet's home, default /tmp/trellis-wan-PROFILE),
# WAN_PREFIX (names, default twan), WAN_SEED (the relay's loss and jitter draws, default 1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
profile_name=$1
mode=$2
shift 2
profile=$profile_name
[ -f "$profile" ] || profile="$root/testbed/profiles/$profile_name.toml"
if [ ! -f "$profile" ]; then
  echo "wan-testbed: no profile $profile_name (testbed/profiles has: $(cd "$root/testbed/profiles" && ls | sed 's/\.toml$//' | tr '\n' ' '))" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "wan-testbed: needs root (network namespaces and TUN devices)" >&2
  exit 2
fi
target=${CARGO_TARGET_DIR:-$root/target}
trellis=${TRELLIS:-$target/release/trellis}
relay=${WAN_RELAY:-$(dirname "$trellis")/wan-relay}
for binary in "$relay" $([ "$mode" = devnet ] && echo "$trellis"); do
  if [ ! -x "$binary" ]; then
    echo "wan-testbed: $binary is missing (cargo build --release -p trellis-testbed -p trellis-node, or set TRELLIS / WAN_RELAY)" >&2
    exit 2
  fi
done
prefix=${WAN_PREFIX:-twan}
dir=${WAN_DIR:-/tmp/trellis-wan-$(basename "$profile" .toml)}
mkdir -p "$dir"
nodes=$(grep -c '^\[\[nodes\]\]' "$profile")

relay_pid=""
devnet_pid=""
cleanup() {
  set +e
  # A second Ctrl-C or TERM (from a wrapper like `timeout` and from its caller) must not cut the
  # cleanup short.
  trap '' INT TERM
  if [ -n "$devnet_pid" ] && kill -0 "$devnet_pid" 2>/dev/null; then
    kill -TERM "$devnet_pid"
    for _ in $(seq 50); do kill -0 "$devnet_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$devnet_pid" 2>/dev/null
  fi
  # Probes and nodes still inside a namespace.
  for i in $(seq 0 $((nodes - 1))); do
    for pid in $(ip netns pids "$prefix-ns$i" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$prefix-ns$i" 2>/dev/null
  done
  [ -n "$relay_pid" ] && kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
  ip link del "${prefix}c" 2>/dev/null
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A namespace left by a run that was killed hard.
for i in $(seq 0 $((nodes - 1))); do ip netns del "$prefix-ns$i" 2>/dev/null || true; done

"$relay" serve --profile "$profile" --prefix "$prefix" --seed "${WAN_SEED:-1}" >"$dir/relay.out" 2>"$dir/relay.log" &
relay_pid=$!
for _ in $(seq 100); do
  grep -q '^ready' "$dir/relay.out" 2>/dev/null && break
  kill -0 "$relay_pid" 2>/dev/null || { cat "$dir/relay.log" >&2; exit 1; }
  sleep 0.05
done
grep -q '^ready' "$dir/relay.out" || { echo "wan-testbed: the relay did not start" >&2; exit 1; }

for i in $(seq 0 $((nodes - 1))); do
  ns="$prefix-ns$i"
  ip netns add "$ns"
  ip link set "$prefix$i" netns "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev "$prefix$i"
  ip -n "$ns" link set "$prefix$i" mtu 1500 up
done
ip addr add 10.77.0.254/24 dev "${prefix}c"
ip link set "${prefix}c" mtu 1500 up
echo "wan-testbed: profile $(basename "$profile" .toml), $nodes nodes in namespaces $prefix-ns0..$((nodes - 1)), logs in $dir"

in_ns() { ip netns exec "$prefix-ns$1" "${@:2}"; }

# What the profile says of a pair: RTT, rate (the slower access link), loss, jitter.
expected() { "$relay" expect --profile "$profile" --from "$1" --to "$2"; }

probe() {
  echo
  echo "probe: UDP round trips (50 pings, 20 ms apart), the link rate (20 MB of UDP sent at 1.5× the"
  echo "profile's rate: the receiver sees the bottleneck) and one 10 MB TCP transfer, per pair"
  printf '%4s %4s  %8s %7s  %-62s  %12s  %s\n' from to "rtt (ms)" rate "measured rtt (ms)" "udp rate" "tcp transfer"
  for i in $(seq 0 $((nodes - 1))); do
    in_ns "$i" "$relay" echo --listen "10.77.0.$((i + 1)):7000" >/dev/null 2>&1 &
    in_ns "$i" "$relay" sink --listen "10.77.0.$((i + 1)):7001" >/dev/null 2>&1 &
  done
  sleep 0.3
  # From a validator and from a miner to every other node: every region pair, both directions.
  local sources="0 $((nodes / 2))"
  for a in $sources; do
    for b in $(seq 0 $((nodes - 1))); do
      [ "$a" = "$b" ] && continue
      read -r rtt rate loss jitter < <(expected "$a" "$b")
      ping_line=$(in_ns "$a" "$relay" ping --to "10.77.0.$((b + 1)):7000" --count 50 --interval-ms 20 2>&1 || true)
      in_ns "$b" timeout 120 "$relay" udp-sink --listen "10.77.0.$((b + 1)):7002" >"$dir/udp-sink.out" 2>&1 &
      sink_pid=$!
      sleep 0.2
      in_ns "$a" timeout 120 "$relay" udp-send --to "10.77.0.$((b + 1)):7002" --bytes 20000000 \
        --mbit "$(awk -v r="$rate" 'BEGIN { print r * 1.5 }')" >/dev/null 2>&1 || true
      wait "$sink_pid" || true
      udp_line=$(cat "$dir/udp-sink.out")
      send_line=$(in_ns "$a" timeout 120 "$relay" send --to "10.77.0.$((b + 1)):7001" --bytes 10000000 2>&1 || true)
      printf '%4s %4s  %8s %6sM  %-62s  %12s  %s\n' "$a" "$b" "$rtt" "$rate" "${ping_line#rtt_ms }" \
        "${udp_line##*: }" "${send_line##*: }"
    done
  done | tee "$dir/probe.txt"
  echo "(profile: loss $(expected 0 1 | cut -d' ' -f3), jitter ±$(expected 0 1 | cut -d' ' -f4) ms on each one-way path)"
}

case "$mode" in
  probe)
    probe
    ;;
  devnet)
    probe
    ips=$(for i in $(seq 0 $((nodes - 1))); do printf '10.77.0.%d,' $((i + 1)); done)
    echo
    echo "devnet: $trellis devnet --home $dir/devnet --node-ips ${ips%,} --netns-prefix $prefix-ns $*"
    "$trellis" devnet --home "$dir/devnet" --node-ips "${ips%,}" --netns-prefix "$prefix-ns" "$@" &
    devnet_pid=$!
    status=0
    wait "$devnet_pid" || status=$?
    devnet_pid=""
    tail -n 3 "$dir/relay.log" 2>/dev/null || true
    exit "$status"
    ;;
  *)
    echo "wan-testbed: MODE is probe or devnet, not $mode" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Put throughput and latency of cairn against real etcd (Debian's etcd-server),
# on this machine, in the same run, with the same client (examples/put_bench.rs).
# Each server is a fresh single member with default settings (fsync on).
#   scripts/bench-vs-etcd.sh [TOTAL_PUTS] [VALUE_BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-20000}
value_bytes=${2:-256}
. scripts/cargo-env.sh
scripts/setup-debian.sh
cargo build --release --bin cairn --example put_bench >&2
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_healthy() {
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$1/health" | grep -q '"health":"true"' && return 0
    sleep 0.1
  done
  echo "server on :$1 did not become healthy" >&2; exit 1
}

start_server() { # name binary client_port peer_port
  local name=$1 binary=$2 c=$3 p=$4
  "$binary" --name "$name" --data-dir "$work/$name" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$name=http://127.0.0.1:$p" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_healthy "$c"
}

start_server etcd "$(command -v etcd)" 23791 23801
start_server cairn "$bin/cairn" 23792 23802

printf '%-7s %-7s %10s %9s %9s\n' server clients puts/s p50_ms p99_ms
declare -A rate
for clients in 1 64; do
  n=$total; [ "$clients" = 1 ] && n=$((total / 4))
  for server in etcd:23791 cairn:23792; do
    name=${server%%:*}; port=${server##*:}
    out=$("$bin/examples/put_bench" "127.0.0.1:$port" "$clients" "$n" "$value_bytes")
    r=$(echo "$out" | sed 's/.*"puts_per_sec":\([0-9.]*\).*/\1/')
    p50=$(echo "$out" | sed 's/.*"p50_ms":\([0-9.]*\).*/\1/')
    p99=$(echo "$out" | sed 's/.*"p99_ms":\([0-9.]*\).*/\1/')
    rate[$name-$clients]=$r
    printf '%-7s %-7s %10s %9s %9s\n' "$name" "$clients" "$r" "$p50" "$p99"
  done
  awk -v c="${rate[cairn-$clients]}" -v e="${rate[etcd-$clients]}" -v n="$clients" \
    'BEGIN { printf "ratio cairn/etcd at %s client(s): %.2fx\n", n, c / e }'
done

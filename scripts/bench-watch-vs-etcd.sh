#!/usr/bin/env bash
# Put-to-event latency with many watchers, cairn against real etcd (Debian's
# etcd-server) on this machine, in the same run, with the same client
# (examples/watch_bench.rs). One member each, default settings, one after
# the other.
#   scripts/bench-watch-vs-etcd.sh [WATCHERS] [PUTS] [VALUE_BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
watchers=${1:-100}
puts=${2:-2000}
value_bytes=${3:-256}
members=1
bench_examples=watch_bench
. scripts/bench-lib.sh

declare -A p50 p99
for kind in etcd cairn; do
  binary=$bin/cairn; [ "$kind" = etcd ] && binary=$(command -v etcd)
  start_cluster "$kind" "$binary" 23800
  out=$("$bin/examples/watch_bench" "127.0.0.1:23810" "$watchers" "$puts" "$value_bytes")
  field() { echo "$out" | sed "s/.*\"$1\":\([0-9.]*\).*/\1/"; }
  p50[$kind]=$(field p50_ms); p99[$kind]=$(field p99_ms)
  stop_all
done

echo "watchers: $watchers, puts: $puts, value: $value_bytes bytes"
printf '%-7s %9s %9s\n' server p50_ms p99_ms
for kind in etcd cairn; do printf '%-7s %9s %9s\n' "$kind" "${p50[$kind]}" "${p99[$kind]}"; done
awk -v c="${p50[cairn]}" -v e="${p50[etcd]}" -v c9="${p99[cairn]}" -v e9="${p99[etcd]}" \
  'BEGIN { printf "latency ratio cairn/etcd (lower is better): p50 %.2fx, p99 %.2fx\n", c / e, c9 / e9 }'

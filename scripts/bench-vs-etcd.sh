#!/usr/bin/env bash
# Put and linearizable get throughput and latency of cairn against real etcd
# (Debian's etcd-server), on this machine, in the same run, with the same client
# (examples/kv_bench.rs).
# Each server is a fresh cluster with default settings (fsync on), measured
# one after the other so they never share the CPUs.
#   scripts/bench-vs-etcd.sh [TOTAL_PUTS] [VALUE_BYTES] [MEMBERS]
# MEMBERS is 1 (default) or 3; the client talks to the leader.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-20000}
value_bytes=${2:-256}
members=${3:-1}
bench_examples=kv_bench
. scripts/bench-lib.sh

declare -A rate p50 p99
for kind in etcd cairn; do
  binary=$bin/cairn; [ "$kind" = etcd ] && binary=$(command -v etcd)
  start_cluster "$kind" "$binary" 23700
  endpoint=$(leader_endpoint 23700)
  for op in put get; do
    for clients in 1 64; do
      n=$total; [ "$clients" = 1 ] && n=$((total / 4))
      out=$("$bin/examples/kv_bench" "$endpoint" "$clients" "$n" "$value_bytes" "$op")
      field() { echo "$out" | sed "s/.*\"$1\":\([0-9.]*\).*/\1/"; }
      run=$kind-$op-$clients
      rate[$run]=$(field per_sec); p50[$run]=$(field p50_ms); p99[$run]=$(field p99_ms)
    done
  done
  stop_all
done

echo "members: $members, value: $value_bytes bytes"
printf '%-5s %-7s %-7s %10s %9s %9s\n' op server clients req/s p50_ms p99_ms
for op in put get; do
  for clients in 1 64; do
    for kind in etcd cairn; do
      run=$kind-$op-$clients
      printf '%-5s %-7s %-7s %10s %9s %9s\n' "$op" "$kind" "$clients" "${rate[$run]}" "${p50[$run]}" "${p99[$run]}"
    done
    awk -v c="${rate[cairn-$op-$clients]}" -v e="${rate[etcd-$op-$clients]}" -v n="$clients" -v op="$op" \
      'BEGIN { printf "ratio cairn/etcd, %s with %s client(s): %.2fx\n", op, n, c / e }'
  done
done

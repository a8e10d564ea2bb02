#!/usr/bin/env bash
# Does defragmentation block requests? For etcd (Debian's etcd-server) and
# then cairn, one fresh member each: KEYS keys of 1 KiB (default 200,000),
# then 64 clients overwriting 20,000 of them, once undisturbed and once while
# `etcdctl defrag` runs back to back; throughput and p99 of each run.
#   scripts/defrag-vs-etcd.sh [KEYS]
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-200000}
members=1
bench_examples=kv_bench
. scripts/bench-lib.sh

overwrite() { "$bin/examples/kv_bench" "$1" 64 20000 1024 put; }

measure() { # kind binary base_port
  start_cluster "$1" "$2" "$3"
  local ep="127.0.0.1:$(($3 + 10))"
  "$bin/examples/kv_bench" "$ep" 64 "$keys" 1024 put >/dev/null
  echo "$1 undisturbed: $(overwrite "$ep")"
  echo "$1 during defrags: $(during_defrags "$ep" overwrite "$ep")"
  stop_all
}

echo "filling $keys keys of 1 KiB into each, then 20,000 overwrites by 64 clients..." >&2
measure etcd "$(command -v etcd)" 25000
measure cairn "$bin/cairn" 26000

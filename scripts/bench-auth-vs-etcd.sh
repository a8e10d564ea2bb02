#!/usr/bin/env bash
# What auth costs: put and get throughput with 64 clients, with auth off and
# with auth on (a non-root user whose role may read and write bench/, so every
# request is checked against its permissions), for cairn and for real etcd
# (Debian's etcd-server), one member each, in the same run with the same
# client (examples/kv_bench.rs).
#   scripts/bench-auth-vs-etcd.sh [TOTAL_REQUESTS] [VALUE_BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-20000}
value_bytes=${2:-256}
members=1
bench_examples=kv_bench
. scripts/bench-lib.sh

endpoint=127.0.0.1:23810
as_root() { ETCDCTL_API=3 etcdctl --endpoints "$endpoint" --user root:rootpw "$@" >/dev/null; }

declare -A rate p99
for kind in etcd cairn; do
  binary=$bin/cairn; [ "$kind" = etcd ] && binary=$(command -v etcd)
  for auth in off on; do
    start_cluster "$kind" "$binary" 23800
    user=()
    if [ "$auth" = on ]; then
      ETCDCTL_API=3 etcdctl --endpoints "$endpoint" user add root:rootpw >/dev/null
      ETCDCTL_API=3 etcdctl --endpoints "$endpoint" auth enable >/dev/null
      as_root role add bench
      as_root role grant-permission bench readwrite bench/ --prefix=true
      as_root user add bench:benchpw
      as_root user grant-role bench bench
      user=(ETCDCTL_USER=bench:benchpw)
    fi
    for op in put get; do
      out=$(env "${user[@]}" "$bin/examples/kv_bench" "http://$endpoint" 64 "$total" "$value_bytes" "$op")
      field() { echo "$out" | sed "s/.*\"$1\":\([0-9.]*\).*/\1/"; }
      rate[$kind-$auth-$op]=$(field per_sec); p99[$kind-$auth-$op]=$(field p99_ms)
    done
    stop_all
  done
done

echo "requests: $total per op with 64 clients, value: $value_bytes bytes, one member"
printf '%-7s %-5s %-4s %10s %9s\n' server auth op req/s p99_ms
for kind in etcd cairn; do
  for auth in off on; do
    for op in put get; do
      printf '%-7s %-5s %-4s %10s %9s\n' "$kind" "$auth" "$op" "${rate[$kind-$auth-$op]}" "${p99[$kind-$auth-$op]}"
    done
  done
done
for op in put get; do
  for kind in etcd cairn; do
    awk -v on="${rate[$kind-on-$op]}" -v off="${rate[$kind-off-$op]}" -v k="$kind" -v op="$op" \
      'BEGIN { printf "%s %s: auth on / off %.2fx\n", k, op, on / off }'
  done
  awk -v c="${rate[cairn-on-$op]}" -v e="${rate[etcd-on-$op]}" -v op="$op" \
    'BEGIN { printf "%s with auth on, cairn / etcd: %.2fx\n", op, c / e }'
done

#!/usr/bin/env bash
# A store of many gigabytes: fills one member with KEYS keys of 1 KiB
# (default 2,000,000: about 2 GiB), then
#  1. `member add` and a second member started on an empty data dir, which
#     can only catch up by snapshot (the log is purged): the time until it
#     holds the leader's revision, and the peak memory (VmHWM) of both (the
#     leader's counted from the member add: what sending the snapshot costs);
#  2. 64 clients overwriting keys, without and then with a compaction of the
#     whole history running: p99 latency of each run;
#  3. the same while `etcdctl defrag` runs again and again.
#   scripts/scale-snapshot.sh [KEYS]
# Takes tens of minutes and several GiB of disk under $TMPDIR. Set
# ETCD_MEMORY_BUDGET_BYTES to run the members with another --memory-budget-bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-2000000}
bench_examples=kv_bench
. scripts/bench-lib.sh
ctl() { ETCDCTL_API=3 etcdctl --endpoints="$1" "${@:2}"; }
revision() { ctl "$1" get x --consistency=s -w json | sed 's/.*"revision":\([0-9]*\).*/\1/'; }
peak_mib() { awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }

"$bin/cairn" --name s1 --data-dir "$work/s1" --snapshot-count 10000 \
  --listen-client-urls http://127.0.0.1:24010 --advertise-client-urls http://127.0.0.1:24010 \
  --listen-peer-urls http://127.0.0.1:24011 --initial-advertise-peer-urls http://127.0.0.1:24011 \
  --initial-cluster s1=http://127.0.0.1:24011 --quota-backend-bytes 8589934592 >"$work/s1.log" 2>&1 &
pids+=($!)
leader_pid=$!
wait_healthy 24010
echo "filling $keys keys of 1 KiB with 64 clients..." >&2
"$bin/examples/kv_bench" 127.0.0.1:24010 64 "$keys" 1024 put >&2
rev=$(revision 127.0.0.1:24010)
echo "leader: revision $rev, $(du -sh "$work/s1" | cut -f1) on disk" >&2

leader_filled_mib=$(awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$leader_pid/status")
echo 5 >"/proc/$leader_pid/clear_refs" # the peak from here on
ctl 127.0.0.1:24010 member add s2 --peer-urls http://127.0.0.1:24021 >/dev/null
start=$(date +%s.%N)
"$bin/cairn" --name s2 --data-dir "$work/s2" --initial-cluster-state existing \
  --listen-client-urls http://127.0.0.1:24020 --advertise-client-urls http://127.0.0.1:24020 \
  --listen-peer-urls http://127.0.0.1:24021 --initial-advertise-peer-urls http://127.0.0.1:24021 \
  --initial-cluster s1=http://127.0.0.1:24011,s2=http://127.0.0.1:24021 --quota-backend-bytes 8589934592 >"$work/s2.log" 2>&1 &
pids+=($!)
joiner_pid=$!
until [ "$(revision 127.0.0.1:24020 2>/dev/null || echo 0)" -ge "$rev" ]; do
  kill -0 "$joiner_pid" || { echo "the new member exited:" >&2; tail "$work/s2.log" >&2; exit 1; }
  sleep 1
done
catch_up=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
grep -q 'installed snapshot from the leader' "$work/s2.log" || { echo "the new member did not catch up by snapshot" >&2; exit 1; }
echo "new member caught up by snapshot in ${catch_up}s; peak RSS: joiner $(peak_mib "$joiner_pid") MiB, leader $(peak_mib "$leader_pid") MiB (${leader_filled_mib} MiB after the fill)"

overwrite() { "$bin/examples/kv_bench" 127.0.0.1:24010 64 200000 1024 put | sed 's/.*"p99_ms":\([0-9.]*\).*/\1/'; }
quiet_p99=$(overwrite)
rev=$(revision 127.0.0.1:24010)
ctl 127.0.0.1:24010 compaction --physical "$rev" >/dev/null &
compaction=$!
busy_p99=$(overwrite)
wait "$compaction"
echo "64 clients overwriting: p99 ${quiet_p99} ms without compaction, ${busy_p99} ms while the whole history (revision $rev) is compacted"

echo "64 clients overwriting, p99 in ms, while defrags run back to back: $(during_defrags 127.0.0.1:24010 overwrite)"

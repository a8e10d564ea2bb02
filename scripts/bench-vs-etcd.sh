#!/usr/bin/env bash
# cairn against real etcd (Debian's etcd-server) on this machine, in the same
# run, three members each on loopback, every request through the leader.
# The request mix is driven by etcd's own load generator, tools/benchmark
# from Debian's etcd source (scripts/build-etcd-benchmark.sh builds it); the
# Kubernetes-shaped part (objects of 1-4 KiB under /registry/pods/, paginated
# LISTs, compaction while writing) by examples/k8s_bench.rs, and a watch
# resumed after a restart by etcdctl.
# The two servers run one after the other, so they never share the CPUs.
# Prints a table of both servers' figures and the ratio cairn/etcd.
#   scripts/bench-vs-etcd.sh [SCALE] [OBJECTS]
# SCALE (default 1) multiplies the request counts; OBJECTS (default 100000)
# is the size of the Kubernetes-shaped data set.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1}
objects=${2:-100000}
updates=10000
members=3
bench_examples=k8s_bench
. scripts/bench-lib.sh
benchmark=$(scripts/build-etcd-benchmark.sh | tail -1)

declare -A result
# Records figure $2 of server $1.
record() { result[$1/$2]=$3; }

# CPU time all members have used, in clock ticks.
members_cpu_ticks() {
  local p t=0
  for p in "${pids[@]}"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}

# etcd's benchmark: "Requests/sec" and the "99% in" latency of its summary;
# and the CPU each request cost the three members together and the load
# generator itself. On a machine whose cores both share, a rate is capped
# by those two costs: the members' is what the server can improve.
run_benchmark() { # kind name benchmark-args...
  local kind=$1 name=$2 out before requests TIMEFORMAT='%U %S'
  shift 2
  requests=$(printf '%s\n' "$@" | sed -n 's/^--total=//p')
  before=$(members_cpu_ticks)
  out=$( { time "$benchmark" --endpoints="$leader" --target-leader --precise "$@" 2>/dev/null; } 2>"$work/generator-cpu")
  echo "$out" >"$work/$kind-$name.out"
  record "$kind" "$name req/s" "$(echo "$out" | awk '/Requests\/sec:/ { printf "%.0f", $2; exit }')"
  record "$kind" "$name p99 ms" "$(echo "$out" | awk '/ 99% in / { printf "%.2f", $3 * 1000; exit }')"
  record "$kind" "$name members' CPU us/req" "$(awk -v t=$(($(members_cpu_ticks) - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
    'BEGIN { printf "%.0f", t / hz * 1e6 / n }')"
  record "$kind" "$name load generator's CPU us/req" "$(awk -v n="$requests" '{ printf "%.0f", ($1 + $2) * 1e6 / n }' "$work/generator-cpu")"
}

# A watch of the objects with prev_kv, resumed `back` revisions ago through
# etcdctl (Go's client takes the large responses a catch-up brings); prints
# the milliseconds until every one of those revisions' events arrived, each
# with its prev_kv (the last revisions are all updates).
resume_watch() { # endpoint back
  python3 - "$@" <<'PY'
import json, subprocess, sys, time
endpoint, back = sys.argv[1], int(sys.argv[2])
status = subprocess.run(["etcdctl", f"--endpoints={endpoint}", "endpoint", "status", "-w", "json"],
                        check=True, capture_output=True, env={"ETCDCTL_API": "3"}).stdout
now = json.loads(status)[0]["Status"]["header"]["revision"]
started = time.monotonic()
watch = subprocess.Popen(["etcdctl", f"--endpoints={endpoint}", "watch", "--prefix", "--prev-kv",
                          f"--rev={now - back + 1}", "-w", "json", "/registry/pods/"],
                         stdout=subprocess.PIPE, env={"ETCDCTL_API": "3"}, text=True)
events = with_prev = 0
for line in watch.stdout:
    if line.startswith("{"):
        for event in json.loads(line).get("Events") or []:
            events += 1
            with_prev += "prev_kv" in event
    if events >= back:
        break
elapsed = (time.monotonic() - started) * 1000
watch.kill()
assert (events, with_prev) == (back, back), f"{events} events, {with_prev} with prev_kv, of {back}"
print(f"{elapsed:.0f}")
PY
}

json_field() { sed "s/.*\"$1\":\([0-9.]*\).*/\1/"; }

rss_mb() { # pid
  awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

# Resident memory of every member: the largest, in MiB.
max_rss() {
  local p max=0 r
  for p in "${pids[@]}"; do
    r=$(rss_mb "$p"); ((r > max)) && max=$r
  done
  echo "$max"
}

# Where a cairn leader's memory budget goes (cairn_memory_bytes), in MiB.
record_budget() { # stage
  [ "$kind" = cairn ] || return 0
  curl -fs "http://$leader/metrics" | awk '/^cairn_memory_bytes/ {
    split($1, a, "\""); printf "%s %.0f\n", a[2], $2 / 1048576 }' >"$work/parts"
  while read -r part mib; do record cairn "memory $1: $part MiB" "$mib"; done <"$work/parts"
}

for kind in etcd cairn; do
  binary=$bin/cairn; [ "$kind" = etcd ] && binary=$(command -v etcd)
  base=23700
  start_cluster "$kind" "$binary" "$base"
  leader=$(leader_endpoint "$base")
  echo "== $kind: leader $leader" >&2
  ETCDCTL_API=3 etcdctl --endpoints="$leader" put bench-range-key "$(head -c 256 /dev/zero | tr '\0' x)" >/dev/null
  put=(put --key-size=8 --sequential-keys --val-size=256)
  run_benchmark "$kind" "put 1 client" --conns=1 --clients=1 "${put[@]}" --total=$((2000 * scale))
  run_benchmark "$kind" "put 64 clients" --conns=8 --clients=64 "${put[@]}" --total=$((20000 * scale))
  run_benchmark "$kind" "put 1000 clients" --conns=100 --clients=1000 "${put[@]}" --total=$((50000 * scale))
  for consistency in l s; do
    run_benchmark "$kind" "range-$consistency 1 client" --conns=1 --clients=1 range bench-range-key --consistency=$consistency --total=$((2000 * scale))
    run_benchmark "$kind" "range-$consistency 64 clients" --conns=8 --clients=64 range bench-range-key --consistency=$consistency --total=$((20000 * scale))
  done
  run_benchmark "$kind" "txn-put 64 clients" --conns=8 --clients=64 txn-put --key-size=8 --val-size=256 --total=$((20000 * scale))
  run_benchmark "$kind" "lease-keepalive 64 clients" --conns=8 --clients=64 lease-keepalive --total=$((20000 * scale))
  # From a put's answer to its event's arrival.
  out=$("$benchmark" --endpoints="$leader" --target-leader --precise watch-latency \
    --total=$((2000 * scale)) --put-rate=500 --val-size=256 2>/dev/null)
  echo "$out" >"$work/$kind-watch.out"
  record "$kind" "watch put->event p99 ms" "$(echo "$out" | awk '/ 99% in / { printf "%.3f", $3 * 1000; exit }')"
  # Both runtimes give freed memory back in the background (Go's scavenger,
  # cairn's heap trim after a burst): read it once that had time to run.
  sleep 15
  record "$kind" "memory after the request mix MiB" "$(max_rss)"
  record_budget "after the request mix"

  # The Kubernetes-shaped data set.
  out=$("$bin/examples/k8s_bench" load "$leader" "$objects" "$updates")
  record "$kind" "load $objects objects s" "$(echo "$out" | json_field create_seconds)"
  out=$("$bin/examples/k8s_bench" list "$leader" 3)
  record "$kind" "list all, pages of 500 ms" "$(echo "$out" | json_field p50_ms)"
  record "$kind" "memory with the objects MiB" "$(max_rss)"
  record_budget "with the objects"
  # Restart the first follower, then resume a watch there.
  for i in $(seq "$members"); do [ "127.0.0.1:$((base + 10 * i))" != "$leader" ] && break; done
  kill "${pids[i - 1]}"; wait "${pids[i - 1]}" 2>/dev/null || true
  started=$(date +%s.%N)
  start_member "$kind" "$binary" "$base" "$i"
  wait_healthy $((base + 10 * i))
  record "$kind" "restart to healthy s" "$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')"
  record "$kind" "watch resume $updates back, prev_kv ms" "$(resume_watch "127.0.0.1:$((base + 10 * i))" "$updates")"
  out=$("$bin/examples/k8s_bench" compact "$leader" 30)
  record "$kind" "compaction while writing ms" "$(echo "$out" | json_field compaction_ms)"
  record "$kind" "put p99 during compaction ms" "$(echo "$out" | json_field p99_ms_during)"
  # The same writers' tail before and after the pass: whether the pass or the
  # write path makes a tail.
  record "$kind" "put p99 outside compaction ms" "$(echo "$out" | json_field p99_ms_outside)"
  record "$kind" "memory after compaction MiB" "$(max_rss)"
  record "$kind" "bytes on disk per member MiB" "$(du -sm "$work/${kind}1" | cut -f1)"
  stop_all
done

echo "three members each; values of 256 bytes; objects of 1-4 KiB; $(nproc) cores; $(date -u +%F)"
printf '%-52s %12s %12s %8s\n' figure etcd cairn cairn/etcd
for key in "${!result[@]}"; do echo "${key#*/}"; done | sort -u | while read -r figure; do
  e=${result[etcd/$figure]:-} c=${result[cairn/$figure]:-}
  ratio=$(awk -v c="$c" -v e="$e" 'BEGIN { if (e + 0 > 0 && c != "") printf "%.2f", c / e; else print "-" }')
  printf '%-52s %12s %12s %8s\n' "$figure" "$e" "$c" "$ratio"
done

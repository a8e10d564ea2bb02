# Shared by the bench scripts: builds cairn and the examples named in
# $bench_examples, gives a scratch dir $work (removed on exit) and starts fresh
# clusters of etcd or cairn on loopback ports, one after the other. With
# client_scheme=https, members get the flags in $tls_flags and health checks
# the curl options in $curl_tls. With BENCH_LOGS=DIR, each member's output and
# RocksDB's event logs (LOG files) are copied to DIR when the script ends.
. scripts/cargo-env.sh
scripts/setup-debian.sh
# shellcheck disable=SC2086 # one --example per name
cargo build --release --locked --bin cairn $(printf -- '--example %s ' $bench_examples) >&2
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
pids=()
client_scheme=${client_scheme:-http}
[ -n "${tls_flags+x}" ] || tls_flags=()
[ -n "${curl_tls+x}" ] || curl_tls=()
trap 'stop_all; keep_logs; rm -rf "$work"' EXIT

keep_logs() {
  [ -n "${BENCH_LOGS:-}" ] || return 0
  mkdir -p "$BENCH_LOGS"
  (cd "$work" && find . -type f \( -regex '\./[^/]*\.log' -o -name LOG \) -exec cp --parents {} "$BENCH_LOGS" \;)
  echo "members' logs kept in $BENCH_LOGS" >&2
}

stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

wait_healthy() {
  for _ in $(seq 200); do
    curl -fs "${curl_tls[@]}" "$client_scheme://127.0.0.1:$1/health" | grep -q '"health":"true"' && return 0
    sleep 0.1
  done
  echo "server on :$1 did not become healthy" >&2; exit 1
}

# Member i of a cluster of $members: kind$i, client port base+10i, peer port base+10i+1.
start_member() { # kind binary base_port i
  local kind=$1 binary=$2 base=$3 i=$4 cluster="" j
  for j in $(seq "$members"); do cluster+="${cluster:+,}$kind$j=http://127.0.0.1:$((base + 10 * j + 1))"; done
  local c=$((base + 10 * i)) p=$((base + 10 * i + 1))
  "$binary" --name "$kind$i" --data-dir "$work/$kind$i" \
    --listen-client-urls "$client_scheme://127.0.0.1:$c" --advertise-client-urls "$client_scheme://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$cluster" --initial-cluster-token "bench-$kind" "${tls_flags[@]}" >>"$work/$kind$i.log" 2>&1 &
  pids[i - 1]=$!
}

start_cluster() { # kind binary base_port
  local i
  for i in $(seq "$members"); do start_member "$@" "$i"; done
  for i in $(seq "$members"); do wait_healthy $(($3 + 10 * i)); done
}

leader_endpoint() { # base_port
  local eps="" i
  for i in $(seq "$members"); do eps+="${eps:+,}127.0.0.1:$(($1 + 10 * i))"; done
  ETCDCTL_API=3 etcdctl --endpoints="$eps" endpoint status -w json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]:
        print(e["Endpoint"])'
}


# Runs "$@" while `etcdctl defrag` of endpoint $1 runs again and again, so
# that every request meets one; prints the command's output and how many
# defrags ran.
during_defrags() { # endpoint command...
  local ep=$1 done_flag="$work/defrag-done.$BASHPID" count="$work/defrags.$BASHPID"
  shift
  rm -f "$done_flag"
  : >"$count"
  (while [ ! -e "$done_flag" ]; do
    ETCDCTL_API=3 etcdctl --endpoints="$ep" defrag --command-timeout=30m >/dev/null && echo >>"$count"
  done) &
  local loop=$!
  local out
  out=$("$@")
  touch "$done_flag"
  wait "$loop"
  echo "$out ($(wc -l <"$count") defrags ran)"
}

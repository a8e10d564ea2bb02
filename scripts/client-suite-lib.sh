# Sourced by the scripts that run other people's client test suites against
# real etcd and cairn in the same run (gateway-client-suites.sh,
# grpc-client-suites.sh). Those suites talk to localhost:2379, so each
# server runs with them in a private network namespace (unshare -n; needs
# root). Builds cairn ($cairn) and fills the array `summary`.
. scripts/cargo-env.sh
scripts/setup-debian.sh
cargo build --release --locked --bin cairn >&2
cairn=$CARGO_TARGET_DIR/release/cairn
declare -A summary

# Inside the namespace: a fresh server, then the command. MEMBERS names the
# members of the cluster (default one, "s"); the first serves 127.0.0.1:2379,
# the others 12379, 22379, ... SERVER_ARGS go to every member.
with_server() { # kind command...
  local kind=$1 binary=$cairn data
  shift
  [ "$kind" = etcd ] && binary=$(command -v etcd)
  data=$(mktemp -d)
  MEMBERS=${MEMBERS:-s} SERVER_ARGS=${SERVER_ARGS:-} unshare -n bash -c '
    ip link set lo up
    names=($MEMBERS) cluster="" servers=()
    for i in "${!names[@]}"; do cluster+="${names[i]}=http://127.0.0.1:$((2380 + 10000 * i)),"; done
    for i in "${!names[@]}"; do
      client=http://127.0.0.1:$((2379 + 10000 * i)) peer=http://127.0.0.1:$((2380 + 10000 * i))
      "$0" --name "${names[i]}" --data-dir "$1/${names[i]}" --listen-client-urls $client --advertise-client-urls $client \
        --listen-peer-urls $peer --initial-advertise-peer-urls $peer --initial-cluster "${cluster%,}" $SERVER_ARGS >"$1/${names[i]}.log" 2>&1 &
      servers+=($!)
    done
    for _ in $(seq 100); do curl -fs http://127.0.0.1:2379/health >/dev/null && break; sleep 0.1; done
    shift
    "$@"; rc=$?
    kill "${servers[@]}"; wait "${servers[@]}"
    exit $rc' "$binary" "$data" "$@" || true
  rm -rf "$data"
}

# Prints each suite's summary per server (summary[etcd-SUITE],
# summary[cairn-SUITE]); returns 1 when cairn's differs from etcd's, times aside.
report() { # suite...
  local suite status=0
  strip_time() { sed 's/ in [0-9.]*s.*//'; }
  for suite in "$@"; do
    echo "$suite: etcd: ${summary[etcd-$suite]}"
    echo "$suite: cairn: ${summary[cairn-$suite]}"
    case "${summary[cairn-$suite]}" in *passed*) ;; *) status=1 ;; esac
    [ "$(echo "${summary[etcd-$suite]}" | strip_time)" = "$(echo "${summary[cairn-$suite]}" | strip_time)" ] || status=1
  done
  return $status
}

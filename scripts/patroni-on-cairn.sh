#!/usr/bin/env bash
# Does Patroni run a PostgreSQL cluster with cairn as its DCS? Patroni's etcd3
# backend speaks etcd's v3 JSON gateway (/v3/kv/*, /v3/lease/*, /v3/watch),
# so this starts one cairn member and two Patroni nodes (Debian's PostgreSQL,
# as the postgres user) on free loopback ports in a scratch dir and checks:
#   1. one leader and one streaming replica; a row written on the leader
#      shows up on the replica; nothing changes while idle for longer than
#      the leader's lease (kept alive by Patroni);
#   2. `patronictl switchover` hands leadership over and the old leader
#      rejoins as a replica;
#   3. failover: kill -9 the leader's Patroni and postgres; the replica is
#      promoted within 60 s (the leader key's 20 s lease has to expire in the DCS
#      and the watch has to tell the replica), no data is lost, and the
#      killed node, restarted, rejoins as a replica.
# Prints PASS/FAIL per check, the switchover and failover times, and a last
# line `patroni-on-cairn: PASS` or `FAIL` (exit status 1).
#   scripts/patroni-on-cairn.sh            # against $CAIRN
#   scripts/patroni-on-cairn.sh --etcd     # same scenario against Debian's etcd
# CAIRN defaults to ${CARGO_TARGET_DIR:-/var/cache/cairn-target}/release/cairn
# (build it first: cargo build --release --bin cairn). Needs root (installs
# packages, runs PostgreSQL as postgres). KEEP=1 keeps the scratch dir (logs,
# configs, data). Patroni and psycopg2 live in a venv in $VENV (default
# /var/cache/cairn-patroni-venv), made once from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

dcs_kind=cairn
case "${1:-}" in
  --etcd) dcs_kind=etcd ;;
  "") ;;
  *) echo "usage: $0 [--etcd]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "$0: run as root (PostgreSQL runs as the postgres user)" >&2; exit 2; }

venv=${VENV:-/var/cache/cairn-patroni-venv}
# As short as Patroni allows: it raises ttl (the leader lease) to at least 20 s
# and wants loop_wait + 2*retry_timeout <= ttl.
ttl=20 loop_wait=2 retry_timeout=5
failover_limit=60

# --- what it needs ----------------------------------------------------------
need_apt=()
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need_apt+=(postgresql)
dpkg -s python3-venv >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v curl >/dev/null || need_apt+=(curl)
[ "$dcs_kind" = cairn ] || command -v etcd >/dev/null || need_apt+=(etcd-server)
if ((${#need_apt[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)")

# Debian's python3, not whatever python3 is first on PATH: the postgres user
# runs Patroni from this venv, and an interpreter under /root (pyenv) is not
# executable for it.
if [ "$(readlink -f "$venv/bin/python3")" != "$(readlink -f /usr/bin/python3)" ] ||
  ! "$venv/bin/python3" -c 'import patroni, psycopg2' 2>/dev/null; then
  echo "making the Patroni venv in $venv..." >&2
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'patroni[etcd3]' psycopg2-binary
fi
py=$venv/bin/python3

if [ "$dcs_kind" = cairn ]; then
  dcs_bin=${CAIRN:-${CARGO_TARGET_DIR:-/var/cache/cairn-target}/release/cairn}
else
  dcs_bin=$(command -v etcd)
fi
[ -x "$dcs_bin" ] || { echo "$0: no $dcs_kind binary at $dcs_bin (set CAIRN or build cairn)" >&2; exit 2; }

# --- scratch dir, processes, cleanup ----------------------------------------
work=$(mktemp -d /tmp/patroni-on-cairn.XXXXXX)
chown postgres:postgres "$work"
dcs_pid=""
declare -A patroni_pid=()
result=FAIL

postmaster_pid() { # node: the pid in its postmaster.pid, if that process is a postgres
  local f=$work/$1/data/postmaster.pid pid
  [ -f "$f" ] || return 1
  pid=$(head -1 "$f")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] && echo "$pid"
}

cleanup() {
  set +e
  local n pid
  # SIGTERM first so Patroni shuts its postgres down cleanly.
  for n in "${!patroni_pid[@]}"; do kill "${patroni_pid[$n]}" 2>/dev/null || true; done
  for _ in $(seq 100); do
    pid=""
    for n in "${!patroni_pid[@]}"; do kill -0 "${patroni_pid[$n]}" 2>/dev/null && pid=1; done
    [ -z "$pid" ] && break
    sleep 0.2
  done
  for n in pg1 pg2; do
    [ -n "${patroni_pid[$n]:-}" ] && kill -9 "${patroni_pid[$n]}" 2>/dev/null
    pid=$(postmaster_pid "$n") && kill -9 "$pid" 2>/dev/null
  done
  [ -n "$dcs_pid" ] && kill "$dcs_pid" 2>/dev/null && wait "$dcs_pid" 2>/dev/null
  if [ "$result" != PASS ]; then
    for f in "$work"/dcs.log "$work"/pg1/patroni.log "$work"/pg2/patroni.log; do
      [ -f "$f" ] && { echo "--- last lines of $f"; tail -n 25 "$f"; }
    done
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
  echo "patroni-on-cairn: $result (dcs: $dcs_kind $dcs_bin)"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; exit 1; }

# No point waiting on a DCS or a Patroni that has exited.
check_alive() {
  local n
  kill -0 "$dcs_pid" 2>/dev/null || fail "$dcs_kind exited (see $work/dcs.log)"
  for n in "${!patroni_pid[@]}"; do
    kill -0 "${patroni_pid[$n]}" 2>/dev/null || fail "Patroni $n exited (see $work/$n/patroni.log)"
  done
}

wait_until() { # seconds what command...: polls command until it succeeds
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    check_alive
    ((SECONDS < end)) || fail "$what (not within ${limit}s)"
    sleep 0.2
  done
}

# Six distinct free loopback ports, held open together so none repeats.
read -r dcs_port peer_port api1 api2 pgport1 pgport2 < <("$py" -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
declare -A api_port=([pg1]=$api1 [pg2]=$api2) pg_port=([pg1]=$pgport1 [pg2]=$pgport2)

# --- the DCS ------------------------------------------------------------------
dcs_version=$("$dcs_bin" --version 2>/dev/null | head -1 || true)
echo "dcs: $dcs_kind ($dcs_bin${dcs_version:+, $dcs_version}) on 127.0.0.1:$dcs_port; PostgreSQL in $pg_bin; $("$venv/bin/patroni" --version)"
"$dcs_bin" --name n1 --data-dir "$work/dcs" \
  --listen-client-urls "http://127.0.0.1:$dcs_port" --advertise-client-urls "http://127.0.0.1:$dcs_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "n1=http://127.0.0.1:$peer_port" >"$work/dcs.log" 2>&1 &
dcs_pid=$!
dcs_healthy() { curl -fsS "http://127.0.0.1:$dcs_port/health" | grep -q '"health":"true"'; }
wait_until 20 "$dcs_kind healthy on :$dcs_port" dcs_healthy

# --- Patroni nodes --------------------------------------------------------------
write_config() { # node
  local n=$1 dir=$work/$1
  mkdir -p "$dir"
  chown postgres:postgres "$dir"
  cat >"$dir/patroni.yml" <<EOF
scope: cairn-demo
namespace: /service/
name: $n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${api_port[$n]}
  connect_address: 127.0.0.1:${api_port[$n]}
etcd3:
  hosts: 127.0.0.1:$dcs_port
bootstrap:
  dcs:
    ttl: $ttl
    loop_wait: $loop_wait
    retry_timeout: $retry_timeout
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: 'on'
        max_wal_senders: 5
        max_replication_slots: 5
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: 127.0.0.1:${pg_port[$n]}
  connect_address: 127.0.0.1:${pg_port[$n]}
  data_dir: $dir/data
  bin_dir: $pg_bin
  pgpass: $dir/pgpass
  authentication:
    superuser: {username: postgres, password: su-secret}
    replication: {username: replicator, password: repl-secret}
    rewind: {username: rewinder, password: rewind-secret}
  parameters:
    unix_socket_directories: '$dir'
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
EOF
}

start_patroni() { # node
  local n=$1
  # exec all the way down so the pid is Patroni's own (kill -9 must hit it).
  (cd "$work/$n" && exec setpriv --reuid=postgres --regid=postgres --init-groups \
    env HOME="$work/$n" "$venv/bin/patroni" patroni.yml >>patroni.log 2>&1) &
  patroni_pid[$n]=$!
}

ctl() { "$venv/bin/patronictl" -c "$work/pg1/patroni.yml" "$@"; }

# "pg1=Leader/running pg2=Replica/streaming", from the DCS through patronictl;
# with an argument, each member's timeline too ("pg1=Leader/running/1 ...").
cluster_state() {
  ctl list -f json | "$py" -c '
import json, sys
tl = len(sys.argv) > 1
print(" ".join("%s=%s/%s" % (m["Member"], m["Role"], m["State"]) + ("/%s" % m.get("TL") if tl else "")
               for m in sorted(json.load(sys.stdin), key=lambda m: m["Member"])))' "$@"
}
expect_state() { # seconds what member=Role/State...
  local limit=$1 what=$2 want seen end=$((SECONDS + $1))
  shift 2
  want=$(printf '%s\n' "$@" | sort | paste -sd ' ')
  until seen=$(cluster_state 2>&1) && [ "$seen" = "$want" ]; do
    check_alive
    ((SECONDS < end)) || fail "$what: expected '$want' within ${limit}s, last seen '$seen'"
    sleep 0.2
  done
  pass "$what: $want"
}
other() { [ "$1" = pg1 ] && echo pg2 || echo pg1; }
leader_now() {
  ctl list -f json | "$py" -c '
import json, sys
print(*[m["Member"] for m in json.load(sys.stdin) if m["Role"] == "Leader"])'
}
# Patroni's own health checks: 200 only if the node is the leader with a
# primary postgres (/primary) or a running replica (/replica).
rest_ok() { curl -fsS -o /dev/null "http://127.0.0.1:${api_port[$1]}/$2"; }

sql() { # node statement
  PGPASSWORD=su-secret PGCONNECT_TIMEOUT=3 "$pg_bin/psql" -X -q -At -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "${pg_port[$1]}" -U postgres -d postgres -c "$2"
}
row_on() { [ "$(sql "$1" "SELECT count(*) FROM cairn_check WHERE note = '$2'" 2>/dev/null)" = 1 ]; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

write_config pg1
write_config pg2
# Both at once: which one initializes is decided by the DCS (a create-only
# transaction on /initialize), as in a real deployment.
t0=$(now)
start_patroni pg1
start_patroni pg2

# --- 1. leader and streaming replica ----------------------------------------------
has_leader() { [ -n "$(leader_now)" ]; }
wait_until 120 "bootstrap: a leader" has_leader
leader=$(leader_now)
replica=$(other "$leader")
expect_state 120 "bootstrap" "$leader=Leader/running" "$replica=Replica/streaming"
bootstrap_secs=$(since "$t0")
ctl list
rest_ok "$leader" primary || fail "GET /primary on leader $leader"
rest_ok "$replica" replica || fail "GET /replica on replica $replica"
members=$(curl -fsS "http://127.0.0.1:${api_port[$replica]}/cluster" |
  "$py" -c 'import json, sys; print(len(json.load(sys.stdin)["members"]))')
[ "$members" = 2 ] || fail "GET /cluster on $replica lists $members members, not 2"
pass "REST: $leader answers /primary, $replica answers /replica, /cluster lists both"

sql "$leader" "CREATE TABLE cairn_check (note text PRIMARY KEY, at timestamptz DEFAULT now())"
sql "$leader" "INSERT INTO cairn_check (note) VALUES ('before-switchover')"
wait_until 30 "row written on $leader replicated to $replica" row_on "$replica" before-switchover
pass "row written on leader $leader read back on replica $replica"

# Nothing above lasts a whole ttl, so hold still for longer than one: the
# leader keeps its key only if the DCS honours its lease keepalives.
steady=$(cluster_state tl)
end=$((SECONDS + ttl + 5))
while ((SECONDS < end)); do
  check_alive
  seen=$(cluster_state tl)
  [ "$seen" = "$steady" ] || fail "cluster changed while idle (lease lost?): '$steady' became '$seen'"
  sleep 1
done
pass "idle for $((ttl + 5))s (more than ttl $ttl): no change, $steady"

# --- 2. switchover ----------------------------------------------------------------
t0=$(now)
ctl switchover --leader "$leader" --candidate "$replica" --force
expect_state 60 "switchover $leader -> $replica" "$replica=Leader/running" "$leader=Replica/streaming"
switchover_secs=$(since "$t0")
leader=$replica
replica=$(other "$leader")
sql "$leader" "INSERT INTO cairn_check (note) VALUES ('after-switchover')"
wait_until 30 "row written on new leader $leader replicated to $replica" row_on "$replica" after-switchover
pass "switchover took ${switchover_secs}s; new leader $leader writes, $replica replicates"

# --- 3. failover --------------------------------------------------------------------
sql "$leader" "INSERT INTO cairn_check (note) VALUES ('before-failover')"
wait_until 30 "row replicated before failover" row_on "$replica" before-failover
victim=$leader survivor=$replica
victim_pm=$(postmaster_pid "$victim") || fail "no postmaster for $victim"
t0=$(now)
kill -9 "${patroni_pid[$victim]}" "$victim_pm"
wait "${patroni_pid[$victim]}" 2>/dev/null || true
unset "patroni_pid[$victim]"
echo "killed -9 $victim (Patroni and postmaster $victim_pm); waiting for $survivor to be promoted..."
wait_until "$failover_limit" "failover: $survivor promoted" rest_ok "$survivor" primary
failover_secs=$(since "$t0")
pass "failover: $survivor is leader with a primary postgres ${failover_secs}s after the kill (ttl $ttl, loop_wait $loop_wait)"
[ "$(leader_now)" = "$survivor" ] || fail "patronictl does not show $survivor as leader"
row_on "$survivor" before-failover && row_on "$survivor" after-switchover && row_on "$survivor" before-switchover ||
  fail "rows written before the failover missing on $survivor"
sql "$survivor" "INSERT INTO cairn_check (note) VALUES ('after-failover')"
pass "rows written before the failover are on $survivor, which takes writes"

t0=$(now)
start_patroni "$victim"
expect_state 120 "restarted $victim rejoins" "$survivor=Leader/running" "$victim=Replica/streaming"
rejoin_secs=$(since "$t0")
wait_until 30 "row written after failover replicated to $victim" row_on "$victim" after-failover
pass "$victim rejoined as a streaming replica in ${rejoin_secs}s and has the rows written after the failover"
ctl list

echo "timings ($dcs_kind): bootstrap ${bootstrap_secs}s, switchover ${switchover_secs}s, failover ${failover_secs}s (kill -9 to new primary), rejoin ${rejoin_secs}s"
result=PASS

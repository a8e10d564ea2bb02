#!/usr/bin/env bash
# End-to-end checks of the image cairn:latest (build it with
# scripts/build-image.sh): docker run, docker exec, docker stop, volumes, and
# the three-member compose cluster with a killed member. Prints one closing
# line "docker e2e: N passed, M failed"; exits 1 when a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export ETCDCTL_API=3
passed=0 failed=0
check() { # description command...
  local what=$1; shift
  if "$@" >/tmp/cairn-e2e.out 2>&1; then
    passed=$((passed + 1)); echo "ok   $what"
  else
    failed=$((failed + 1)); echo "FAIL $what"; sed 's/^/     /' /tmp/cairn-e2e.out | tail -20
  fi
}
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
project=cairn-e2e

cleanup() {
  docker rm -f cairn-e2e-single cairn-e2e-again cairn-e2e-tls cairn-e2e-etcd-form >/dev/null 2>&1
  docker volume rm -f cairn-e2e-data >/dev/null 2>&1
  "${compose[@]}" -p "$project" -f compose/three-node.yml down -v >/dev/null 2>&1
  "${compose[@]}" -p "$project-single" -f compose/single-node.yml down -v >/dev/null 2>&1
  "${compose[@]}" -p "$project-srv" -f compose/srv.yml --profile scale-out down -v >/dev/null 2>&1
  "${compose[@]}" -p "$project-discovery" -f compose/discovery.yml down -v >/dev/null 2>&1
}
trap cleanup EXIT
cleanup

healthy_within() { # seconds endpoint
  local deadline=$((SECONDS + $1))
  until curl -fs "http://$2/health" 2>/dev/null | grep -q '"health":"true"'; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.05
  done
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# --- docker run ---------------------------------------------------------------
start=$(date +%s%N)
docker run -d --name cairn-e2e-single -p 127.0.0.1:12479:2379 -v cairn-e2e-data:/var/lib/cairn cairn:latest --name single >/dev/null
check "docker run: healthy within 2 s" healthy_within 2 127.0.0.1:12479
echo "     start to healthy: $(ms_since "$start") ms"
check "docker exec … etcdctl endpoint health (link to cairn in the image)" docker exec cairn-e2e-single etcdctl endpoint health
check "docker exec … cairn ctl endpoint health" docker exec cairn-e2e-single cairn ctl endpoint health
check "host etcdctl put" etcdctl --endpoints=127.0.0.1:12479 put kept-key kept-value
host=$(docker inspect -f '{{.Config.Hostname}}' cairn-e2e-single)
check "advertises the container's hostname by default" bash -c "etcdctl --endpoints=127.0.0.1:12479 member list | grep -q ', single, http://$host:2380, http://$host:2379, false'"
check "HEALTHCHECK reports healthy" bash -c 'for _ in $(seq 40); do [ "$(docker inspect -f "{{.State.Health.Status}}" cairn-e2e-single)" = healthy ] && exit 0; sleep 0.25; done; exit 1'
start=$(date +%s%N)
docker stop cairn-e2e-single >/dev/null
stop_ms=$(ms_since "$start")
check "docker stop within 2 s (took $stop_ms ms)" test "$stop_ms" -lt 2000
check "exit code 0 after docker stop" test "$(docker inspect -f '{{.State.ExitCode}}' cairn-e2e-single)" = 0
docker rm cairn-e2e-single >/dev/null
docker run -d --name cairn-e2e-again -p 127.0.0.1:12479:2379 -v cairn-e2e-data:/var/lib/cairn cairn:latest --name single >/dev/null
check "a new container on the same volume is healthy" healthy_within 5 127.0.0.1:12479
check "data survives docker rm" bash -c 'test "$(etcdctl --endpoints=127.0.0.1:12479 get kept-key --print-value-only)" = kept-value'
docker rm -f cairn-e2e-again >/dev/null

# --- TLS in a container (auto TLS) -------------------------------------------
docker run -d --name cairn-e2e-tls -p 127.0.0.1:12579:2379 cairn:latest --name tls --auto-tls \
  --listen-client-urls=https://0.0.0.0:2379 --advertise-client-urls=https://127.0.0.1:2379 >/dev/null
tls_healthy() { for _ in $(seq 100); do docker exec cairn-e2e-tls cairn healthcheck --endpoint https://127.0.0.1:2379 --insecure-skip-tls-verify >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
check "auto TLS: cairn healthcheck with TLS flags" tls_healthy
check "auto TLS: docker exec … etcdctl --insecure-skip-tls-verify endpoint health" docker exec cairn-e2e-tls etcdctl --endpoints=https://127.0.0.1:2379 --insecure-skip-tls-verify endpoint health
# etcdctl 3.4 dials https endpoints in plaintext unless told --insecure-transport=false.
check "auto TLS: host etcdctl over https" etcdctl --endpoints=https://127.0.0.1:12579 --insecure-transport=false --insecure-skip-tls-verify put tls-key v
check "auto TLS: plaintext refused" bash -c '! etcdctl --endpoints=http://127.0.0.1:12579 --dial-timeout=2s --command-timeout=3s get tls-key'
docker rm -f cairn-e2e-tls >/dev/null

# --- etcd's own command lines, verbatim but for the image name ----------------
# etcd's image has no entrypoint, so its guides name the program first.
docker run -d --name cairn-e2e-etcd-form -p 127.0.0.1:12679:2379 -e ETCDCTL_API=3 cairn:latest \
  /usr/local/bin/etcd -advertise-client-urls http://0.0.0.0:2379 -listen-client-urls http://0.0.0.0:2379 >/dev/null
check "docker run IMAGE /usr/local/bin/etcd -advertise-client-urls … (etcd's guide)" healthy_within 5 127.0.0.1:12679
check "docker exec … /usr/local/bin/etcdctl put" docker exec cairn-e2e-etcd-form /usr/local/bin/etcdctl put seed-key v
check "docker exec … etcd --version" bash -c "docker exec cairn-e2e-etcd-form etcd --version | grep -q 'etcd API Version'"
check "docker run IMAGE etcdctl … as a client" bash -c "docker run --rm --network host cairn:latest etcdctl --endpoints=127.0.0.1:12679 get seed-key --print-value-only | grep -qx v"
docker rm -f cairn-e2e-etcd-form >/dev/null

# --- docker compose, one member ---------------------------------------------
"${compose[@]}" -p "$project-single" -f compose/single-node.yml up -d >/dev/null 2>&1
check "compose/single-node.yml: healthy on 127.0.0.1:2379" healthy_within 10 127.0.0.1:2379
check "compose/single-node.yml: serves etcdctl" etcdctl --endpoints=127.0.0.1:2379 put compose-key v
"${compose[@]}" -p "$project-single" -f compose/single-node.yml down -v >/dev/null 2>&1

# --- docker compose, three members -------------------------------------------
eps=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
all_healthy() { for p in 12379 22379 32379; do healthy_within "$1" "127.0.0.1:$p" || return 1; done; }
start=$(date +%s%N)
"${compose[@]}" -p "$project" -f compose/three-node.yml up -d >/dev/null 2>&1
check "compose up: three healthy members" all_healthy 20
echo "     compose up to three healthy: $(ms_since "$start") ms"
check "etcdctl endpoint health on all three" etcdctl --endpoints=$eps endpoint health
check "member list names all three with their client URLs" bash -c "etcdctl --endpoints=$eps member list | grep -c 'started, etcd[123], http://etcd[123]:2380, http://etcd[123]:2379' | grep -qx 3"
for i in $(seq 20); do etcdctl --endpoints=$eps put "c/$i" "$i" >/dev/null; done
victim=$("${compose[@]}" -p "$project" -f compose/three-node.yml ps -q etcd1)
docker kill "$victim" >/dev/null
# As any client does across a leader change: an Unavailable answer is retried.
put_retrying() {
  for _ in $(seq 10); do
    etcdctl --endpoints=127.0.0.1:22379,127.0.0.1:32379 --command-timeout=10s put "$1" "$2" && return 0
    sleep 0.5
  done
  return 1
}
write_after_kill() { for i in $(seq 21 40); do put_retrying "c/$i" "$i" || return 1; done; }
check "writes continue with one member killed" write_after_kill
docker start "$victim" >/dev/null
check "the killed member restarts healthy" healthy_within 20 127.0.0.1:12379
caught_up() {
  local deadline=$((SECONDS + 20))
  until [ "$(etcdctl --endpoints=127.0.0.1:12379 get c/ --prefix --keys-only --consistency=s | grep -c '^c/')" = 40 ]; do
    [ $SECONDS -lt "$deadline" ] || return 1; sleep 0.2
  done
}
check "it catches up (all 40 keys, read locally)" caught_up
"${compose[@]}" -p "$project" -f compose/three-node.yml down >/dev/null 2>&1
"${compose[@]}" -p "$project" -f compose/three-node.yml up -d >/dev/null 2>&1
check "compose down and up: healthy again" all_healthy 20
check "compose down and up keeps the data" bash -c "test \"\$(etcdctl --endpoints=$eps get c/40 --print-value-only)\" = 40"

"${compose[@]}" -p "$project" -f compose/three-node.yml down -v >/dev/null 2>&1

# --- docker compose, DNS SRV and a discovery URL -------------------------------
scripts/build-tool-image.sh >/dev/null
started_voters() { # count endpoints
  local deadline=$((SECONDS + 60))
  until [ "$(etcdctl --endpoints="$2" member list 2>/dev/null | grep ', started, ' | grep -c ', false$')" = "$1" ]; do
    [ $SECONDS -lt "$deadline" ] || return 1; sleep 0.5
  done
}
srv=(-p "$project-srv" -f compose/srv.yml)
"${compose[@]}" "${srv[@]}" up -d >/dev/null 2>&1
check "compose/srv.yml: three members found through SRV records, healthy" all_healthy 60
check "compose/srv.yml: member list shows three started voters" started_voters 3 "$eps"
check "compose/srv.yml: members are known by their records' names" bash -c "etcdctl --endpoints=$eps member list | grep -c 'started, etcd[123], http://etcd[123].cairn.test:2380' | grep -qx 3"
etcdctl --endpoints=$eps put srv-key v >/dev/null
export CAIRN_SRV_SCALE_OUT=./srv/scale-out.conf
"${compose[@]}" "${srv[@]}" up -d dns >/dev/null 2>&1
"${compose[@]}" "${srv[@]}" --profile scale-out up -d etcd4 >/dev/null 2>&1
check "compose/srv.yml scale-out: one more record and container, healthy" healthy_within 90 127.0.0.1:42379
check "compose/srv.yml scale-out: four started voters, no member add by hand" started_voters 4 "$eps,127.0.0.1:42379"
check "compose/srv.yml scale-out: the fourth serves the data" bash -c 'test "$(etcdctl --endpoints=127.0.0.1:42379 get srv-key --print-value-only)" = v'
unset CAIRN_SRV_SCALE_OUT
"${compose[@]}" "${srv[@]}" --profile scale-out down -v >/dev/null 2>&1

discovery=(-p "$project-discovery" -f compose/discovery.yml)
"${compose[@]}" "${discovery[@]}" up -d registry discovery >/dev/null 2>&1
token=""
for _ in $(seq 100); do token=$(curl -fs 'http://127.0.0.1:18087/new?size=3') && break; sleep 0.2; done
check "compose/discovery.yml: the discovery service hands out a token" test -n "$token"
CAIRN_DISCOVERY_URL=$token "${compose[@]}" "${discovery[@]}" up -d >/dev/null 2>&1
check "compose/discovery.yml: three members found through the discovery URL, healthy" all_healthy 60
check "compose/discovery.yml: member list shows three started voters" started_voters 3 "$eps"
"${compose[@]}" "${discovery[@]}" down -v >/dev/null 2>&1

echo "docker e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]

#!/usr/bin/env bash
# The JSON gateway proven by other people's test suites: etcd3gw's own tests
# and tooz's (its etcd3gw driver, over /v3beta as tooz's CI runs it), from
# their PyPI sdists, against real etcd (Debian's etcd-server) and cairn in
# the same run, each server with the suite in a private network namespace
# (scripts/client-suite-lib.sh; needs root).
#   scripts/gateway-client-suites.sh
# Prints each suite's pytest summary per server; exits 1 when cairn's
# summary differs from etcd's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/client-suite-lib.sh
cache=${SUITES_CACHE:-/var/cache/cairn-gateway-suites}
mkdir -p "$cache"

# One venv per suite, kept between runs; the sdists' own tests.
if [ ! -x "$cache/venv/bin/pytest" ]; then
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q pytest pbr requests futurist urllib3 oslotest testtools fixtures ddt \
    stevedore voluptuous msgpack fasteners tenacity oslo.utils oslo.serialization sysv_ipc \
    pymemcache redis kazoo zake PyMySQL psycopg2-binary
  (cd "$cache" && "$cache/venv/bin/pip" download -q --no-deps --no-binary :all: etcd3gw==2.7.0 tooz==9.1.0 &&
    tar xzf etcd3gw-2.7.0.tar.gz && tar xzf tooz-9.1.0.tar.gz)
  "$cache/venv/bin/pip" install -q --no-deps -e "$cache/etcd3gw-2.7.0" -e "$cache/tooz-9.1.0"
fi

# tooz's Kubernetes driver tests need a module tooz does not ship; they fail
# alike on every server and are left out. tooz imports every driver's client
# library, hence the Redis, ZooKeeper, memcached and SQL ones above.
for kind in etcd cairn; do
  summary[$kind-etcd3gw]=$(cd "$cache/etcd3gw-2.7.0" &&
    with_server "$kind" "$cache/venv/bin/pytest" -q -p no:cacheprovider etcd3gw/tests | tail -1)
  summary[$kind-tooz]=$(cd "$cache/tooz-9.1.0" && TOOZ_TEST_URL=etcd://127.0.0.1:2379 TOOZ_TEST_ETCD3GW=1 \
    with_server "$kind" "$cache/venv/bin/pytest" -q -p no:cacheprovider --ignore=tooz/tests/test_kubernetes.py tooz/tests | tail -1)
done
report etcd3gw tooz

#!/usr/bin/env bash
# The gRPC API proven by other people's test suites: python-etcd3 0.12's and
# aetcd 1.0's own tests, from their PyPI sdists, and the Rust crate
# etcd-client 0.21's (the copy cargo fetched for cairn's tests), against real
# etcd (Debian's etcd-server) and cairn in the same run, each server with the
# suite in a private network namespace (scripts/client-suite-lib.sh; needs
# root). The Python suites also drive Debian's etcdctl.
#   scripts/grpc-client-suites.sh
# Prints each suite's pytest summary per server; exits 1 when cairn's
# summary differs from etcd's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/client-suite-lib.sh
cache=${SUITES_CACHE:-/var/cache/cairn-grpc-suites}
mkdir -p "$cache"

# A venv per suite, kept between runs: etcd3 0.12 needs protobuf 3 and the
# test pins its tests were written against; aetcd 1.0 needs protobuf 4 or later.
if [ ! -x "$cache/etcd3-venv/bin/pytest" ] || [ ! -x "$cache/aetcd-venv/bin/pytest" ]; then
  (cd "$cache" && pip download -q --no-deps --no-binary :all: etcd3==0.12.0 aetcd==1.0.0 &&
    tar xzf etcd3-0.12.0.tar.gz && tar xzf aetcd-1.0.0.tar.gz)
  python3 -m venv "$cache/etcd3-venv"
  "$cache/etcd3-venv/bin/pip" install -q 'protobuf<4' hypothesis==4.56.3 tenacity==6.1.0 grpcio pytest mock six
  "$cache/etcd3-venv/bin/pip" install -q --no-deps -e "$cache/etcd3-0.12.0"
  python3 -m venv "$cache/aetcd-venv"
  "$cache/aetcd-venv/bin/pip" install -q "$cache/aetcd-1.0.0/[test]"
fi

# The crate's tests are built before they go where there is no network.
crate=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/etcd-client-0.21.1 | head -1)
export crate crate_target=$cache/etcd-client-target
CARGO_TARGET_DIR=$crate_target cargo test --locked --manifest-path "$crate/Cargo.toml" --no-run >&2

# As the crate's Justfile sets etcd up for them: a root user (they enable
# auth themselves) and tokens that live 2 seconds.
crate_tests() {
  etcdctl user add root --new-user-password=rootpwd >/dev/null && etcdctl user grant-role root root >/dev/null &&
    CARGO_TARGET_DIR=$crate_target cargo test --offline --locked --manifest-path "$crate/Cargo.toml" 2>&1 |
    awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d ignored\n", p, f, i }'
}
export -f crate_tests

# etcd3's suite runs as its CI does (tox with pifpaf): three members named
# pifpaf0-2, of which it pauses two to read serializably without a quorum,
# and its generated gRPC code importable as `etcdrpc`, which its auth test mocks.
for kind in etcd cairn; do
  summary[$kind-etcd3]=$(cd "$cache/etcd3-0.12.0" && MEMBERS="pifpaf0 pifpaf1 pifpaf2" PYTHONPATH=$cache/etcd3-0.12.0/etcd3 \
    with_server "$kind" "$cache/etcd3-venv/bin/pytest" -q -p no:cacheprovider tests | tail -1)
  summary[$kind-aetcd]=$(cd "$cache/aetcd-1.0.0" &&
    with_server "$kind" "$cache/aetcd-venv/bin/pytest" -q -p no:cacheprovider tests | tail -1)
  summary[$kind-etcd-client]=$(SERVER_ARGS="--auth-token-ttl 2" with_server "$kind" bash -c crate_tests)
done
report etcd3 aetcd etcd-client

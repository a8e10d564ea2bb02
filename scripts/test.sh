#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests with real cairn
# processes on loopback ports and Debian's real etcdctl; then, when a docker
# engine is reachable, the image built and checked end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
. scripts/cargo-env.sh
# Cluster tests start three members each: two at a time keep 2 cores from
# starving heartbeats.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked "$@" 2>&1 | tee "$log"
if docker info >/dev/null 2>&1; then
  scripts/build-image.sh
  scripts/docker-e2e.sh | tee -a "$log"
else
  echo "SKIPPED docker e2e (scripts/docker-e2e.sh): no docker engine is reachable" | tee -a "$log"
fi
# One closing line for the whole run, summed over every test binary and the docker checks.
awk '/^test result:/ { p += $4; f += $6; s += $8 }
     /^docker e2e:/ { p += $3; f += $5 }
     /^SKIPPED docker e2e/ { s += 1 }
     END { printf "suite: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"

#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests with real cairn
# processes on loopback ports and Debian's real etcdctl.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
. scripts/cargo-env.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked "$@" 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "suite: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"

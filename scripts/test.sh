#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests with real cairn
# processes on loopback ports and Debian's real etcdctl.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
. scripts/cargo-env.sh
cargo test --release --locked "$@"

#!/usr/bin/env bash
# Builds cairn and runs one member in the foreground: clients on
# 127.0.0.1:2379, peers on 127.0.0.1:2380, data in ./n1.etcd.
# Extra arguments are passed on as flags, e.g. --log-level debug.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
. scripts/cargo-env.sh
cargo build --release --locked --bin cairn
exec "$CARGO_TARGET_DIR/release/cairn" --name n1 "$@"

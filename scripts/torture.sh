#!/usr/bin/env bash
# The fault harness's long mode: random faults, one at a time, against a
# three-member cluster under load for N minutes (default 30), then every
# check of tests/faults (linearizability, watch invariants, lost writes,
# double lock holders). Needs root (network namespaces, iptables).
#   scripts/torture.sh --minutes 30 [--seed N] [--faults FillDisk,KillLeader]
# (--faults: only those, by the names in tests/faults/schedule.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=30
while (($#)); do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --seed) export CAIRN_FAULT_SEED=$2; shift 2 ;;
    --faults) export CAIRN_FAULTS=$2; shift 2 ;;
    *) echo "usage: scripts/torture.sh [--minutes N] [--seed N] [--faults A,B]" >&2; exit 1 ;;
  esac
done
scripts/setup-debian.sh
. scripts/cargo-env.sh
CAIRN_TORTURE_MINUTES=$minutes cargo test --release --locked --test faults -- --ignored --exact torture --nocapture

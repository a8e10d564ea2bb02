#!/usr/bin/env bash
# Installs, from Debian's packages, what building and testing cairn needs:
# protoc and libclang (RocksDB's bindings) to build; the real etcdctl and etcd
# to test and compare against; cfssl and openssl to make the certificates the
# TLS tests use, as the installation guides make them; Python's Prometheus
# parser, which reads /metrics in the tests; libfaketime, iptables and
# iproute2 for the fault harness's clock jumps and partitions; dnsmasq and
# etcd's discovery service for the DNS SRV and discovery URL bootstraps.
# Needs a Rust toolchain (rustup) already.
set -euo pipefail
packages=(protobuf-compiler libclang-dev clang g++ make curl openssl golang-cfssl etcd-client etcd-server python3-prometheus-client libfaketime iptables iproute2 dnsmasq-base etcd-discovery)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cairn needs a Rust toolchain (1.88 or newer): install it with rustup" >&2; exit 1; }

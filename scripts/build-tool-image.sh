#!/usr/bin/env bash
# Builds cairn-tools:latest FROM scratch: Debian's dnsmasq (the DNS server of
# compose/srv.yml), etcd and discovery.etcd.io (the discovery service of
# compose/discovery.yml), each with the shared libraries it links and nothing
# else. They stand beside cairn in those compose files; cairn's own image is
# scripts/build-image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
for program in /usr/sbin/dnsmasq /usr/bin/etcd /usr/bin/discovery.etcd.io; do
  install -D "$program" "$context$program"
  for lib in $(ldd "$program" | grep -o '/[^ ]*'); do
    install -D "$lib" "$context$lib"
  done
done
# The discovery service reads its package's config file (the flags override
# it); dnsmasq runs as root (its --user needs the user in /etc/passwd) and
# writes its pid file to /var/run.
install -D /etc/etcd-discovery/etcd-discovery.conf "$context/etc/etcd-discovery/etcd-discovery.conf"
mkdir -p "$context/etc/dnsmasq.d" "$context/var/lib/etcd" "$context/var/run"
echo 'root:x:0:0:root:/:/nonexistent' > "$context/etc/passwd"
echo 'root:x:0:' > "$context/etc/group"
printf 'FROM scratch\nCOPY . /\n' > "$context/Containerfile"
"${CONTAINER_TOOL:-docker}" build -q -t cairn-tools:latest -f "$context/Containerfile" "$context" >/dev/null
echo "built cairn-tools:latest: $("${CONTAINER_TOOL:-docker}" image inspect cairn-tools:latest --format '{{.Size}}' | numfmt --to=si)"

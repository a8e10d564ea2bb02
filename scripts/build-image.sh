#!/usr/bin/env bash
# Builds the fully static cairn binary (glibc, libstdc++, jemalloc and RocksDB linked
# in) and the FROM-scratch image cairn:latest from Containerfile.
#   scripts/build-image.sh            # docker
#   CONTAINER_TOOL=podman scripts/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
. scripts/cargo-env.sh
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile image --locked --target "$target" --bin cairn
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/bin"
cp "$CARGO_TARGET_DIR/$target/image/cairn" "$context/bin/cairn"
strip "$context/bin/cairn"
ln -s cairn "$context/bin/etcdctl"
ln -s cairn "$context/bin/etcd"
cp Containerfile "$context/"
"${CONTAINER_TOOL:-docker}" build -q -t cairn:latest -f "$context/Containerfile" "$context" >/dev/null
echo "built cairn:latest: binary $(du -h "$context/bin/cairn" | cut -f1), image $("${CONTAINER_TOOL:-docker}" image inspect cairn:latest --format '{{.Size}}' | numfmt --to=si)"

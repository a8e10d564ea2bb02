#!/usr/bin/env bash
# build-etcd-benchmark.sh — build etcd's own load generator, `tools/benchmark`,
# from Debian's etcd source package, fully offline.
#
# Why: comparing cairn against etcd is fairest with the load generator the
# etcd project itself uses. It is not shipped as a binary in any Debian
# package, and this machine reaches no Go module proxy or GitHub, so a module
# build (`go build` with go.mod) cannot fetch its dependencies. Debian does,
# however, ship etcd 3.4's Go sources and every library they import as
# golang-*-dev packages under /usr/share/gocode/src. So we:
#   1. enable deb-src for the Debian mirrors already configured (if needed),
#   2. `apt-get source etcd` (same version as golang-etcd-server-dev) to get
#      tools/benchmark, which golang-etcd-server-dev does not ship,
#   3. build it in GOPATH mode (GO111MODULE=off) with
#      GOPATH=<cache>/gopath:/usr/share/gocode, where <cache>/gopath/src holds
#      only go.etcd.io/etcd/tools/benchmark and every other import
#      (go.etcd.io/etcd/clientv3, pkg/report, cobra, grpc, ...) resolves from
#      Debian's tree. The import paths already match; nothing is rewritten.
#
# Output: <cache>/benchmark (default cache /var/cache/etcd-benchmark, override
# with ETCD_BENCHMARK_DIR). Idempotent: if the binary exists and runs, it is
# reused. All progress goes to stderr; the last (only) line on stdout is the
# binary's path, so callers can do  BENCH=$(scripts/build-etcd-benchmark.sh).
set -euo pipefail

CACHE_DIR=${ETCD_BENCHMARK_DIR:-/var/cache/etcd-benchmark}
BIN="$CACHE_DIR/benchmark"
DEB_GOPATH=/usr/share/gocode

log() { echo "build-etcd-benchmark: $*" >&2; }

if [ -x "$BIN" ] && "$BIN" --help >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi

# Packages: the Go toolchain, etcd 3.4's Go sources, dpkg-dev for
# `apt-get source`, and (explicitly, though golang-etcd-server-dev already
# depends on them) the libraries that tools/benchmark imports directly.
PKGS=(
  golang-go
  golang-etcd-server-dev
  dpkg-dev
  golang-github-bgentry-speakeasy-dev
  golang-github-dustin-go-humanize-dev
  golang-github-spf13-cobra-dev
  golang-go.uber-zap-dev
  golang-golang-x-time-dev
  golang-google-grpc-dev
  golang-gopkg-cheggaaa-pb.v1-dev
)

# --- 1. deb-src -------------------------------------------------------------
have_deb_src() {
  grep -qsE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources 2>/dev/null
}

need_update=0
if ! have_deb_src; then
  log "no deb-src entries configured; adding them for the existing Debian mirrors"
  tmp=$(mktemp)
  # deb822 files: copy the stanzas whose Types is plain "deb" as deb-src.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    grep -qE 'debian\.org|debian/?$' "$f" || continue
    awk -v RS= -v ORS='\n\n' \
      '/(^|\n)Types:[[:space:]]*deb[[:space:]]*(\n|$)/ && /debian/ {
         sub(/Types:[[:space:]]*deb[[:space:]]*(\n|$)/, "Types: deb-src\n"); print }' \
      "$f" >>"$tmp"
  done
  if [ -s "$tmp" ]; then
    "${SUDO[@]}" install -m 0644 "$tmp" /etc/apt/sources.list.d/etcd-benchmark-src.sources
  else
    # one-line style: mirror every "deb" line that points at Debian.
    : >"$tmp"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -e "$f" ] || continue
      sed -nE 's/^[[:space:]]*deb[[:space:]]+(.*debian.*)$/deb-src \1/p' "$f" >>"$tmp"
    done
    if [ ! -s "$tmp" ]; then
      rm -f "$tmp"
      log "could not find a Debian 'deb' entry to derive deb-src from"
      exit 1
    fi
    "${SUDO[@]}" install -m 0644 "$tmp" /etc/apt/sources.list.d/etcd-benchmark-src.list
  fi
  rm -f "$tmp"
  need_update=1
fi

if [ "$need_update" -eq 0 ]; then
  # Lists may be missing or stale (fresh container): check what we need.
  if ! apt-cache showsrc etcd 2>/dev/null | grep -q '^Package: etcd$' ||
     ! apt-cache show golang-etcd-server-dev >/dev/null 2>&1; then
    need_update=1
  fi
fi
if [ "$need_update" -eq 1 ]; then
  log "apt-get update"
  "${SUDO[@]}" apt-get update >&2
fi

# --- 2. packages ------------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
    missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

# --- 3. etcd source, same version as the installed Go sources ----------------
SRC_VER=$(dpkg-query -W -f '${source:Version}' golang-etcd-server-dev)
UPSTREAM_VER=${SRC_VER%-*}
UPSTREAM_VER=${UPSTREAM_VER#*:}
SRC_PARENT="$CACHE_DIR/source"
SRC_TREE="$SRC_PARENT/etcd-$UPSTREAM_VER"
mkdir -p "$CACHE_DIR"
if [ ! -f "$SRC_TREE/tools/benchmark/main.go" ]; then
  log "apt-get source etcd=$SRC_VER"
  rm -rf "$SRC_PARENT"
  mkdir -p "$SRC_PARENT"
  # Download only, then unpack with dpkg-source (applies Debian's patches).
  # Running as root, apt warns that _apt cannot write here; that is harmless.
  (cd "$SRC_PARENT" && apt-get source --download-only "etcd=$SRC_VER" >&2)
  (cd "$SRC_PARENT" && dpkg-source -x ./etcd_*.dsc "etcd-$UPSTREAM_VER" >&2)
fi
if [ ! -f "$SRC_TREE/tools/benchmark/main.go" ]; then
  log "tools/benchmark not found in $SRC_TREE"
  exit 1
fi

# --- 4. GOPATH build -----------------------------------------------------------
GOPATH_DIR="$CACHE_DIR/gopath"
PKG_DIR="$GOPATH_DIR/src/go.etcd.io/etcd/tools/benchmark"
rm -rf "$GOPATH_DIR"
mkdir -p "$(dirname "$PKG_DIR")"
cp -r "$SRC_TREE/tools/benchmark" "$PKG_DIR"

log "go build (GOPATH mode) -> $BIN"
(
  cd "$PKG_DIR"
  export GO111MODULE=off GOFLAGS= GOPROXY=off GOWORK=off
  export GOPATH="$GOPATH_DIR:$DEB_GOPATH"
  export GOCACHE="$CACHE_DIR/go-build"
  go build -o "$BIN.tmp" .
)
mv -f "$BIN.tmp" "$BIN"

if ! "$BIN" --help >/dev/null 2>&1; then
  log "built $BIN but it does not run"
  exit 1
fi
log "built $BIN"
echo "$BIN"

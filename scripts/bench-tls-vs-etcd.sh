#!/usr/bin/env bash
# What TLS costs: put throughput with 64 clients over plaintext and over TLS
# (client certificates required, as the installation guides configure it),
# for cairn and for real etcd (Debian's etcd-server), one member each, in the
# same run with the same client (examples/kv_bench.rs).
#   scripts/bench-tls-vs-etcd.sh [TOTAL_PUTS] [VALUE_BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-20000}
value_bytes=${2:-256}
members=1
bench_examples=kv_bench
. scripts/bench-lib.sh

certs=$work/certs
mkdir -p "$certs"
(
  cd "$certs"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -subj /CN=bench-ca -keyout ca.key -out ca.crt
  for name in server client; do
    openssl genrsa -out $name.key 2048
    openssl req -new -key $name.key -subj /CN=$name -out $name.csr
    printf '[SAN]\nsubjectAltName=IP:127.0.0.1\n' >$name.ext
    openssl x509 -req -sha256 -in $name.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
      -extensions SAN -extfile $name.ext -out $name.crt
  done
) >/dev/null 2>&1

declare -A rate p99
for kind in etcd cairn; do
  binary=$bin/cairn; [ "$kind" = etcd ] && binary=$(command -v etcd)
  for scheme in http https; do
    client_scheme=$scheme tls_flags=() curl_tls=()
    if [ "$scheme" = https ]; then
      tls_flags=(--cert-file "$certs/server.crt" --key-file "$certs/server.key" --client-cert-auth
        --trusted-ca-file "$certs/ca.crt")
      curl_tls=(--cacert "$certs/ca.crt" --cert "$certs/client.crt" --key "$certs/client.key")
    fi
    start_cluster "$kind" "$binary" 23800
    out=$(ETCDCTL_CACERT=$certs/ca.crt ETCDCTL_CERT=$certs/client.crt ETCDCTL_KEY=$certs/client.key \
      "$bin/examples/kv_bench" "$scheme://127.0.0.1:23810" 64 "$total" "$value_bytes" put)
    field() { echo "$out" | sed "s/.*\"$1\":\([0-9.]*\).*/\1/"; }
    rate[$kind-$scheme]=$(field per_sec); p99[$kind-$scheme]=$(field p99_ms)
    stop_all
  done
done

echo "puts: $total with 64 clients, value: $value_bytes bytes, one member"
printf '%-7s %-6s %10s %9s\n' server scheme req/s p99_ms
for kind in etcd cairn; do
  for scheme in http https; do
    printf '%-7s %-6s %10s %9s\n' "$kind" "$scheme" "${rate[$kind-$scheme]}" "${p99[$kind-$scheme]}"
  done
  awk -v t="${rate[$kind-https]}" -v p="${rate[$kind-http]}" -v k="$kind" \
    'BEGIN { printf "%s: TLS / plaintext throughput %.2fx\n", k, t / p }'
done
awk -v c="${rate[cairn-https]}" -v e="${rate[etcd-https]}" 'BEGIN { printf "cairn / etcd over TLS: %.2fx\n", c / e }'
awk -v c="${rate[cairn-http]}" -v e="${rate[etcd-http]}" 'BEGIN { printf "cairn / etcd plaintext: %.2fx\n", c / e }'

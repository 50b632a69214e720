#!/usr/bin/env bash
# Webhook load benchmark: start weftd (release build, generated certificate)
# with a namespace labelled istio-injection=enabled, send 10,000
# AdmissionReviews over keep-alive HTTPS, print reviews/s and latency
# percentiles, stop weftd. Usage: bench/inject/run.sh [REQUESTS] [CONNECTIONS]
# Runs twice: identical pods (a ReplicaSet scaling up; renderings are
# reused) and distinct pods (every review renders its templates).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weft-target}"
requests="${1:-10000}"
connections="${2:-4}"
cargo build --release -q -p weft-control --bin weftd --example webhook_load
work="$(mktemp -d)"
cleanup() {
  if [[ -n "${weftd_pid:-}" ]]; then kill "$weftd_pid" 2>/dev/null || true; wait "$weftd_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/namespaces.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata:
  name: bench
  labels:
    istio-injection: enabled
YAML
RUST_LOG=warn "$CARGO_TARGET_DIR/release/weftd" --config "file://$work" \
  --webhook-addr 127.0.0.1:0 --ready-addr 127.0.0.1:0 --ca-bundle-out "$work/ca.pem" \
  > "$work/weftd.out" &
weftd_pid=$!
for _ in $(seq 100); do grep -q webhook-addr= "$work/weftd.out" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's/.*webhook-addr=\([^ ]*\).*/\1/p' "$work/weftd.out")"
[[ -n "$addr" ]] || { echo "weftd did not start" >&2; exit 1; }
echo "weftd $addr, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
for mode in "" --distinct; do
  "$CARGO_TARGET_DIR/release/examples/webhook_load" --addr "$addr" --ca "$work/ca.pem" \
    --requests "$requests" --connections "$connections" --namespace bench $mode
done

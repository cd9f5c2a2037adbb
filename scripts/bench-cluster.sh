#!/usr/bin/env bash
# Measures the cluster against the same clients talking straight to a
# backend, in one run of "zeoraid bench":
#   direct     a zeoraid backend, no proxy
#   proxy      one proxy (alone) over three zeoraid backends
#   cluster    a cluster of three proxies over three zeoraid backends, the
#              clients spread over the three proxies
# It also prints the CPU seconds per 1,000 operations of every process
# (the proxies' and the backends'), so the proxy's cost shows even where
# clients, proxies and backends share this machine's cores.
# Each target has backends to itself (a proxy must be the only writer of
# its backends), all fresh and empty, same settings (the backends with
# --transaction-timeout 15s, as deploy/ sets them).
#   scripts/bench-cluster.sh [extra zeoraid bench flags, e.g. --duration 20s --clients 8]
# Loopback only; temporary data directories are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/zeoraid" ./cmd/zeoraid

# free_port prints a TCP port nobody listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_banner NAME: waits for "ZEO server ... on ADDR" in NAME's output
# and sets $addr.
wait_banner() {
  local name=$1
  for _ in $(seq 600); do
    if addr=$(sed -nE 's/^zeoraid [a-z]+: ZEO server .* on ([0-9.]+:[0-9]+),.*/\1/p' "$work/$name.out") && [[ -n "$addr" ]]; then
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not start; log:" >&2; tail -40 "$work/$name.log" >&2; exit 1
}

# start NAME ARGS...: starts "zeoraid ARGS..." in the background.
start() {
  local name=$1; shift
  "$work/zeoraid" "$@" --log-level warn >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
}

backend() { start "$1" backend --listen 127.0.0.1:0 --data "$work/$1" --transaction-timeout 15s; wait_banner "$1"; }

backend direct; direct=$addr

backend p-b1; pb1=$addr
backend p-b2; pb2=$addr
backend p-b3; pb3=$addr
start proxy proxy --listen 127.0.0.1:0 --http "" --data "$work/proxy" --backend "b1=$pb1" --backend "b2=$pb2" --backend "b3=$pb3"
wait_banner proxy; proxy=$addr

backend c-b1; cb1=$addr
backend c-b2; cb2=$addr
backend c-b3; cb3=$addr
peers=()
zeo=()
for i in 1 2 3; do
  zeo+=("127.0.0.1:$(free_port)")
  peers+=(--peer "n$i=127.0.0.1:$(free_port),127.0.0.1:$(free_port),127.0.0.1:$(free_port)")
done
for i in 1 2 3; do
  http=$(printf '%s\n' "${peers[@]}" | sed -nE "s/^n$i=[^,]+,([^,]+),.*/\1/p")
  start "n$i" proxy --node-id "n$i" --listen "${zeo[$((i-1))]}" --http "$http" --data "$work/n$i" \
    --backend "b1=$cb1" --backend "b2=$cb2" --backend "b3=$cb3" "${peers[@]}"
done
for i in 1 2 3; do wait_banner "n$i"; done
cluster=$(IFS=,; echo "${zeo[*]}")

# CPU per 1,000 operations of every process: the targets' own, and the
# backends behind the proxies.
cpu=(--cpu "proxy-backends=$pb1,$pb2,$pb3" --cpu "cluster-backends=$cb1,$cb2,$cb3")
echo "zeoraid bench --target direct=$direct --target proxy=$proxy --target cluster=$cluster ${cpu[*]} ${*:-}"
"$work/zeoraid" bench --target "direct=$direct" --target "proxy=$proxy" --target "cluster=$cluster" "${cpu[@]}" "$@"

#!/usr/bin/env bash
# Measures what the RAID-1 proxy costs, in one run of "zeoraid bench":
#   direct   a zeoraid backend, no proxy
#   proxy-1  a proxy over one zeoraid backend (its own), pipelining commits
#            (the default --pipeline-commits=true)
#   proxy-3  a proxy over three zeoraid backends (its own), pipelining
#   proxy-3-nocache  the same with its revision cache off (--cache-size 0):
#            every load a miss that crosses to a backend
#   proxy-1-serial   a proxy over one backend with
#            --pipeline-commits=false: each commit holds the lease until its
#            backend answered tpc_finish
# Each target has backends to itself (a proxy must be the only writer of
# its backends), all fresh and empty, same settings.
#   scripts/bench-proxy.sh [extra zeoraid bench flags, e.g. --duration 20s --clients 8]
# Set MSGPACK=1 to run everything in M5 (msgpack). Loopback only;
# temporary data directories are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/zeoraid" ./cmd/zeoraid
enc=()
if [[ "${MSGPACK:-}" == 1 ]]; then enc=(--msgpack); fi

# shellcheck source=start-server.sh
source scripts/start-server.sh

backend() { start_server "$1" backend --data "$work/$1" "${enc[@]}"; }

backend direct;  direct=$addr
backend p1-b1;   p1b1=$addr
start_server proxy-1 proxy --http "" --data "$work/proxy-1" --pipeline-commits=true --backend "b1=$p1b1" "${enc[@]}"; proxy1=$addr
backend p3-b1;   p3b1=$addr
backend p3-b2;   p3b2=$addr
backend p3-b3;   p3b3=$addr
start_server proxy-3 proxy --http "" --data "$work/proxy-3" --pipeline-commits=true --backend "b1=$p3b1" --backend "b2=$p3b2" --backend "b3=$p3b3" "${enc[@]}"; proxy3=$addr

backend p3n-b1;  p3nb1=$addr
backend p3n-b2;  p3nb2=$addr
backend p3n-b3;  p3nb3=$addr
start_server proxy-3-nocache proxy --http "" --data "$work/proxy-3-nocache" --pipeline-commits=true --cache-size 0 --backend "b1=$p3nb1" --backend "b2=$p3nb2" --backend "b3=$p3nb3" "${enc[@]}"; proxy3n=$addr

backend p1s-b1;  p1sb1=$addr
start_server proxy-1-serial proxy --http "" --data "$work/proxy-1-serial" --pipeline-commits=false --backend "b1=$p1sb1" "${enc[@]}"; proxy1s=$addr

echo "zeoraid bench --target direct=$direct --target proxy-1=$proxy1 --target proxy-3=$proxy3 --target proxy-3-nocache=$proxy3n --target proxy-1-serial=$proxy1s ${*:-}"
"$work/zeoraid" bench --target "direct=$direct" --target "proxy-1=$proxy1" --target "proxy-3=$proxy3" --target "proxy-3-nocache=$proxy3n" --target "proxy-1-serial=$proxy1s" "${enc[@]}" "$@"

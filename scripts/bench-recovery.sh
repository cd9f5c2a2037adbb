#!/usr/bin/env bash
# Measures how fast a proxy recovers a backend that missed writes: a proxy
# over two fresh zeoraid backends; b2 is disabled; "zeoraid bench" commits
# through the proxy for a while (4 clients, one object of --object-size per
# transaction); then "zeoraid recover b2" runs and its progress (MiB/s,
# transactions, lag) is printed until b2 is optimal again.
#   scripts/bench-recovery.sh [object size in bytes, default 65536] [commit duration, default 15s]
# Loopback only; temporary data directories are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-65536}
dur=${2:-15s}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/zeoraid" ./cmd/zeoraid

# shellcheck source=start-server.sh
source scripts/start-server.sh

start_server b1 backend --data "$work/b1"; b1=$addr
start_server b2 backend --data "$work/b2"; b2=$addr
http=127.0.0.1:$(( 20000 + RANDOM % 20000 ))
start_server proxy proxy --data "$work/proxy" --http "$http" --auto-recover=false \
  --backend "b1=$b1" --backend "b2=$b2"
proxy=$addr
url="http://$http"
for _ in $(seq 100); do "$work/zeoraid" status --url "$url" >/dev/null 2>&1 && break; sleep 0.1; done
"$work/zeoraid" disable --url "$url" b2
echo "committing for $dur with b2 disabled ($size-byte objects)..."
"$work/zeoraid" bench --target "proxy=$proxy" --clients 4 --duration "$dur" --phases commit --object-size "$size"
echo "b1 holds $(du -sh "$work/b1" | cut -f1)"
start=$(date +%s%N)
"$work/zeoraid" recover --url "$url" b2
until "$work/zeoraid" status --url "$url" | grep -Eq '^ +b2 +optimal'; do sleep 0.5; done
end=$(date +%s%N)
echo "b2 optimal again after $(( (end - start) / 1000000 )) ms"

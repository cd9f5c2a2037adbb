#!/usr/bin/env bash
# Compares the built-in backend with Python's ZEO + FileStorage (when
# Python's ZEO is importable) in one run, with "zeoraid bench".
#   scripts/bench-backends.sh [extra zeoraid bench flags, e.g. --duration 20s]
# Uses ZEORAID_PYTHON (default /usr/bin/python3). Loopback only; temporary
# data directories are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${ZEORAID_PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/zeoraid" ./cmd/zeoraid
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

targets=()
port=$(free_port)
"$work/zeoraid" backend --listen "127.0.0.1:$port" --data "$work/backend" --log-level warn >"$work/backend.log" 2>&1 &
pids+=($!)
wait_port "$port"
targets+=(--target "go-backend=127.0.0.1:$port")

if "$py" -c 'import ZEO' 2>/dev/null; then
  fport=$(free_port)
  mkdir -p "$work/fs"
  cat >"$work/fs/zeo.conf" <<CONF
<zeo>
  address 127.0.0.1:$fport
  client-conflict-resolution true
</zeo>
<filestorage 1>
  path $work/fs/Data.fs
</filestorage>
CONF
  "$py" -m ZEO.runzeo -C "$work/fs/zeo.conf" >"$work/fs/runzeo.log" 2>&1 &
  pids+=($!)
  wait_port "$fport"
  targets+=(--target "python-filestorage=127.0.0.1:$fport")
else
  echo "(Python ZEO not importable with $py: measuring the Go backend only)"
fi
"$work/zeoraid" bench "${targets[@]}" "$@"

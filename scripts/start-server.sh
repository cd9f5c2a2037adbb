# Sourced by the bench scripts (not run): start_server NAME ARGS... starts
# "$work/zeoraid ARGS... --listen 127.0.0.1:0" in the background, adds
# its pid to $pids and sets $addr from its banner. Needs $work and $pids.
start_server() {
  local name=$1; shift
  "$work/zeoraid" "$@" --listen 127.0.0.1:0 --log-level warn >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 300); do
    if addr=$(sed -nE 's/^zeoraid [a-z]+: ZEO server .* on ([0-9.]+:[0-9]+),.*/\1/p' "$work/$name.out") && [[ -n "$addr" ]]; then
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not start; log:" >&2; cat "$work/$name.log" >&2; exit 1
}

#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 10s).
# Long runs by hand: FUZZTIME=30m scripts/fuzz.sh
#
# Go before 1.27 can end a duration-bounded fuzz run with a bare
# "context deadline exceeded" at the -fuzztime deadline although no input
# failed (a race in the fuzz coordinator, https://go.dev/issue/75804). A
# failing input is always written to testdata/fuzz/<target>/ and reported
# with its file name; so a run that ends with exactly that message and
# wrote no input is run once more, and if the race hits again it is
# reported as such and not counted as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# inputs counts the files in a corpus directory (0 when there is none).
inputs() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }

# coordinator_race: the run in $log failed only by the coordinator's
# deadline race, and no failing input was written to $1.
coordinator_race() {
  local corpus=$1 before=$2
  grep -q '^--- FAIL: Fuzz' "$log" &&
    [ "$(grep -A1 '^--- FAIL: Fuzz' "$log" | tail -n1 | sed 's/^[[:space:]]*//')" = "context deadline exceeded" ] &&
    ! grep -q 'Failing input written to' "$log" &&
    [ "$(inputs "$corpus")" = "$before" ]
}

for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -h -o '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    corpus="$dir/testdata/fuzz/$target"
    for attempt in 1 2; do
      echo "== $pkg $target ($fuzztime)"
      before=$(inputs "$corpus")
      if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$log"; then
        break
      fi
      if ! coordinator_race "$corpus" "$before"; then
        exit 1
      fi
      if [ "$attempt" = 2 ]; then
        echo "== $target: the Go fuzz coordinator's deadline race again (go.dev/issue/75804); no input failed"
      else
        echo "== $target: ended by the Go fuzz coordinator's deadline race (go.dev/issue/75804), no input failed; once more"
      fi
    done
  done
done

#!/usr/bin/env bash
# Checks the import boundaries of architecture.md: which package may import
# what. Test files count too. Prints every violation; exits 1 if any.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0
violation() { echo "import boundary: $1 imports $2 ($3)"; fail=1; }

while read -r pkg imports; do
  rel=${pkg#"$mod"}; rel=${rel#/}
  for imp in $imports; do
    irel=""
    [[ $imp == "$mod"/* ]] && irel=${imp#"$mod"/}
    case $rel in
      raidcore/zodb|raidcore/zodb/*)
        if [[ -n $irel && $irel != raidcore/zodb && $irel != raidcore/zodb/* ]]; then
          violation "$rel" "$irel" "raidcore/zodb imports nothing else from the module"
        fi ;;
      transport|transport/*)
        case $irel in
          raidcore/zodb|raidcore/zodb/*|transport/*|"") ;;
          *) violation "$rel" "$irel" "transport may use only raidcore/zodb from the rest of the module" ;;
        esac ;;
      raidcore|raidcore/*)
        case $irel in
          cluster|cluster/*|fsm|fsm/*|cmd/*) violation "$rel" "$irel" "raidcore must not know the cluster" ;;
        esac ;;
      fsm|fsm/*)
        case $irel in
          raidcore|raidcore/*|transport/*|cluster|cluster/*|cmd/*) violation "$rel" "$irel" "fsm is pure" ;;
        esac
        case $imp in net|net/*|os|os/*) violation "$rel" "$imp" "fsm does no I/O" ;; esac ;;
      cluster|cluster/*)
        case $irel in
          cmd/*) violation "$rel" "$irel" "cluster must not import cmd" ;;
        esac ;;
    esac
    case $imp in
      github.com/hashicorp/raft*|github.com/hashicorp/memberlist*)
        case $rel in cluster|cluster/*|cmd/*|integration|integration/*) ;; *) violation "$rel" "$imp" "raft and memberlist belong to cluster" ;; esac ;;
      github.com/spf13/viper*)
        case $rel in cmd/*) ;; *) violation "$rel" "$imp" "configuration is read only in cmd" ;; esac ;;
    esac
  done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./...)

# fsm must be deterministic: no clock, no randomness.
if grep -rnE 'time\.Now|math/rand|crypto/rand' --include='*.go' fsm 2>/dev/null | grep -v _test.go; then
  echo "import boundary: fsm uses the clock or randomness"; fail=1
fi
exit $fail

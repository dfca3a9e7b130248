#!/usr/bin/env bash
# Pin what a refactor must not move: run every built-in scenario with its default controllers into
# OUT/<scenario>/ (run.json aside, every file is deterministic), then compare two such folders.
#   scripts/pin_outputs.sh run OUT          # from the checkout this script is in
#   scripts/pin_outputs.sh diff BASE NEW    # exit 1 and list the files that differ
set -euo pipefail
cmd=${1:?run OUT | diff BASE NEW}
case "$cmd" in
  run)
    out=${2:?OUT}; mkdir -p "$out"
    cd "$(dirname "$0")/.."
    for f in scenarios/*.yaml; do
      name=$(basename "$f" .yaml)
      PYTHONPATH=$PWD python -m sim "$f" --out "$out/$name" --jobs "${JOBS:-2}" --quiet
    done ;;
  diff)
    base=${2:?BASE}; new=${3:?NEW}
    diff -rq -x run.json -x plots -x report.html "$base" "$new" && echo "identical: $(find "$base" -type f ! -name run.json | wc -l) files" ;;
  *) echo "usage: $0 run OUT | diff BASE NEW" >&2; exit 2 ;;
esac

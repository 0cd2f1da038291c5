#!/usr/bin/env bash
# A/B start-up time: seconds until `bench` answers a command that builds no model (a report of a missing runs
# folder, an unknown method, a missing input), a git revision (A) against the working tree (B), alternating
# A, B, A, B, ... so that a shared machine's drift falls on both sides alike. Prints each command's median per
# side and B/A.
#
#   scripts/start_ab.sh REV [ROUNDS]        # ROUNDS: 5 by default
#
# A runs from a temporary git worktree of REV with this checkout's environment (.venv).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: scripts/start_ab.sh REV [ROUNDS]" >&2
  exit 2
fi
rev=$1 rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
scratch=$(mktemp -d)
tree=$scratch/a
trap 'git -C "$here" worktree remove --force "$tree" 2> /dev/null || true; rm -rf "$scratch"' EXIT
git -C "$here" worktree add --quiet --detach "$tree" "$rev"
commands=("report --runs $scratch/none" "run --method none" "predict $scratch/run $scratch/frames")
for round in $(seq 1 "$rounds"); do
  for side in a b; do
    dir=$here; [ "$side" = a ] && dir=$tree
    for i in "${!commands[@]}"; do
      start=$(date +%s.%N)
      # shellcheck disable=SC2086  # each command is its words
      (cd "$scratch" && PYTHONPATH=$dir "$python" -m benchmark.cli ${commands[$i]} > /dev/null 2>&1) || true
      echo "$side $i $start $(date +%s.%N)" >> "$scratch/times"
    done
  done
done
"$python" - "$scratch/times" "$rev" "${commands[@]}" <<'PY'
import statistics, sys

path, rev, *commands = sys.argv[1:]
times = {}
for line in open(path):
    side, i, start, end = line.split()
    times.setdefault((side, int(i)), []).append(float(end) - float(start))
print(f"| bench ... (seconds, median of {len(times['a', 0])}) | A: {rev} | B: working tree | B/A |")
print("| --- | ---: | ---: | ---: |")
for i, command in enumerate(commands):
    a, b = statistics.median(times["a", i]), statistics.median(times["b", i])
    print(f"| `{command.split(' /')[0]}` | {a:.2f} | {b:.2f} | {b / a:.2f} |")
PY

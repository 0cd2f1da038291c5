#!/usr/bin/env bash
# A/B start-up time: seconds until `bench` answers a command that builds no model (a report of a missing runs
# folder, an unknown method, a missing input), a git revision (A) against the working tree (B), alternating
# A, B, A, B, ... so that a shared machine's drift falls on both sides alike, after one untimed round (which
# writes each side's bytecode). Each command must end in its one-line error (exit code 2); prints each command's
# median per side and B/A.
#
#   scripts/start_ab.sh REV [ROUNDS]        # ROUNDS: 5 by default
#
# A runs from a temporary git worktree of REV with this checkout's environment (.venv, or $PYTHON).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || ! [[ ${2:-5} =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/start_ab.sh REV [ROUNDS >= 1]" >&2
  exit 2
fi
rev=$1 rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
[[ $python == /* ]] || python=$PWD/$python  # the commands run from a scratch folder
scratch=$(mktemp -d)
tree=$scratch/a
trap 'git -C "$here" worktree remove --force "$tree" 2> /dev/null || true; rm -rf "$scratch"' EXIT
git -C "$here" worktree add --quiet --detach "$tree" "$rev"
commands=("report --runs none" "run --method none" "predict run frames")  # paths in the scratch folder: none exist
for ((round = 0; round <= rounds; round++)); do
  for side in a b; do
    dir=$here; [ "$side" = a ] && dir=$tree
    for i in "${!commands[@]}"; do
      read -ra words <<< "${commands[$i]}"
      start=$EPOCHREALTIME
      code=0
      (cd "$scratch" && PYTHONPATH=$dir "$python" -m benchmark.cli "${words[@]}" > /dev/null 2> "$scratch/err") || code=$?
      end=$EPOCHREALTIME
      if [ "$code" -ne 2 ]; then
        echo "start_ab.sh: side $side (${dir}): bench ${commands[$i]} exited $code, not with its one-line error:" >&2
        cat "$scratch/err" >&2
        exit 1
      fi
      [ "$round" -eq 0 ] || echo "$side $i $start $end" >> "$scratch/times"
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
    print(f"| `{command}` | {a:.2f} | {b:.2f} | {b / a:.2f} |")
PY

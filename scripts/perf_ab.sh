#!/usr/bin/env bash
# A/B timing: `bench perf` rows of a git revision (A) against the working tree (B), runs alternating
# A, B, A, B, ... so that slow drift of a shared machine falls on both sides alike. Each run's ratios are
# already against its own CLIP forward (a); this prints every run and the median per side.
#
#   scripts/perf_ab.sh REV ROUNDS OUT [bench perf options]
#   scripts/perf_ab.sh c8f8762 5 /tmp/ab --backbone ViT-B-16 --batch 2 --frames 6 --iters 5 --methods side_tuning
#
# A runs from a temporary git worktree of REV with this checkout's environment (.venv).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: scripts/perf_ab.sh REV ROUNDS OUT [bench perf options]" >&2
  exit 2
fi
rev=$1 rounds=$2
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$1"
out=$(cd "$1" && pwd)  # absolute: each side runs from its own tree
shift
if compgen -G "$out/[ab][0-9]*" > /dev/null; then
  echo "perf_ab.sh: $out already holds A/B runs; give an empty folder" >&2
  exit 2
fi
scratch=$(mktemp -d)
tree=$scratch/a
trap 'git -C "$here" worktree remove --force "$tree" 2> /dev/null || true; rm -rf "$scratch"' EXIT
git -C "$here" worktree add --quiet --detach "$tree" "$rev"
for round in $(seq 1 "$rounds"); do
  for side in a b; do
    dir=$here; [ "$side" = a ] && dir=$tree
    echo "round $round, $side ($([ "$side" = a ] && echo "$rev" || echo "working tree"))" >&2
    (cd "$dir" && PYTHONPATH=$dir "$python" -m benchmark.cli perf "$@" --out "$out/$side$round" > /dev/null)
  done
done
"$python" - "$out" "$rev" <<'PY'
import json, statistics, sys
from pathlib import Path

out, rev = Path(sys.argv[1]), sys.argv[2]
rows: dict = {}
for path in sorted(out.glob("[ab]*/*.json")):
    side = path.parent.name[0]
    for label, row in json.loads(path.read_text())["methods"].items():
        rows.setdefault(label, {"a": [], "b": []})[side].append(
            (row["step_over_clip_forward"], row["inference_over_clip_forward"], row["operators_train_step"]))
print(f"| method | side | runs | step / (a), each run | median | inference / (a), each run | median | operators per step |")
print("| --- | --- | ---: | --- | ---: | --- | ---: | ---: |")
for label, sides in rows.items():
    for side, name in (("a", rev), ("b", "working tree")):
        r = sides[side]
        if r:
            print(f"| {label} | {name} | {len(r)} | {', '.join(f'{x[0]:.2f}' for x in r)} | "
                  f"{statistics.median(x[0] for x in r):.2f} | {', '.join(f'{x[1]:.2f}' for x in r)} | "
                  f"{statistics.median(x[1] for x in r):.2f} | {r[0][2]:,} |")
PY

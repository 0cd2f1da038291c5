#!/usr/bin/env bash
# The GPU performance table of the README (ViT-B/16, 6 frames, bf16), in one go, most valuable first:
#   1. every method at batch 16, with each row's top kernels (--top-ops 10); bench perf measures the rows the
#      targets judge first (side tuning, full fine-tuning, ...), so a step stopped at its budget keeps those
#   2. frozen, side tuning (+recompute) and full fine-tuning at batch 64, with top kernels
#   3. at batch 16: the side networks' rate per family of kernels against the CLIP forward's, and their kernel
#      time against their wall time (scripts/side_rates.py); their attention along every exact path
#      (scripts/attention_paths.py: each SDPA backend, explicit, zero-padded head size), paired with the model's
#   4. the same rows as 2 compiled (train.compile) at batch 16; then, only when given a budget (C64, CG16: 0 by
#      default), compiled at batch 64 and with CUDA graphs (--compile-mode reduce-overhead) at batch 16
#      (COMPILED=side_tuning,full_finetune: other rows for the compiled steps, e.g. fewer, as each compiles anew)
# Each step has a wall-clock budget of its own (seconds, from the environment), so one slow step cannot take
# the others' time; bench perf saves every row as it is measured, so a step stopped at its budget keeps the
# rows it finished (<name>.partial.json and .md).
#
#   scripts/gpu_perf.sh OUT                 # writes OUT/*.json, OUT/*.md and OUT/log
#   B16=210 B64=100 RATES=90 ATT=45 C16=120 C64=0 CG16=0 scripts/gpu_perf.sh OUT   # budgets; 0 skips a step
#     (the defaults add up to 565 s; a step still running at its budget gets SIGINT, and SIGKILL 20 s later)
#   BACKBONE=clip-tiny DEVICE=cpu AMP=off scripts/gpu_perf.sh OUT      # the same steps elsewhere (a dry run)
#
# Everything runs on one interpreter, from this checkout: $PYTHON if set, else the checkout's .venv/bin/python
# if there is one (make install), else python3 (dependencies on its path, e.g. a machine with torch but without
# this package installed): `$python -m benchmark.cli` and the scripts of step 3.
set -uo pipefail
if [ $# -ne 1 ]; then
  echo "usage: scripts/gpu_perf.sh OUT" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd) || exit 2  # absolute: the commands run from the checkout
cd "$(dirname "$0")/.." || exit 2
if [ -n "${PYTHON:-}" ]; then python=$PYTHON; elif [ -x .venv/bin/python ]; then python=.venv/bin/python
else python=python3; fi
bench=("$python" -m benchmark.cli)
export PYTHONUNBUFFERED=1
common=(perf --backbone "${BACKBONE:-ViT-B-16}" --frames 6 --device "${DEVICE:-cuda}" --amp "${AMP:-bf16}" --warmup 3
        --iters 10 --out "$out")
pair=frozen,side_tuning,side_tuning+recompute,full_finetune
compiled=${COMPILED:-$pair}
status=0

step() {  # step BUDGET ARGS...: one bench perf command under its budget; a budget of 0 skips it
  local budget=$1
  shift
  [ "$budget" -gt 0 ] || return 0
  echo "== ${bench[*]} ${common[*]} $* (budget ${budget}s)" | tee -a "$out/log"
  timeout --signal=INT --kill-after=20 "$budget" "${bench[@]}" "${common[@]}" "$@" 2>&1 | tee -a "$out/log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "== exit $rc (124 or 130: stopped at its budget; its finished rows are kept)" \
    | tee -a "$out/log"; status=1; }
}

run_script() {  # run_script BUDGET NAME ARGS...: scripts/NAME.py at batch 16 into OUT/<backbone>_<device>_b16_t6_NAME.md
  local budget=$1 name=$2
  shift 2
  [ "$budget" -gt 0 ] || return 0
  local args=(--backbone "${BACKBONE:-ViT-B-16}" --batch 16 --frames 6 --device "${DEVICE:-cuda}" --amp "${AMP:-bf16}"
              "$@")
  local table="$out/${BACKBONE:-ViT-B-16}_${DEVICE:-cuda}_b16_t6_$name.md"
  echo "== $python scripts/$name.py ${args[*]} (budget ${budget}s)" | tee -a "$out/log"
  { echo "Command: $python scripts/$name.py ${args[*]}"; echo; } > "$table"
  timeout --signal=INT --kill-after=20 "$budget" "$python" "scripts/$name.py" "${args[@]}" 2>> "$out/log" \
    | tee -a "$table" "$out/log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "== exit $rc (124 or 130: stopped at its budget)" | tee -a "$out/log"; status=1; }
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/log"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$out/log"
step "${B16:-210}" --batch 16 --top-ops 10
step "${B64:-100}" --batch 64 --top-ops 10 --methods "$pair"
run_script "${RATES:-90}" side_rates --iters 5
run_script "${ATT:-45}" attention_paths
step "${C16:-120}" --batch 16 --compile --methods "$compiled"
step "${C64:-0}" --batch 64 --compile --methods "$compiled"
step "${CG16:-0}" --batch 16 --compile --compile-mode reduce-overhead --methods "$compiled"
exit $status

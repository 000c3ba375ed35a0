#!/usr/bin/env bash
# The GPU window: one prepared call that trains and evaluates a profile's block on a lent GPU and returns its records.
#   here:   make gpu-data                    (the 25,000 offline training images and 2,000 test images, ~58 MiB, in .cache/gpu-data)
#           commit, then note the commit
#   there:  FGR_GIT_COMMIT=<commit> bash tools/gpu_window.sh          (device tool: carry .cache/gpu-data, timeout_s 540)
#   here:   .venv/bin/python tools/window_records.py import <files_at>/window.tar.gz     (into results/<profile>/; commit them)
# On CUDA it runs, in order: the checks (tools/gpu_window_checks.py: closed-form flow gradient, bf16 and the CUDA graph
# against eager float32, the bf16 matrix rate, each recipe's FLOPs per step); then the grids of PROFILES (default: gpu
# and gpu_lr) side by side, every row its own process and all of them on the one GPU, stopped DEADLINE seconds
# (default 360) after they start; then the finished rows' records packed into $OUT/window.tar.gz, with the log.
# Without CUDA it runs the same at PROFILES=tiny on the CPU (one task per core), as CI does, so that it cannot rot.
# Its runs live in WINDOW_DIR (default runs/window, ignored by git), so a second call on the same, still warm machine
# resumes the rows the deadline stopped (from their last epoch's checkpoint) and packs every finished row again;
# CHECKS=0 leaves the checks out of such a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s.%N)
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then device=cuda; default=gpu\ gpu_lr; else device=cpu; default=tiny; fi
profiles=${PROFILES:-$default}
OUT=${OUT:-$(mktemp -d)}
work=${WINDOW_DIR:-runs/window}
mkdir -p "$work"; work=$(cd "$work" && pwd)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
export FGR_RUNS=${FGR_RUNS:-$work/runs} FGR_CACHE=$work/cache   # FGR_RUNS given: reuse its runs (CI: the tiny book's)
if [ -e "$OUT/window.tar.gz" ]; then echo "gpu-window: $OUT/window.tar.gz exists; nothing is overwritten" >&2; exit 2; fi
data=${GPU_DATA:-.cache/gpu-data/cifar10-subset.tar.gz}
if [ -f "$data" ] && { [ "$device" = cuda ] || [ -n "${GPU_DATA:-}" ]; }; then   # on the CPU, the carried subset only when named
  [ -d "$work/data/cifar10" ] || { mkdir -p "$work/data"; tar -xzf "$data" -C "$work/data"; }
  export FGR_DATA=$work/data
elif [ "$device" = cuda ]; then
  echo "gpu-window: $data not found: make it here with make gpu-data and carry .cache/gpu-data" >&2; exit 2
fi
{
  echo "gpu-window: profiles $profiles on $device; runs in $FGR_RUNS; data ${FGR_DATA:-as fgr.data finds it}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$PY" -c "from fgr.data import load_cifar; [load_cifar('cifar10', s) for s in ('train', 'test')]"   # decoded once, cached for every task
  if [ "${CHECKS:-1}" = 1 ]; then "$PY" tools/gpu_window_checks.py --profile "${profiles%% *}" --out "$work/checks-$stamp.json"; fi
  pids=() records=()
  for p in $profiles; do
    workers=()
    if [ "$device" = cuda ]; then workers=(--workers "$("$PY" -c "from fgr.experiments import get_profile; print(len(get_profile('$p').rows))")"); fi
    "$PY" -m fgr.grid --profile "$p" --device "$device" "${workers[@]}" --threads 1 --deadline "${DEADLINE:-360}" --record "$work/grid-$p-$stamp.json" --quiet \
      > "$work/grid-$p-$stamp.log" 2>&1 &
    pids+=($!) records+=("$work/grid-$p-$stamp.json")
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  for p in $profiles; do echo "== grid $p"; cat "$work/grid-$p-$stamp.log"; done
  echo "gpu-window: grids ended (status $status) after $("$PY" -c "import time; print(round(time.time() - $started))") s"
  "$PY" tools/window_records.py pack --grid "${records[@]}" --checks "$work/checks-$stamp.json" --started "$started" --out "$OUT/window.tar.gz"
} 2>&1 | tee "$OUT/window.log"

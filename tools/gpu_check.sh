#!/usr/bin/env bash
# The GPU check, for a session that has a lent GPU: one call of at most 8 minutes, from the repository root.
#   here:   .venv/bin/python benchmarks/pack_gpu_data.py        (writes .cache/gpu-data/cifar10-subset.tar.gz, ~24 MB)
#   there:  bash tools/gpu_check.sh                            (carry: .cache/gpu-data; timeout_s 470)
# It runs `python -m fgr.bench --gpu-check`: CUDA correctness (closed form vs autograd flow gradient, bf16 vs float32
# penalty gradients), the benchmark at full width, and a few epochs of Standard and FGR on the carried CIFAR-10 subset;
# then benchmarks/compile_probe.py on CUDA.
# The record goes to benchmarks/results/ (commit it) and, where $OUT is set, to $OUT with the log.
# TRAINING=0 leaves out the training check (the record is then named *-cuda.json): the benchmark alone, for a rerun
# after a change to the step when the training check's record is still current.
# Without CUDA it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu-check: no CUDA device is available here (torch.cuda.is_available() is False); nothing to check."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
args=(--threads "${THREADS:-8}" --deadline "${DEADLINE:-390}" --out benchmarks/results)
if [ "${TRAINING:-1}" = 0 ]; then args+=(--device cuda); else args+=(--gpu-check); fi
data=${GPU_DATA:-.cache/gpu-data/cifar10-subset.tar.gz}
if [ -f "$data" ]; then
  root=$(mktemp -d); tar -xzf "$data" -C "$root"; args+=(--data-root "$root")
else
  echo "gpu-check: $data not found (make it with benchmarks/pack_gpu_data.py and carry .cache/gpu-data):" \
       "no training check, and random images for the benchmark"
fi
log=${OUT:+$OUT/gpu-check.log}
"$PY" -m fgr.bench "${args[@]}" 2>&1 | tee "${log:-/dev/null}"
if [ -n "${OUT:-}" ]; then cp "$(ls -t benchmarks/results/*.json | head -1)" "$OUT"/; fi
# torch.compile of the FGR step on CUDA (a measured alternative): benchmarks/compile_probe-cuda.json
"$PY" benchmarks/compile_probe.py --device cuda 2>&1 | tee -a "${log:-/dev/null}"
if [ -n "${OUT:-}" ]; then cp benchmarks/compile_probe-cuda.json "$OUT"/; fi

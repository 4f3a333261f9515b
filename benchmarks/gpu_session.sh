#!/usr/bin/env bash
# One lent-GPU session in at most 8 minutes: the Triton/CPU equality check, gpu-smoke, the throughput headline
# figures, in that order, each inside its own budget and writing its JSON under $OUT before the next starts.
# The plan (order, budgets, commands) lives in benchmarks/gpu_session.py; `--dry-run` prints it.
# Usage (repo root, on the GPU machine): OUT=/some/dir bash benchmarks/gpu_session.sh [--dry-run] [--parts equality,smoke]
set -u
OUT=${OUT:-results/gpu-session}
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [[ " $* " != *" --dry-run "* ]]; then
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >"$OUT/nvidia_smi.csv" 2>&1
fi
exec python3 -m benchmarks.gpu_session --out "$OUT" "$@"

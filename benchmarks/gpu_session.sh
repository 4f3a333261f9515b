#!/usr/bin/env bash
# One lent-GPU session of the throughput suite: installs nothing (the machine has torch, triton, timm),
# runs every section inside its own time budget and leaves JSON, markdown and the log under $OUT.
# Usage (repo root, on the GPU machine): OUT=/some/dir BUDGET=400 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-results/throughput}
BUDGET=${BUDGET:-400}
mkdir -p "$OUT"
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >"$OUT/nvidia_smi.csv" 2>&1
python3 -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__, 'cusparselt', torch.backends.cusparselt.version())"
# the suite writes <gpu>.json / <gpu>.md after every section, so a late failure keeps the earlier figures
timeout $((BUDGET + 90)) python3 -m benchmarks.throughput --out "$OUT" --budget-s "$BUDGET" --no-check 2>&1 | tee "$OUT/log.txt"
for f in "$OUT"/*.json; do
  slug=$(basename "$f" .json)
  [ -f "ci/thresholds/throughput_$slug.yaml" ] && python3 -m ci.check "$f" "ci/thresholds/throughput_$slug.yaml" | tee "$OUT/check_$slug.txt"
done
exit 0

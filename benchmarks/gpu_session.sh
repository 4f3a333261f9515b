#!/usr/bin/env bash
# One lent-GPU session: the throughput suite, make gpu-smoke and the ImageNet loader benchmark, each inside its
# own time budget, leaving JSON, markdown, logs and the threshold checks under $OUT. Installs nothing (the
# machine has torch, triton, timm; mmdet/mmcv are needed for the gpu-smoke mmdet row).
# Usage (repo root, on the GPU machine): OUT=/some/dir BUDGET=400 PARTS=throughput,smoke,loader bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-results}
BUDGET=${BUDGET:-400}
PARTS=${PARTS:-throughput,smoke,loader}
mkdir -p "$OUT"
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >"$OUT/nvidia_smi.csv" 2>&1
python3 -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__, 'cusparselt', torch.backends.cusparselt.version())"
GPU=$(python3 -c "import torch; from benchmarks.throughput import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
if [[ $PARTS == *throughput* ]]; then
  mkdir -p "$OUT/throughput"
  # the suite writes <gpu>.json / <gpu>.md after every section, so a late failure keeps the earlier figures
  timeout $((BUDGET + 90)) python3 -m benchmarks.throughput --out "$OUT/throughput" --budget-s "$BUDGET" --no-check 2>&1 | tee "$OUT/throughput/log.txt"
  [ -f "ci/thresholds/throughput_$GPU.yaml" ] && python3 -m ci.check "$OUT/throughput/$GPU.json" "ci/thresholds/throughput_$GPU.yaml" | tee "$OUT/throughput/check_$GPU.txt"
fi
if [[ $PARTS == *smoke* ]]; then
  mkdir -p "$OUT/gpu-smoke"
  # gpu_smoke runs ci.check itself and exits 1 when a figure falls short; the figures are written either way
  timeout 900 python3 -m benchmarks.gpu_smoke --out "$OUT/gpu-smoke" 2>&1 | tee "$OUT/gpu-smoke/log.txt"
fi
if [[ $PARTS == *loader* ]]; then
  timeout 300 python3 -m benchmarks.loader --out "$OUT/loader" --workers 0,4,8 2>&1 | tee "$OUT/loader_log.txt"
fi
exit 0

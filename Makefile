# nm-sparsity: every experiment of the paper is one target. `make help` lists them.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: help install test bench reproduce-imagenet reproduce-imagenet-study reproduce-coco-det reproduce-coco-seg coco-proxy-data \
        reproduce-raft reproduce-translation reproduce-methods bench-methods throughput gpu-smoke loader-bench mmdet-export eval-imagenet report

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## create .venv/ with torch, timm, mmcv (compiled ops), mmdet, test tools and the project
	bash scripts/install.sh

test:  ## run the test suite
	$(PY) -m pytest -q tests

bench:  ## CPU benchmarks (pytest-benchmark): mask speed, SR-STE/dense step ratio; JSON to results/bench/
	@mkdir -p results/bench
	$(PY) -m pytest -q benchmarks -p no:cacheprovider --benchmark-only --benchmark-columns=min,median,mean,rounds \
		--benchmark-json=results/bench/cpu.json
	$(PY) -m benchmarks.report results/bench/cpu.json

reproduce-imagenet:  ## ImageNet table (IMAGENET_ROOT) or the Fashion-MNIST proxy; SMOKE=1 for a short run
	$(PY) -m nm_plugins.train.reproduce

reproduce-imagenet-study:  ## issue 20's proxy study: SR-STE vs STE at 1:8/1:16, 10 seeds (1:8: 24), 2 processes (JOBS=); STAGE=2: 1:16 on 4x epochs
	PROXY_STUDY=$(if $(filter 2,$(STAGE)),high-sparsity-long,high-sparsity) PROXY_JOBS=$(or $(JOBS),2) $(PY) -m nm_plugins.train.reproduce

reproduce-coco-det:  ## Faster R-CNN rows on COCO (COCO_ROOT) or the proxy; SMOKE=1 for a short run
	$(PY) -m nm_plugins.mmdet.reproduce det

reproduce-coco-seg:  ## Mask R-CNN rows on COCO (COCO_ROOT) or the proxy; SMOKE=1 for a short run
	$(PY) -m nm_plugins.mmdet.reproduce seg

coco-proxy-data:  ## generate the COCO-format Fashion-MNIST detection proxy into data/
	$(PY) -m nm_plugins.mmdet.proxy_data

reproduce-raft:  ## sparse RAFT on FlyingChairs & co (dataset roots) or the synthetic proxy; SMOKE=1 short
	$(PY) -m nm_plugins.raft.reproduce

reproduce-translation:  ## Transformer N:M translation on WMT14 En-De (WMT_ROOT) or the Debian-catalog En->De proxy; SMOKE=1 short
	$(PY) -m nm_plugins.translation.reproduce

reproduce-methods:  ## issue 25: every registered N:M method vs SR-STE on the ImageNet proxy study (1:8, 1:16) and the translation proxy (2:4), leaderboard; JOBS= processes (2); SMOKE=1 short
	PROXY_JOBS=$(or $(JOBS),2) $(PY) -m nm_plugins.methods_harness.reproduce

bench-methods:  ## CPU step time of one training step per registered method vs dense on both proxies' models (interleaved): results/bench/methods.json
	@mkdir -p results/bench
	$(PY) -m benchmarks.methods_step results/bench/methods.json

throughput:  ## GPU training-step and 2:4 inference throughput (CPU part only without CUDA)
	$(PY) -m benchmarks.throughput

gpu-smoke:  ## each trainer through its entry point on all visible GPUs (torchrun, bf16), dense vs SR-STE 2:4; skipped without CUDA
	$(PY) -m benchmarks.gpu_smoke

loader-bench:  ## ImageNet loader images/s, PIL workers vs data.decode=gpu; results/loader/<gpu|cpu>.{json,md}
	$(PY) -m benchmarks.loader

mmdet-export:  ## plain mmdet checkpoint + config (masks baked in): make mmdet-export CONFIG=... CHECKPOINT=... OUT=export/x.pth
	$(PY) -m nm_plugins.mmdet.export $(CONFIG) $(CHECKPOINT) $(OUT)

eval-imagenet:  ## top-1/5 and N:M mask check of a checkpoint (ours, timm's or the authors') on IMAGENET_ROOT/val; MODEL=, OUT= optional
	$(PY) -m nm_plugins.train.evaluate --model $(or $(MODEL),nm_resnet50_srste_2_4) --checkpoint $(CHECKPOINT) --imagenet-root $(IMAGENET_ROOT) $(if $(OUT),--out $(OUT))

report:  ## static HTML report of every experiment against the paper: results/index.html (+ results/report_top.png with chromium)
	$(PY) -m nm_plugins.report --screenshot results/report_top.png

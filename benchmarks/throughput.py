"""GPU throughput suite: SR-STE training cost and 2:4 inference gain, measured side by side.

``python -m benchmarks.throughput`` (``make throughput``). On a CUDA GPU it measures
  * training steps, dense vs SR-STE vs STE through the layers of ``sparsify`` (the one path: a Triton
    kernel per layer on CUDA), ResNet-50 (bf16 autocast, channels_last, batch 128) and ViT-B/16 (batch
    128): median over timed steps, CUDA events, the variants interleaved in rounds;
  * the core's ``nm_mask`` on CUDA tensors (the Triton kernel) against an exact argsort reference
    (correctness on random data and ties, every pattern and dtype, channels_last weights; time);
  * inference, dense vs ``to_semi_structured`` vs ``to_fast_semi_structured``, fp16/bf16, batch 64/256,
    eager and under CUDA graphs, for ViT-B/16, ViT-L/16 and ResNet-50, with the per-layer GEMM table;
  * single large GEMMs, dense vs the 2:4 kernels;
and writes ``<out>/<gpu>.json`` (flat ``metrics`` for ``ci.check``) and ``<out>/<gpu>.md``, then checks
the figures against ``ci/thresholds/throughput_<gpu>.yaml`` (exit 1 when one falls short). Without CUDA
it says so, runs the small CPU part (nm_mask vs the argsort reference, step ratios) and exits 0.
``--quick`` runs every section at toy sizes (on the CPU it exercises the GPU code paths as a dry run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.gpu_env import Budget, environment, gpu_slug
from benchmarks.throughput_infer import infer_configs, measure_gemms, measure_inference
from benchmarks.throughput_kernel import check_mask_kernel
from benchmarks.throughput_report import markdown, write
from benchmarks.throughput_train import cpu_part, measure_training, train_configs
from nm_plugins.runtime.results import write_results_json

REPO = Path(__file__).resolve().parents[1]


def check_thresholds(path: Path, slug: str) -> int:
    """Run ci.check against ci/thresholds/throughput_<slug>.yaml; 0 when none exists for this GPU."""
    thresholds = REPO / "ci" / "thresholds" / f"throughput_{slug}.yaml"
    if not thresholds.is_file():
        print(f"no thresholds file {thresholds.relative_to(REPO)} for this GPU: figures not checked")
        return 0
    from nm_plugins.verdicts.check import main as check_main
    return check_main([str(path), str(thresholds)])


def parse_args(argv=None) -> argparse.Namespace:
    """The command line of the suite (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "results" / "throughput"), help="folder for <gpu>.json and <gpu>.md")
    ap.add_argument("--quick", action="store_true", help="toy sizes (a dry run of every section)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("THROUGHPUT_BUDGET_S", 420.0)),
                    help="wall-clock budget (default $THROUGHPUT_BUDGET_S or 420); later sections skip what does not fit")
    ap.add_argument("--sections", default="kernel,train,infer,gemm", help="comma-separated subset of kernel,train,infer,gemm")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu (cpu + --quick: dry run of the GPU sections)")
    ap.add_argument("--no-check", action="store_true", help="do not exit 1 when a figure falls short of its threshold")
    ap.add_argument("--models", default="", help="comma-separated timm names: only these models' train/infer rows")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if (args.device == "auto" and cuda) else ("cpu" if args.device == "auto" else args.device))
    out_dir = Path(args.out)
    if device.type != "cuda" and not (args.quick and args.device == "cpu"):
        print("No CUDA GPU here: the GPU part of the throughput suite (training-step ratios, 2:4 inference, "
              "per-layer GEMMs) is skipped. Running the CPU part only.")
        res = {"env": environment(device), "cpu": cpu_part(args.quick)}
        res["metrics"] = {f"cpu/{k}": v for k, v in res["cpu"].items() if isinstance(v, (int, float))}
        res["metrics"].update({f"cpu/train_resnet18/{k}": v for k, v in res["cpu"]["train_resnet18"].items()
                               if isinstance(v, (int, float))})
        out_dir.mkdir(parents=True, exist_ok=True)
        write_results_json(out_dir / "cpu.json", res, ensure_ascii=True)
        for k, v in res["metrics"].items():
            print(f"  {k:45s} {v:.4g}")
        print(f"wrote {out_dir / 'cpu.json'}")
        return 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = environment(device)
    slug = gpu_slug(env["gpu"]) + ("_quick" if args.quick else "")
    results = {"env": env, "quick": args.quick, "errors": [], "train": {}, "inference": {}, "gemm": []}
    print(json.dumps(env))
    sections = args.sections.split(",")
    wanted = [m for m in args.models.split(",") if m]  # also the order of the rows
    reps = 5 if args.quick else 20

    def guarded(label, fn):
        t0 = time.time()
        try:
            fn()
        except Exception as exc:
            results["errors"].append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
            print(traceback.format_exc(), file=sys.stderr)
        print(f"[{time.time() - budget.start:6.1f}s] {label} done in {time.time() - t0:.1f}s", flush=True)
        write(results, out_dir, slug)

    if "kernel" in sections:
        guarded("mask kernel", lambda: results.__setitem__("mask_kernel", check_mask_kernel(device, args.quick)))
    if "train" in sections:
        for name, cfg in train_configs(args.quick):
            if wanted and name not in wanted:
                continue
            if budget.left() < min(120, args.budget_s / 2) and not args.quick:  # a model's training takes ~2 minutes
                results["errors"].append(f"train {name}: skipped, time budget")
                continue
            guarded(f"train {name}", lambda name=name, cfg=cfg: results["train"].__setitem__(
                name, measure_training(name, cfg, device, budget, rounds=2 if args.quick else 3,
                                       steps=1 if args.quick else 6)))
    if "infer" in sections:
        dtypes = (torch.float16, torch.bfloat16)
        configs = infer_configs(args.quick)
        if wanted:
            configs = sorted((c for c in configs if c[0] in wanted), key=lambda c: wanted.index(c[0]))
        for name, img, batches in configs:
            for batch in batches:
                for dtype in dtypes:
                    key = f"{name}/{str(dtype).split('.')[-1]}/b{batch}"
                    if budget.left() < 45:
                        results["errors"].append(f"infer {key}: skipped, time budget")
                        continue
                    guarded(f"infer {key}", lambda key=key, name=name, img=img, batch=batch, dtype=dtype:
                            results["inference"].__setitem__(key, measure_inference(name, img, batch, dtype, device, reps, budget)))
    if "gemm" in sections:
        if budget.left() > 20 or args.quick:
            guarded("gemm", lambda: results["gemm"].extend(measure_gemms(device, torch.float16, args.quick, reps)))
        else:
            results["errors"].append("gemm: skipped, time budget")
    path = write(results, out_dir, slug)
    print(markdown(results))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    rc = check_thresholds(path, slug) if device.type == "cuda" and not args.quick else 0
    return 0 if args.no_check else rc


if __name__ == "__main__":
    sys.exit(main())

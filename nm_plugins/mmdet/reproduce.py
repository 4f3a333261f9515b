"""The paper's COCO rows: Faster R-CNN (``det``) and Mask R-CNN (``seg``) R50-FPN, dense vs SR-STE N:M.

    python -m nm_plugins.mmdet.reproduce det|seg        (make reproduce-coco-det / reproduce-coco-seg)

With ``COCO_ROOT`` set: the 1x schedule of ``configs/mmdet/*_1x_coco.py`` on COCO 2017 (backbones from
``$IMAGENET_CKPT_DIR``, default ``work_dirs/imagenet``, see the configs; under torchrun every process joins).
Without it: the CPU proxy (``configs/mmdet/*_proxy.py`` on the Fashion-MNIST COCO proxy, generated when
missing). ``SMOKE=1``: a few iterations per row on a slice of the proxy, to check the pipeline.

Writes ``results/coco-{det,seg}[-proxy][-smoke]/results.json`` (flat ``metrics`` for ``ci.check``) and
``results.md``, then runs the threshold check against ``ci/thresholds/coco_{det,seg}[_proxy][_smoke].yaml``
and exits with its status.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from mmengine.hooks import Hook

from nm_plugins.core import count_params_flops, sparse_layers

GRID = {"det": [("dense", None), ("srste", "2:4"), ("srste", "4:8"), ("srste", "2:8"), ("srste", "1:4")],
        "seg": [("dense", None), ("srste", "2:4"), ("srste", "4:8"), ("srste", "2:8")]}
DETECTOR = {"det": "faster-rcnn", "seg": "mask-rcnn"}
CONFIG_DIR = Path("configs/mmdet")
SMOKE_OPTIONS = {"train_dataloader.dataset.indices": 24, "val_dataloader.dataset.indices": 40,
                 "test_dataloader.dataset.indices": 40, "train_cfg.max_epochs": 1,
                 "custom_hooks.0.interval": 3, "default_hooks.logger.interval": 3}
COCO_LAYOUT = "annotations/instances_train2017.json, annotations/instances_val2017.json, train2017/, val2017/"


def row_name(method: str, pattern: str | None) -> str:
    """Metric prefix of a grid row: ``dense`` or ``srste_2:4``."""
    return method if pattern is None else f"{method}_{pattern}"


def config_path(task: str, method: str, pattern: str | None, proxy: bool) -> Path:
    """The config file of one grid row."""
    variant = "dense" if pattern is None else f"{method}-{pattern.replace(':', '-')}"
    name = (f"{DETECTOR[task]}_r18-w16_fpn_{variant}_proxy.py" if proxy
            else f"{DETECTOR[task]}_r50_fpn_{variant}_1x_coco.py")
    return CONFIG_DIR / name


def check_coco_root(root: str) -> Path:
    """The COCO root, or FileNotFoundError naming the missing path and the expected layout."""
    path = Path(root)
    for rel in ("annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017", "val2017"):
        if not (path / rel).exists():
            raise FileNotFoundError(f"COCO_ROOT={root}: {path / rel} does not exist; expected COCO 2017 there: {COCO_LAYOUT}")
    return path


class _ValMetrics(Hook):
    """Keeps the metrics of the last evaluation run by the training loop."""

    def __init__(self):
        self.metrics = None
        self.started = None

    def before_val_epoch(self, runner) -> None:
        self.started = time.time()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = dict(metrics or {})


def _backbone_counts(model: torch.nn.Module, input_hw: tuple) -> tuple[int, int]:
    return count_params_flops(model.backbone, (1, 3, *input_hw))


def run_row(task: str, method: str, pattern: str | None, proxy: bool, smoke: bool, out_root: Path,
            launcher: str) -> dict:
    """Train and evaluate one grid row; returns its metrics (mAP in percent, counts, SAD, time)."""
    from nm_plugins.mmdet.hook import NMSparsityHook
    from nm_plugins.mmdet.train import build_runner

    name = row_name(method, pattern)
    options = {}
    if smoke:
        options.update(SMOKE_OPTIONS)
    if not proxy:
        ckpt_dir = os.environ.get("IMAGENET_CKPT_DIR", "work_dirs/imagenet")
        sub = "resnet50_dense" if pattern is None else f"resnet50_{method}_{pattern.replace(':', '_')}"
        options["model.backbone.init_cfg.checkpoint"] = f"{ckpt_dir}/{sub}/model_best.pth"
    config = config_path(task, method, pattern, proxy)
    work_dir = Path("work_dirs") / out_root.name / name.replace(":", "-")
    start = time.time()
    runner = build_runner(str(config), options, str(work_dir), launcher)
    capture = _ValMetrics()
    runner.register_hook(capture)
    runner.train()  # mmengine's epoch loop always evaluates after the last epoch
    train_s = (capture.started or time.time()) - start
    val = capture.metrics or runner.val()
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    input_hw = (128, 128) if proxy else (800, 1333)
    params, flops = _backbone_counts(model, input_hw)
    hook = next((h for h in runner.hooks if isinstance(h, NMSparsityHook)), None)
    nm = hook.last_scalars if hook is not None else {}
    metrics = {"box_mAP": 100 * val["coco/bbox_mAP"], "box_mAP50": 100 * val["coco/bbox_mAP_50"],
               "backbone_params_m": params / 1e6, "backbone_gflops": flops / 1e9,
               "sad_init": nm.get("sad_init", 0.0), "kept_share": nm.get("kept_share", 1.0),
               "masks_valid": nm.get("masks_valid", 0.0), "train_minutes": train_s / 60,
               "iterations": runner.iter}
    if "coco/segm_mAP" in val:
        metrics["mask_mAP"] = 100 * val["coco/segm_mAP"]
        metrics["mask_mAP50"] = 100 * val["coco/segm_mAP_50"]
    metrics["sparse_layers"] = sum(1 for _, l in sparse_layers(model.backbone) if l.method != "dense")
    return {"name": name, "config": str(config), "work_dir": str(work_dir), "metrics": metrics}


def config_notes(config: Path) -> str:
    """The leading comment block of a config (what the proxy shrank), without the '#'."""
    lines = []
    for line in Path(config).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip() if not line.startswith("#   ") else "  " + line[4:])
    return "\n".join(lines)


def markdown(task: str, rows: list, proxy: bool, smoke: bool, dense_name: str = "dense") -> str:
    """The results table: mAP, backbone Params/FLOPs per pattern (and vs dense), SAD, time."""
    seg = task == "seg"
    dense = next((r["metrics"] for r in rows if r["name"] == dense_name), None)
    head = ["row", "box mAP", "box mAP50"] + (["mask mAP", "mask mAP50"] if seg else []) + \
           ["backbone Params (M)", "backbone FLOPs (G)", "vs dense", "SAD vs init", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        ratio = f"{m['backbone_gflops'] / dense['backbone_gflops']:.2f}x" if dense else "-"
        cells = [r["name"], f"{m['box_mAP']:.1f}", f"{m['box_mAP50']:.1f}"]
        if seg:
            cells += [f"{m['mask_mAP']:.1f}", f"{m['mask_mAP50']:.1f}"]
        cells += [f"{m['backbone_params_m']:.3f}", f"{m['backbone_gflops']:.4f}", ratio, f"{m['sad_init']:.3f}",
                  f"{m['train_minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    what = "COCO 2017 val" if not proxy else "Fashion-MNIST COCO proxy val"
    title = f"{'Mask' if seg else 'Faster'} R-CNN, {what}{' - SMOKE run, numbers not meaningful' if smoke else ''}"
    notes = config_notes(Path(rows[0]["config"])) if rows else ""
    return f"## {title}\n\n" + "\n".join(lines) + "\n\n```\n" + notes + "\n```\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(GRID))
    args = parser.parse_args(argv)
    coco_root = os.environ.get("COCO_ROOT")
    smoke = os.environ.get("SMOKE", "") not in ("", "0")
    proxy = not coco_root
    if proxy:
        from nm_plugins.mmdet.proxy_data import generate
        print(f"COCO_ROOT is not set: running the CPU proxy at {generate()}", flush=True)
    else:
        check_coco_root(coco_root)
    launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    suffix = ("-proxy" if proxy else "") + ("-smoke" if smoke else "")
    out = Path("results") / f"coco-{args.task}{suffix}"
    start = time.time()
    rows = [run_row(args.task, method, pattern, proxy, smoke, out, launcher) for method, pattern in GRID[args.task]]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    flat = {f"{r['name']}/{k}": v for r in rows for k, v in r["metrics"].items()}
    dense = flat.get("dense/backbone_gflops")
    for r in rows:
        flat[f"{r['name']}/flops_ratio"] = flat[f"{r['name']}/backbone_gflops"] / dense
        flat[f"{r['name']}/params_ratio"] = flat[f"{r['name']}/backbone_params_m"] / flat["dense/backbone_params_m"]
    result = {"task": args.task, "proxy": proxy, "smoke": smoke, "rows": rows, "metrics": flat,
              "total_minutes": (time.time() - start) / 60,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads(),
                          "cpu_count": os.cpu_count()}}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = markdown(args.task, rows, proxy, smoke)
    (out / "results.md").write_text(table)
    print(table, flush=True)
    thresholds = Path("ci/thresholds") / f"coco_{args.task}{suffix.replace('-', '_')}.yaml"
    return subprocess.call([sys.executable, "-m", "ci.check", str(out / "results.json"), str(thresholds)])


if __name__ == "__main__":
    raise SystemExit(main())

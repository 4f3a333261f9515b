"""The paper's COCO rows: Faster R-CNN (``det``) and Mask R-CNN (``seg``) R50-FPN, dense vs SR-STE N:M.

    python -m nm_plugins.mmdet.reproduce det|seg        (make reproduce-coco-det / reproduce-coco-seg)

With ``COCO_ROOT`` set: the 1x schedule of ``configs/mmdet/*_1x_coco.py`` on COCO 2017, each row's backbone the
best-top-1 ResNet-50 that ``IMAGENET_ROOT=... make reproduce-imagenet`` wrote for the same method and pattern:
``$IMAGENET_CKPT_DIR/resnet50_<dense|srste_N_M>/model_best.pth``, ``IMAGENET_CKPT_DIR`` defaulting to
``$RUNS_DIR/imagenet`` (``RUNS_DIR`` default ``runs``; with ``SMOKE=1`` the smoke run's ``runs/imagenet-smoke`` is
taken when it has the row). Under torchrun every process joins. Without ``COCO_ROOT``: the CPU proxy
(``configs/mmdet/*_proxy.py`` on the Fashion-MNIST COCO proxy, generated when missing). ``SMOKE=1``: a few
iterations per row on a slice of the data, to check the pipeline.

Other environment: ``COCO_ROWS`` (comma-separated row names, e.g. ``dense,srste_2:4``: a subset, no threshold
check), ``COCO_CFG_OPTIONS`` (space-separated mmengine ``key=value`` overrides for every row), ``RESULTS_DIR``
(default ``results/coco-{det,seg}[-proxy][-smoke]``), ``WORK_DIRS`` (the rows' mmengine work dirs, default
``work_dirs``).

Writes ``results.json`` (flat ``metrics`` for ``ci.check``) and ``results.md``, then runs the threshold check
against ``ci/thresholds/coco_{det,seg}[_proxy][_smoke].yaml`` and exits with its status.
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

from nm_plugins.core import sparse_layers

BEST_NAME = "model_best.pth"  # what nm_plugins.train.classify writes for the best val top-1 (mmdet must not import it)

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


def eval_input_hw(cfg) -> tuple:
    """(H, W) the config tests at: its test pipeline's Resize ``scale`` (mmdet gives it as (W, H))."""
    for step in cfg.test_dataloader.dataset.pipeline:
        if step.get("type") == "Resize" and step.get("scale"):
            w, h = step["scale"]
            return int(h), int(w)
    raise ValueError("test_dataloader pipeline has no Resize with a scale: cannot size the FLOPs count")


def imagenet_row(method: str, pattern: str | None) -> str:
    """The configs/imagenet row (and runs/imagenet sub-folder) whose ResNet-50 a COCO row starts from."""
    return "resnet50_dense" if pattern is None else f"resnet50_{method}_{pattern.replace(':', '_')}"


def imagenet_checkpoint(method: str, pattern: str | None, smoke: bool, env=None) -> Path:
    """The backbone checkpoint of a COCO row (see the module doc), or FileNotFoundError saying how to make it."""
    env = os.environ if env is None else env
    row = imagenet_row(method, pattern)
    runs = Path(env.get("RUNS_DIR") or "runs")
    if env.get("IMAGENET_CKPT_DIR"):
        dirs = [Path(env["IMAGENET_CKPT_DIR"])]
    else:
        dirs = ([runs / "imagenet-smoke"] if smoke else []) + [runs / "imagenet"]
    for d in dirs:
        if (d / row / BEST_NAME).is_file():
            return d / row / BEST_NAME
    tried = " or ".join(str(d / row / BEST_NAME) for d in dirs)
    raise FileNotFoundError(
        f"COCO row {row_name(method, pattern)}: its ImageNet backbone {tried} does not exist. Train it with "
        f"`IMAGENET_ROOT=/data/imagenet IMAGENET_ROWS={row}{' SMOKE=1' if smoke else ''} make reproduce-imagenet` "
        f"(same RUNS_DIR), or point IMAGENET_CKPT_DIR at the folder holding {row}/{BEST_NAME}")


def selected_rows(task: str, env=None) -> list:
    """The grid rows of ``task``, or the ones ``COCO_ROWS`` names (ValueError for an unknown name)."""
    env = os.environ if env is None else env
    wanted = [w.strip() for w in env.get("COCO_ROWS", "").split(",") if w.strip()]
    if not wanted:
        return list(GRID[task])
    names = {row_name(m, p): (m, p) for m, p in GRID[task]}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"COCO_ROWS names unknown rows {unknown}; known for {task}: {sorted(names)}")
    return [names[w] for w in wanted]


def cfg_options_from_env(env=None) -> dict:
    """``COCO_CFG_OPTIONS``: space-separated mmengine ``key=value`` overrides (values parsed as on the
    command line of tools/train.py: numbers, tuples, lists)."""
    from mmengine.config import DictAction
    env = os.environ if env is None else env
    out = {}
    for item in env.get("COCO_CFG_OPTIONS", "").split():
        if "=" not in item:
            raise ValueError(f"COCO_CFG_OPTIONS: {item!r} is not key=value")
        key, _, value = item.partition("=")
        out[key] = DictAction._parse_iterable(value)
    return out


def run_row(task: str, method: str, pattern: str | None, proxy: bool, smoke: bool, out_root: Path,
            launcher: str) -> dict:
    """Train and evaluate one grid row; returns its metrics (mAP in percent, counts, SAD, time)."""
    from nm_plugins.mmdet.flops import count_detector
    from nm_plugins.mmdet.hook import NMSparsityHook
    from nm_plugins.mmdet.train import build_runner

    name = row_name(method, pattern)
    options = {}
    if smoke:
        options.update(SMOKE_OPTIONS)
    if not proxy:
        backbone = imagenet_checkpoint(method, pattern, smoke)
        print(f"{name}: backbone {backbone}", flush=True)
        options["model.backbone.init_cfg.checkpoint"] = str(backbone)
    options.update(cfg_options_from_env())
    config = config_path(task, method, pattern, proxy)
    work_dir = Path(os.environ.get("WORK_DIRS") or "work_dirs") / out_root.name / name.replace(":", "-")
    start = time.time()
    runner = build_runner(str(config), options, str(work_dir), launcher)
    capture = _ValMetrics()
    runner.register_hook(capture)
    runner.train()  # mmengine's epoch loop always evaluates after the last epoch
    train_s = (capture.started or time.time()) - start
    val = capture.metrics or runner.val()
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    input_hw = (128, 128) if proxy else eval_input_hw(runner.cfg)  # real COCO: 800x1333
    whole = count_detector(model, input_hw)
    params, flops = whole["backbone_params"], whole["backbone_flops"]
    hook = next((h for h in runner.hooks if isinstance(h, NMSparsityHook)), None)
    nm = hook.last_scalars if hook is not None else {}
    metrics = {"box_mAP": 100 * val["coco/bbox_mAP"], "box_mAP50": 100 * val["coco/bbox_mAP_50"],
               "backbone_params_m": params / 1e6, "backbone_gflops": flops / 1e9,
               "detector_params_m": whole["params"] / 1e6, "detector_gflops": whole["flops"] / 1e9,
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
           ["backbone Params (M)", "backbone FLOPs (G)", "vs dense", "detector Params (M)", "detector FLOPs (G)",
            "SAD vs init", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        ratio = f"{m['backbone_gflops'] / dense['backbone_gflops']:.2f}x" if dense else "-"
        cells = [r["name"], f"{m['box_mAP']:.1f}", f"{m['box_mAP50']:.1f}"]
        if seg:
            cells += [f"{m['mask_mAP']:.1f}", f"{m['mask_mAP50']:.1f}"]
        cells += [f"{m['backbone_params_m']:.3f}", f"{m['backbone_gflops']:.4f}", ratio,
                  f"{m.get('detector_params_m', float('nan')):.3f}", f"{m.get('detector_gflops', float('nan')):.4f}",
                  f"{m['sad_init']:.3f}",
                  f"{m['train_minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    what = "COCO 2017 val" if not proxy else "Fashion-MNIST COCO proxy val"
    title = f"{'Mask' if seg else 'Faster'} R-CNN, {what}{' - SMOKE run, numbers not meaningful' if smoke else ''}"
    notes = config_notes(Path(rows[0]["config"])) if rows else ""
    return f"## {title}\n\n" + "\n".join(lines) + "\n\n```\n" + notes + "\n```\n"


def main(argv=None) -> int:
    """Entry point of ``make reproduce-coco-{det,seg}``; a missing file or bad setting: message and status 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(GRID))
    args = parser.parse_args(argv)
    try:
        return reproduce(args.task)
    except (FileNotFoundError, ValueError) as e:
        print(f"reproduce-coco-{args.task}: {e}", file=sys.stderr)
        return 2


def reproduce(task: str) -> int:
    """Train and evaluate the grid of ``task`` (see the module doc), write the results, run the check."""
    args = argparse.Namespace(task=task)
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
    out = Path(os.environ.get("RESULTS_DIR") or Path("results") / f"coco-{args.task}{suffix}")
    grid = selected_rows(args.task)
    if not proxy:  # every backbone is there before the first row trains
        for method, pattern in grid:
            imagenet_checkpoint(method, pattern, smoke)
    start = time.time()
    rows = [run_row(args.task, method, pattern, proxy, smoke, Path(f"coco-{args.task}{suffix}"), launcher)
            for method, pattern in grid]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    flat = {f"{r['name']}/{k}": v for r in rows for k, v in r["metrics"].items()}
    dense = flat.get("dense/backbone_gflops")
    for r in rows:
        if dense:
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
    if len(grid) < len(GRID[args.task]):
        print(f"COCO_ROWS selects {len(grid)} of {len(GRID[args.task])} rows: no threshold check", flush=True)
        return 0
    thresholds = Path("ci/thresholds") / f"coco_{args.task}{suffix.replace('-', '_')}.yaml"
    return subprocess.call([sys.executable, "-m", "ci.check", str(out / "results.json"), str(thresholds)])


if __name__ == "__main__":
    raise SystemExit(main())

"""The paper's COCO rows: Faster R-CNN (``det``) and Mask R-CNN (``seg``) R50-FPN, dense vs SR-STE N:M.

    python -m nm_plugins.mmdet.reproduce det|seg        (make reproduce-coco-det / reproduce-coco-seg)

With ``COCO_ROOT`` set: the 1x schedule of ``configs/mmdet/*_1x_coco.py`` on COCO 2017, each row's backbone the
best-top-1 ResNet-50 that ``IMAGENET_ROOT=... make reproduce-imagenet`` wrote for the same method and pattern:
``$IMAGENET_CKPT_DIR/resnet50_<dense|srste_N_M>/model_best.pth``, ``IMAGENET_CKPT_DIR`` defaulting to
``$RUNS_DIR/imagenet`` (``RUNS_DIR`` default ``runs``; with ``SMOKE=1`` the smoke run's ``runs/imagenet-smoke`` is
taken when it has the row). Under torchrun every process joins. Without ``COCO_ROOT``: the CPU proxy
(``configs/mmdet/*_proxy.py`` on the Fashion-MNIST COCO proxy, generated when missing). ``SMOKE=1``: a few
iterations per row on a slice of the data, to check the pipeline.

Every row runs once per seed (``COCO_SEEDS``, comma-separated; default: 0-4 on the proxy, one seed (0)
for real COCO and for SMOKE). The seed goes to mmengine (``randomness.seed``), so the same
seed gives every row the same initialisation and data order: the paper's claims (``claims:`` of the thresholds
file) are judged on the paired per-seed differences with a 95% t-interval (ci/claims.py); with one seed they are
"not significant". Row metrics are means over the seeds (``*_std``: their standard deviation).

Other environment: ``COCO_ROWS`` (comma-separated row names, e.g. ``dense,srste_2:4``: a subset, no threshold
check), ``COCO_CFG_OPTIONS`` (space-separated mmengine ``key=value`` overrides for every row), ``RESULTS_DIR``
(default ``results/coco-{det,seg}[-proxy][-smoke]``), ``WORK_DIRS`` (the rows' mmengine work dirs, default
``work_dirs``).

Writes ``results.json`` (flat ``metrics`` for ``ci.check``: means over seeds; ``per_seed``: {row: {metric: {seed:
value}}}; ``claims``: the evaluated claims), ``results.md`` and ``map.png`` / ``claims.png``, then runs the threshold
check against ``ci/thresholds/coco_{det,seg}[_proxy][_smoke].yaml`` and exits with its status.
``--from-results RESULTS_JSON`` redoes only that last part (claims, tables, plots, check) for finished runs.
``--merge RESULTS_JSON ADDED_JSON`` joins the runs of a ``COCO_ROWS`` run (ADDED_JSON: rows RESULTS_JSON lacks, same
task, data and seeds) to those of RESULTS_JSON and redoes that last part in RESULTS_JSON's folder: a row added to
the grid (e.g. ``ste_2:4``) runs alone instead of the whole grid. Valid because every run is its own runner seeded
with ``randomness.seed`` (a row alone trains as it does in the grid); ``merged`` in the result names what was added.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from nm_plugins.core import sparse_layers
from nm_plugins.runtime.grid import run_or_reuse
from nm_plugins.runtime.cli import reproduce_parser
from nm_plugins.runtime.project import project_path, require_project
from nm_plugins.runtime.results import read_json, save_figure, write_results_json, write_text

BEST_NAME = "model_best.pth"  # what nm_plugins.train.classify writes for the best val top-1 (mmdet must not import it)

GRID = {"det": [("dense", None), ("srste", "2:4"), ("srste", "4:8"), ("srste", "2:8"), ("srste", "1:4"), ("ste", "2:4")],
        "seg": [("dense", None), ("srste", "2:4"), ("srste", "4:8"), ("srste", "2:8")]}
DETECTOR = {"det": "faster-rcnn", "seg": "mask-rcnn"}
CONFIG_DIR = ("configs", "mmdet")  # under the project folder (NM_SPARSITY_ROOT, see nm_plugins.runtime.project)
SMOKE_OPTIONS = {"train_dataloader.dataset.indices": 24, "val_dataloader.dataset.indices": 40,
                 "test_dataloader.dataset.indices": 40, "train_cfg.max_epochs": 1,
                 "custom_hooks.0.interval": 3, "default_hooks.logger.interval": 3}
COCO_LAYOUT = "annotations/instances_train2017.json, annotations/instances_val2017.json, train2017/, val2017/"
PROXY_SEEDS = {"det": (0, 1, 2, 3, 4), "seg": (0, 1, 2, 3, 4)}  # 25 / 27.5 min in all on 2 shared cores
ONE_SEED = (0,)  # real COCO (a 1x schedule per row and seed) and SMOKE
# per-seed metric name -> run metric: what the claims are judged on
SEED_METRICS = {"box_mAP": "box_mAP", "box_mAP50": "box_mAP50", "mask_mAP": "mask_mAP", "mask_mAP50": "mask_mAP50",
                "sad": "sad_init"}


def row_name(method: str, pattern: str | None) -> str:
    """Metric prefix of a grid row: ``dense`` or ``srste_2:4``."""
    return method if pattern is None else f"{method}_{pattern}"


def config_path(task: str, method: str, pattern: str | None, proxy: bool) -> Path:
    """The config file of one grid row."""
    variant = "dense" if pattern is None else f"{method}-{pattern.replace(':', '-')}"
    name = (f"{DETECTOR[task]}_r18-w16_fpn_{variant}_proxy.py" if proxy
            else f"{DETECTOR[task]}_r50_fpn_{variant}_1x_coco.py")
    return project_path(*CONFIG_DIR, name)


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


def seeds_from_env(task: str, proxy: bool, smoke: bool, env=None) -> tuple:
    """The seeds every row runs with: ``COCO_SEEDS`` (comma-separated integers >= 0), else the default of the
    module doc; ValueError naming ``COCO_SEEDS`` for anything else."""
    env = os.environ if env is None else env
    raw = env.get("COCO_SEEDS", "").strip()
    if not raw:
        return PROXY_SEEDS[task] if proxy and not smoke else ONE_SEED
    try:
        seeds = tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"COCO_SEEDS={raw!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"COCO_SEEDS={raw!r}: expected distinct integers >= 0, e.g. 0,1,2")
    return seeds


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
        if key.startswith("randomness"):
            raise ValueError(f"COCO_CFG_OPTIONS: {key} would give every seed the same randomness; set COCO_SEEDS")
        out[key] = DictAction._parse_iterable(value)
    return out


def run_row(task: str, method: str, pattern: str | None, proxy: bool, smoke: bool, out_root: Path,
            launcher: str, seed: int = 0) -> dict:
    """Train and evaluate one grid row with one seed, or reuse it when its work dir finished the same run before
    (nm_plugins.runtime.grid); returns its metrics (mAP in percent, counts, SAD, time) and masks digest."""
    name = row_name(method, pattern)
    options = {}
    if smoke:
        options.update(SMOKE_OPTIONS)
    if not proxy:
        backbone = imagenet_checkpoint(method, pattern, smoke)
        print(f"{name}: backbone {backbone}", flush=True)
        options["model.backbone.init_cfg.checkpoint"] = str(backbone)
    options.update(cfg_options_from_env())
    options["randomness.seed"] = seed  # same seed: same initialisation and data order in every row
    config = config_path(task, method, pattern, proxy)
    work_dir = Path(os.environ.get("WORK_DIRS") or "work_dirs") / out_root.name / name.replace(":", "-") / f"s{seed}"
    print(f"{name}, seed {seed}: {config} -> {work_dir}", flush=True)
    resolved = Config.fromfile(str(config))
    resolved.merge_from_dict(options)
    # checkpoint=None: mmengine's resume restores no RNG state, so an interrupted row trains again from its start
    # (same seed: the same numbers) instead of resuming an epoch checkpoint into different ones.
    return run_or_reuse(work_dir, f"{name} seed {seed}", {"config": resolved.to_dict(), "work_dir": str(work_dir)},
                        lambda resume: _train_row(name, seed, config, options, work_dir, proxy, launcher))


def _train_row(name: str, seed: int, config: Path, options: dict, work_dir: Path, proxy: bool, launcher: str) -> dict:
    """Train and evaluate one row with one seed from scratch (see :func:`run_row`)."""
    from nm_plugins.mmdet.flops import count_detector
    from nm_plugins.mmdet.hook import NMSparsityHook
    from nm_plugins.mmdet.train import build_runner
    from nm_plugins.runtime.training import masks_digest

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
    metrics["sparse_layers"] = sum(1 for _, l in sparse_layers(model.backbone) if l.nm_method.applies_mask)
    return {"name": name, "seed": seed, "config": str(config), "work_dir": str(work_dir), "metrics": metrics,
            "masks_sha": masks_digest(model)}


def aggregate(runs: list) -> "tuple[list, dict]":
    """(rows, per_seed) of per-seed runs: a row's metrics are means over its seeds (``masks_valid``: the
    minimum), with ``<metric>_std`` for the seed metrics; per_seed is {row: {metric: {seed: value}}}."""
    by_row: dict = {}
    for r in runs:
        by_row.setdefault(r["name"], []).append(r)
    rows, per_seed = [], {}
    for name, group in by_row.items():
        seeds = [r["seed"] for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"row {name} ran seed(s) {sorted(s for s in set(seeds) if seeds.count(s) > 1)} twice")
        metrics = {}
        for key in group[0]["metrics"]:
            values = [r["metrics"][key] for r in group]
            metrics[key] = min(values) if key == "masks_valid" else statistics.fmean(values)
        for metric, key in SEED_METRICS.items():
            if key in group[0]["metrics"]:
                values = [r["metrics"][key] for r in group]
                per_seed.setdefault(name, {})[metric] = {str(r["seed"]): r["metrics"][key] for r in group}
                if key != "sad_init":
                    metrics[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append({"name": name, "config": group[0]["config"], "seeds": seeds, "metrics": metrics})
    return rows, per_seed


def merge_runs(base: dict, added: dict, source: str = "") -> dict:
    """``base`` (a result as :func:`reproduce` writes it) with the runs of ``added`` (a run of rows ``base`` lacks,
    with the same task, proxy, smoke setting and seeds) joined in, rows in grid order; ValueError naming what
    differs or the rows both have. ``merged`` records the added rows, their time, load and ``source``."""
    for key in ("task", "proxy", "smoke"):
        if base.get(key) != added.get(key):
            raise ValueError(f"--merge: {key} differs ({base.get(key)!r} vs {added.get(key)!r})")
    if sorted(base.get("seeds", [])) != sorted(added.get("seeds", [])):
        raise ValueError(f"--merge: the seeds differ ({base.get('seeds')} vs {added.get('seeds')}): the claims pair seeds")
    if "runs" not in base or "runs" not in added:
        raise ValueError("--merge: both results need their per-run records (runs)")
    names = {r["name"] for r in base["runs"]}
    new = sorted({r["name"] for r in added["runs"]})
    both = sorted(names & set(new))
    if both:
        raise ValueError(f"--merge: rows {both} are in both results; merge only rows the first lacks")
    order = {row_name(m, p): i for i, (m, p) in enumerate(GRID[base["task"]])}
    runs = sorted(base["runs"] + added["runs"], key=lambda r: (order.get(r["name"], len(order)), r["seed"]))
    rows, per_seed = aggregate(runs)
    merged = {"rows": new, "total_minutes": added.get("total_minutes"), "load_average": added.get("load_average"),
              "machine": added.get("machine"), "source": source}
    return {**base, "runs": runs, "rows": rows, "per_seed": per_seed,
            "full_grid": {r["name"] for r in rows} == set(order),
            "total_minutes": base.get("total_minutes", 0.0) + (added.get("total_minutes") or 0.0),
            "merged": base.get("merged", []) + [merged]}


def thresholds_path(task: str, proxy: bool, smoke: bool) -> Path:
    """ci/thresholds/coco_{det,seg}[_proxy][_smoke].yaml."""
    return project_path("ci", "thresholds") / f"coco_{task}{'_proxy' if proxy else ''}{'_smoke' if smoke else ''}.yaml"


def claim_rows(per_seed: dict, thresholds: Path) -> list:
    """The claims of a thresholds file whose two rows ran, evaluated on the per-seed values (ci/claims.py)."""
    from nm_plugins.runtime.config import load_yaml

    from nm_plugins.verdicts.claims import evaluate_claims
    claims = (load_yaml(Path(thresholds).read_text()) or {}).get("claims", [])
    return evaluate_claims(per_seed, [c for c in claims if c.get("a") in per_seed and c.get("b") in per_seed])


def plot_rows(task: str, rows: list, per_seed: dict, path: Path) -> Path:
    """mAP per row: the mean as a bar, every seed as a point; the path of the PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = ["box_mAP"] + (["mask_mAP"] if task == "seg" else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1, 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, r in enumerate(rows):
            values = list(per_seed.get(r["name"], {}).get(metric, {}).values())
            ax.bar(i, r["metrics"][metric], color="tab:blue" if i else "tab:grey", alpha=0.5)
            ax.plot([i] * len(values), values, "o", color="k", ms=3)
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], fontsize=8, rotation=20)
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(f"{metric.replace('_', ' ')}: mean (bar) and seeds (points)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def config_notes(config: Path) -> str:
    """The leading comment block of a config (what the proxy shrank), without the '#'."""
    lines = []
    for line in Path(config).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip() if not line.startswith("#   ") else "  " + line[4:])
    return "\n".join(lines)


def _pm(m: dict, key: str, n: int) -> str:
    return f"{m[key]:.1f}" + (f" ± {m[key + '_std']:.1f}" if n > 1 and key + "_std" in m else "")


def markdown(task: str, rows: list, proxy: bool, smoke: bool, dense_name: str = "dense",
             per_seed: "dict | None" = None) -> str:
    """The results table: mAP (mean ± std over seeds), backbone Params/FLOPs per pattern (and vs dense), SAD,
    time; then every seed's mAP."""
    seg = task == "seg"
    dense = next((r["metrics"] for r in rows if r["name"] == dense_name), None)
    head = ["row", "seeds", "box mAP", "box mAP50"] + (["mask mAP", "mask mAP50"] if seg else []) + \
           ["backbone Params (M)", "backbone FLOPs (G)", "vs dense", "detector Params (M)", "detector FLOPs (G)",
            "SAD vs init", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m, n = r["metrics"], len(r.get("seeds", [0]))
        ratio = f"{m['backbone_gflops'] / dense['backbone_gflops']:.2f}x" if dense else "-"
        cells = [r["name"], str(n), _pm(m, "box_mAP", n), _pm(m, "box_mAP50", n)]
        if seg:
            cells += [_pm(m, "mask_mAP", n), _pm(m, "mask_mAP50", n)]
        cells += [f"{m['backbone_params_m']:.3f}", f"{m['backbone_gflops']:.4f}", ratio,
                  f"{m.get('detector_params_m', float('nan')):.3f}", f"{m.get('detector_gflops', float('nan')):.4f}",
                  f"{m['sad_init']:.3f}",
                  f"{m['train_minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    what = "COCO 2017 val" if not proxy else "Fashion-MNIST COCO proxy val"
    title = f"{'Mask' if seg else 'Faster'} R-CNN, {what}{' - SMOKE run, numbers not meaningful' if smoke else ''}"
    notes = config_notes(Path(rows[0]["config"])) if rows else ""
    text = f"## {title}\n\nmAP: mean ± standard deviation over the seeds; SAD, Params/FLOPs, time: means.\n\n" + \
        "\n".join(lines) + "\n"
    if per_seed:
        metrics = ["box_mAP"] + (["mask_mAP"] if seg else [])
        seeds = sorted({s for r in per_seed.values() for s in r.get("box_mAP", {})}, key=int)
        lines = ["| row | metric | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                 "|---|---|" + "---|" * len(seeds)]
        for r in rows:
            for metric in metrics:
                values = per_seed.get(r["name"], {}).get(metric, {})
                lines.append(f"| {r['name']} | {metric} | " +
                             " | ".join(f"{values[s]:.1f}" if s in values else "-" for s in seeds) + " |")
        text += "\n### Every seed (same seed = same initialisation and data order in every row)\n\n" + \
            "\n".join(lines) + "\n"
    return text + "\n```\n" + notes + "\n```\n"


def main(argv=None) -> int:
    """Entry point of ``make reproduce-coco-{det,seg}``; a missing file or bad setting: message and status 2."""
    parser = reproduce_parser(__doc__, "python -m nm_plugins.mmdet.reproduce")
    parser.add_argument("task", choices=sorted(GRID))
    parser.add_argument("--from-results", metavar="RESULTS_JSON",
                        help="no training: redo claims, tables, plots and the check of a finished run")
    parser.add_argument("--merge", nargs=2, metavar=("RESULTS_JSON", "ADDED_JSON"),
                        help="no training: add the rows of a COCO_ROWS run (ADDED_JSON) to RESULTS_JSON, then as "
                             "--from-results, in RESULTS_JSON's folder")
    args = parser.parse_args(argv)
    try:
        require_project()
        if args.merge:
            paths = [Path(p) for p in args.merge]
            for path in paths:
                if not path.is_file():
                    raise FileNotFoundError(f"--merge: {path} does not exist")
            base, added = (read_json(path) for path in paths)
            if base.get("task") != args.task:
                raise ValueError(f"--merge: {paths[0]} is not a {args.task} result")
            return finish(merge_runs(base, added, str(paths[1])), paths[0].parent)
        if args.from_results:
            path = Path(args.from_results)
            if not path.is_file():
                raise FileNotFoundError(f"--from-results: {path} does not exist")
            result = read_json(path)
            if result.get("task") != args.task or "per_seed" not in result:
                raise ValueError(f"--from-results: {path} is not a per-seed {args.task} result")
            return finish(result, path.parent)
        return reproduce(args.task)
    except (FileNotFoundError, ValueError) as e:
        print(f"reproduce-coco-{args.task}: {e}", file=sys.stderr)
        return 2


def reproduce(task: str) -> int:
    """Train and evaluate the grid of ``task`` over the seeds (see the module doc), write the results, check."""
    coco_root = os.environ.get("COCO_ROOT")
    smoke = os.environ.get("SMOKE", "") not in ("", "0")
    proxy = not coco_root
    seeds = seeds_from_env(task, proxy, smoke)
    cfg_options_from_env()  # a bad COCO_CFG_OPTIONS stops here, before any training
    if proxy:
        from nm_plugins.mmdet.proxy_data import generate
        print(f"COCO_ROOT is not set: running the CPU proxy at {generate()}", flush=True)
        if "OMP_NUM_THREADS" not in os.environ:  # the committed proxy grid ran one thread (and 2 threads on 2 shared
            torch.set_num_threads(1)             # cores ran up to 30x slower); OMP_NUM_THREADS=n chooses otherwise
            print("the CPU proxy trains with one torch thread (set OMP_NUM_THREADS to choose)", flush=True)
    else:
        check_coco_root(coco_root)
    launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    suffix = ("-proxy" if proxy else "") + ("-smoke" if smoke else "")
    out = Path(os.environ.get("RESULTS_DIR") or Path("results") / f"coco-{task}{suffix}")
    grid = selected_rows(task)
    if not proxy:  # every backbone is there before the first row trains
        for method, pattern in grid:
            imagenet_checkpoint(method, pattern, smoke)
    start, load0 = time.time(), os.getloadavg()[0]
    print(f"{len(grid)} rows x seeds {list(seeds)}", flush=True)
    runs = [run_row(task, method, pattern, proxy, smoke, Path(f"coco-{task}{suffix}"), launcher, seed)
            for seed in seeds for method, pattern in grid]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    rows, per_seed = aggregate(runs)
    result = {"task": task, "proxy": proxy, "smoke": smoke, "seeds": list(seeds),
              "full_grid": len(grid) == len(GRID[task]), "rows": rows, "per_seed": per_seed, "runs": runs,
              "total_minutes": (time.time() - start) / 60,
              "load_average": {"start": load0, "end": os.getloadavg()[0]},
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads(),
                          "cpu_count": os.cpu_count()}}
    return finish(result, out)


def finish(result: dict, out: Path) -> int:
    """Flat metrics, the claims, results.json/.md, the plots and (full grid only) the threshold check of a run
    (``result`` as :func:`reproduce` builds it); the check's exit status."""
    task, rows = result["task"], result["rows"]
    thresholds = thresholds_path(task, result["proxy"], result["smoke"])
    flat = {f"{r['name']}/{k}": v for r in rows for k, v in r["metrics"].items()}
    dense = flat.get("dense/backbone_gflops")
    for r in rows:
        flat[f"{r['name']}/n_seeds"] = len(r["seeds"])
        if dense:
            flat[f"{r['name']}/flops_ratio"] = flat[f"{r['name']}/backbone_gflops"] / dense
            flat[f"{r['name']}/params_ratio"] = flat[f"{r['name']}/backbone_params_m"] / flat["dense/backbone_params_m"]
    result["metrics"] = flat
    result["claims"] = claim_rows(result["per_seed"], thresholds)
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(out / "results.json", result, indent=2, ensure_ascii=True)
    table = markdown(task, rows, result["proxy"], result["smoke"], per_seed=result["per_seed"])
    load, machine = result.get("load_average", {}), result.get("machine", {})
    table += (f"\nRun: seeds {result['seeds']}, {len(result.get('runs', []))} trainings in "
              f"{result['total_minutes']:.1f} min wall (load average {load.get('start', float('nan')):.1f} at the "
              f"start, {load.get('end', float('nan')):.1f} at the end, {machine.get('cpu_count')} cores, "
              f"{machine.get('threads')} torch thread(s) per run).\n")
    for m in result.get("merged", []):
        ml = m.get("load_average") or {}
        table += (f"Rows {', '.join(m['rows'])} ran later on their own (COCO_ROWS) and were joined with --merge "
                  f"({m.get('total_minutes') or 0:.1f} min of the wall time above; load average "
                  f"{ml.get('start', float('nan')):.1f} / {ml.get('end', float('nan')):.1f}).\n")
    if result["claims"]:
        from nm_plugins.verdicts.claims import markdown_claims, plot_claims
        table += ("\n## Paper claims: paired differences over seeds (same seed = same init and data order), "
                  f"95% t-interval ({thresholds})\n\n" + markdown_claims(result["claims"]))
        if any(c["mean"] is not None for c in result["claims"]):
            plot_claims(result["claims"], out / "claims.png")
    plot_rows(task, rows, result["per_seed"], out / "map.png")
    print(table, flush=True)
    if not result.get("full_grid", True):
        print(f"COCO_ROWS selects {len(rows)} of {len(GRID[task])} rows: no threshold check", flush=True)
        write_text(out / "results.md", table)
        return 0
    check = subprocess.run([sys.executable, "-m", "nm_plugins.verdicts.check", str(out / "results.json"), str(thresholds)],
                           capture_output=True, text=True)
    print(check.stdout + check.stderr, end="", flush=True)
    write_text(out / "results.md", table + f"\n## Threshold check (exit status {check.returncode})\n\n```\n"
                                    f"{check.stdout}{check.stderr}```\n")
    return check.returncode


if __name__ == "__main__":
    raise SystemExit(main())

"""`make reproduce-raft`: sparse RAFT vs dense on the real flow datasets, or on the embedded proxy.

With CHAIRS_ROOT set: the chairs stage (then things / sintel / kitti when THINGS_ROOT / SINTEL_ROOT /
KITTI_ROOT are set) for dense and 2:4 SR-STE raft_large, evaluated on Chairs val, Sintel train and KITTI train
when present -> results/raft/. Without it: raft_small dense vs 2:4 SR-STE vs 2:4 STE on the synthetic
FlyingChairs-like proxy -> results/raft-proxy/. Both write results.json, results.md and flow.png, then run
the threshold check (ci/thresholds/raft[_proxy].yaml). ``SMOKE=1``: a few steps of each run (minutes), written
under runs/ and checked against ci/thresholds/raft_proxy_smoke.yaml (proxy) or raft_real_smoke.yaml (datasets).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .datasets import available
from .evaluate import zero_flow_metrics
from .datasets import val_set
from .train import load_config, out_dir, run
from .visualize import flow_grid_png

REPO = Path(__file__).resolve().parents[2]
PROXY_RUNS = (("dense", "2:4"), ("srste", "2:4"), ("ste", "2:4"))
REAL_RUNS = (("dense", "2:4"), ("srste", "2:4"))
REAL_EVAL = {"chairs": "chairs", "sintel_clean": "sintel", "sintel_final": "sintel", "kitti": "kitti"}
SMOKE_PROXY = {"optim": {"steps": 3}, "data": {"proxy": {"count": 24, "val_count": 8, "size": 128, "seed": 0}},
               "train": {"ckpt_every": 2, "log_every": 1, "sad_every": 1}, "eval": {"batch_size": 8}}


def _label(method: str, pattern: str) -> str:
    return "dense" if method == "dense" else f"{method}_{pattern}"


def _run_all(stage_configs, smoke_extra: dict | None, keep: int) -> dict:
    """Train/evaluate every (method, pattern) through the given chain of stage configs; {label: results}."""
    out = {}
    for method, pattern in stage_configs["runs"]:
        weights, stages = None, {}
        for stage in stage_configs["stages"]:
            extra = {"model": {"method": method, "pattern": pattern, "weights": weights},
                     "eval": {"sets": stage_configs["eval_sets"], "keep": keep}}
            cfg = load_config(REPO / "configs" / "raft" / f"{stage}.yaml", extra=extra)
            if smoke_extra:
                cfg = _deep_update(cfg, smoke_extra)
                cfg["name"] += "-smoke"
            res = run(cfg, resume=not smoke_extra, keep_samples=keep)  # full runs continue after a crash
            stages[stage] = res["val"]
            weights = str(out_dir(cfg) / "final.pth")
        res["stages"] = stages
        out[_label(method, pattern)] = res
    return out


def _deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_update(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and base.get(k) else v
    return out


def flat_metrics(runs: dict, baseline: dict | None = None) -> dict:
    """The flat {"<run>/<metric>": number} mapping the threshold check reads."""
    metrics = {}
    for label, res in runs.items():
        for set_name, val in res["val"].items():  # the last stage's evaluation
            prefix = label if set_name == "proxy" else f"{label}/{set_name}"
            for key in ("epe", "1px", "3px", "5px", "fl_all", "per_image_epe"):
                metrics[f"{prefix}/{key}"] = float(val[key])
        for stage, vals in res.get("stages", {}).items():  # every stage's evaluation (real datasets)
            for set_name, val in vals.items():
                if set_name != "proxy":
                    for key in ("epe", "1px", "3px", "5px", "fl_all"):
                        metrics[f"{label}/after_{stage}/{set_name}/{key}"] = float(val[key])
        metrics[f"{label}/params"] = float(res["params"])
        metrics[f"{label}/flops"] = float(res["flops"])
        metrics[f"{label}/sad"] = float(res["sad_init_norm"])
        metrics[f"{label}/masks_valid"] = float(res["masks_valid"])
        metrics[f"{label}/train_time_s"] = float(res["train_time_s"])
    if "dense" in runs:
        for label in runs:
            if label != "dense":
                metrics[f"{label}/params_ratio"] = metrics[f"{label}/params"] / metrics["dense/params"]
                metrics[f"{label}/flops_ratio"] = metrics[f"{label}/flops"] / metrics["dense/flops"]
    for key, value in (baseline or {}).items():
        metrics[f"zero_flow/{key}"] = float(value)
    return metrics


def markdown_table(runs: dict, baseline: dict | None, title: str, note: str) -> str:
    """results.md: EPE, 1/3/5px, Params and FLOPs per run (and the zero-flow floor)."""
    lines = [f"# {title}", "", note, ""]
    for set_name in next(iter(runs.values()))["val"]:
        lines += [f"## {set_name}", "",
                  "| run | N:M | EPE | 1px % | 3px % | 5px % | Fl-all % | Params | FLOPs (G) | SAD | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, res in runs.items():
            v = res["val"][set_name]
            nm = "dense" if res["method"] == "dense" else res["pattern"]
            lines.append(f"| {label} | {nm} | {v['epe']:.3f} | {v['1px']:.1f} | {v['3px']:.1f} | {v['5px']:.1f} | "
                         f"{v['fl_all']:.1f} | {res['params'] / 1e6:.3f}M | {res['flops'] / 1e9:.2f} | "
                         f"{'-' if res['method'] == 'dense' else format(res['sad_init_norm'], '.3f')} | {res['train_time_s']:.0f} |")
        if baseline and set_name == "proxy":
            lines.append(f"| zero flow | - | {baseline['epe']:.3f} | {baseline['1px']:.1f} | {baseline['3px']:.1f} | "
                         f"{baseline['5px']:.1f} | {baseline['fl_all']:.1f} | - | - | - | - |")
        lines.append("")
    first = next(iter(runs.values()))
    lines += [f"FLOPs: multiply-accumulates of the kept conv weights per image pair at "
              f"{first['flops_input'][0]}x{first['flops_input'][1]} with {first['flops_iters']} flow updates. "
              "SAD: fraction of mask entries changed since initialisation (sparse layers only).", "",
              "Convolutions kept dense (input channels not divisible by M):", ""]
    lines += [f"- `{name}`: {reason}" for name, reason in first["dense_layers"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    smoke = os.environ.get("SMOKE", "0") not in ("", "0")
    start = time.time()
    real = available("chairs")
    if real:
        needs = {"things": ("things",), "sintel": ("things", "sintel"), "kitti": ("kitti",)}  # sintel mixes in things
        stages = ["chairs"] + [s for s, names in needs.items() if all(available(n) for n in names)]
        eval_sets = [s for s, need in REAL_EVAL.items() if available(need)]
        spec = {"runs": REAL_RUNS, "stages": stages, "eval_sets": eval_sets}
        smoke_extra = {"optim": {"steps": 3}, "data": {"batch_size": 2, "workers": 0, "crop": [128, 128]},
                       "train": {"ckpt_every": 2, "log_every": 1, "sad_every": 1}, "eval": {"max_samples": 4}}
        results_dir = REPO / ("runs/raft-smoke" if smoke else "results/raft")
        thresholds = REPO / "ci" / "thresholds" / ("raft_real_smoke.yaml" if smoke else "raft.yaml")
        title = "Sparse RAFT (raft_large) on the flow benchmarks"
        note = f"Stages: {' -> '.join(stages)}; evaluation: {', '.join(eval_sets)}."
    else:
        spec = {"runs": PROXY_RUNS, "stages": ["proxy"], "eval_sets": ["proxy"]}
        smoke_extra = SMOKE_PROXY
        results_dir = REPO / ("runs/raft-proxy-smoke" if smoke else "results/raft-proxy")
        thresholds = REPO / "ci" / "thresholds" / ("raft_proxy_smoke.yaml" if smoke else "raft_proxy.yaml")
        title = "Sparse RAFT on the synthetic FlyingChairs-like proxy (raft_small, CPU)"
        note = ("No dataset roots set (CHAIRS_ROOT, ...): raft_small trained from scratch on the embedded synthetic "
                "set (Fashion-MNIST objects on moving textured backgrounds, 128x128) as dense, 2:4 SR-STE and "
                "2:4 STE with the same recipe and seed; EPE on the proxy validation split (valid pixels).")
        print("no CHAIRS_ROOT: running the embedded synthetic proxy" + (" (SMOKE)" if smoke else ""))
    runs = _run_all(spec, smoke_extra if smoke else None, keep=4)
    baseline = None
    if not real:
        proxy_cfg = load_config(REPO / "configs" / "raft" / "proxy.yaml", extra={"data": smoke_extra["data"]} if smoke else None)
        baseline = zero_flow_metrics(val_set("proxy", proxy_cfg["data"]["proxy"]))
    results_dir.mkdir(parents=True, exist_ok=True)
    samples = {label: next(iter(res.pop("samples").values())) for label, res in runs.items()}
    flow_grid_png(results_dir / "flow.png", samples, rows=4)
    metrics = flat_metrics(runs, baseline)
    record = {"title": title, "smoke": smoke, "metrics": metrics, "runs": runs, "zero_flow": baseline,
              "total_time_s": time.time() - start,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    (results_dir / "results.json").write_text(json.dumps(record, indent=2, default=float))
    (results_dir / "results.md").write_text(markdown_table(runs, baseline, title, note))
    print((results_dir / "results.md").read_text())
    print(f"wrote {results_dir}/results.json, results.md, flow.png in {time.time() - start:.0f} s")
    return subprocess.call([sys.executable, "-m", "ci.check", str(results_dir / "results.json"), str(thresholds)],
                           cwd=REPO)


if __name__ == "__main__":
    raise SystemExit(main())

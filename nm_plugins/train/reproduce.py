"""``make reproduce-imagenet``: the paper's ImageNet table, or its embedded Fashion-MNIST proxy.

Environment:
  IMAGENET_ROOT   ImageNet with train/<class>/ and val/<class>/: run every configs/imagenet/*.yaml row through
                  torchrun (resuming a row from its checkpoint when one exists), then check ci/thresholds/imagenet.yaml.
                  Unset: the proxy grid (dense; STE 2:4, 1:4; SR-STE 2:4, 4:8, 1:4, 2:8; ASP 2:4; SR-STE 2:4 with
                  lambda_W scaled to the short schedule) x 5 seeds on
                  Fashion-MNIST (configs/imagenet_proxy/fashion_mnist.yaml), checked against ci/thresholds/imagenet_proxy.yaml.
  NPROC_PER_NODE  processes per node for torchrun (default: number of GPUs, else 1); NNODES nodes (default 1;
                  with more, every node runs this target with MASTER_ADDR, MASTER_PORT (default 29500) and its NODE_RANK;
                  node 0 aggregates and checks; runs/ must be on a shared filesystem).
  SMOKE=1         a short version (proxy: < 3 minutes; ImageNet: 1 epoch on a few batches) with its own thresholds.
  RESULTS_DIR     where results.json/results.md/plots go (default results/imagenet-proxy or results/imagenet;
                  SMOKE: runs/imagenet-proxy-smoke or runs/imagenet-smoke).
  IMAGENET_ROWS   comma-separated config names to run a subset of the ImageNet table (default: all).
  IMAGENET_SEEDS  comma-separated seeds every ImageNet row runs with (default 0: one run per row, claims "not
                  significant"); seed 0 trains in runs/imagenet/<row>, seed s in runs/imagenet/<row>_s<s>. The
                  paper's claims of ci/thresholds/imagenet.yaml are judged on the paired per-seed values.
  IMAGENET_OVERRIDES  extra section.key=value overrides for every ImageNet row, space-separated
                  (e.g. "data.workers=16 train.amp=false").
  RUNS_DIR        where the per-run folders (checkpoints, logs, TensorBoard) go (default runs/).
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nm_plugins.runtime.results import append_text

REPO = Path(__file__).resolve().parents[2]
PROXY_CONFIG = REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml"
IMAGENET_CONFIGS = REPO / "configs" / "imagenet"
# (method, pattern, extra overrides, row label suffix): the paper's grid with its lambda_W = 2e-4, plus one
# SR-STE 2:4 row whose lambda_W keeps the paper's total decay exposure (lr x lambda_W x steps) on the short
# schedule: 2e-4 x (120 epochs x 5005 steps) / 512 steps ~ 0.23. Without it the decay changes almost nothing
# in 512 steps; the row shows what the mechanism does once it has the paper's weight.
PROXY_GRID = [("dense", "2:4", [], ""), ("ste", "2:4", [], ""), ("srste", "2:4", [], ""), ("srste", "4:8", [], ""),
              ("srste", "1:4", [], ""), ("srste", "2:8", [], ""), ("asp", "2:4", [], ""), ("ste", "1:4", [], ""),
              ("srste", "2:4", ["sparsity.decay=0.23"], "decay0.23")]
PROXY_SEEDS = (0, 1, 2, 3, 4)  # paired over seeds: the claims' 95% t-intervals need several
SMOKE_SEEDS = (0, 1)
# The short SMOKE schedule (the full proxy schedule is the config file itself).
PROXY_SMOKE_OVERRIDES = ["optim.epochs=2", "data.train_subset=2048", "data.val_subset=2000", "sparsity.asp_prune_epoch=1"]
IMAGENET_SMOKE_OVERRIDES = ["optim.epochs=1", "optim.warmup_epochs=0", "data.train_subset=512", "data.val_subset=256"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"reproduce: {name}={raw!r} is not an integer") from None
    if value < 1:
        raise SystemExit(f"reproduce: {name} must be >= 1, got {value}")
    return value


def _runs_root() -> Path:
    return Path(os.environ.get("RUNS_DIR") or REPO / "runs")


def run_check(results_json: Path, thresholds: Path) -> int:
    """Print the threshold table of ci.check, append it to results.md next to results.json; its exit status."""
    import contextlib
    import io
    sys.path.insert(0, str(REPO))
    from nm_plugins.verdicts.check import main as check_main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = check_main([str(results_json), str(thresholds)])
    print(out.getvalue(), end="")
    md = results_json.with_name("results.md")
    if md.is_file():
        text = out.getvalue().replace(str(REPO) + "/", "")
        append_text(md, f"\n## Threshold check (exit status {status})\n\n```\n{text}```\n")
    return status


# ----------------------------------------------------------------------------------------------- proxy
def proxy_runs(smoke: bool) -> list:
    """(name, variant label, overrides) of every run of the proxy grid."""
    runs = []
    for seed in (SMOKE_SEEDS if smoke else PROXY_SEEDS):
        for method, pattern, extra, variant in PROXY_GRID:
            key = "dense" if method == "dense" else f"{method}_{pattern.replace(':', '_')}"
            key += f"_{variant}" if variant else ""
            runs.append((f"{key}_s{seed}", variant, [f"sparsity.method={method}", f"sparsity.pattern='{pattern}'",
                                                     f"train.seed={seed}", f"name={key}_s{seed}", *extra]))
    return runs


def reproduce_proxy(smoke: bool, results_dir: Path) -> int:
    """Run the Fashion-MNIST grid in this process, write results, print the table, run the threshold check."""
    from nm_plugins.runtime.grid import only
    from nm_plugins.train.config import load_config
    from nm_plugins.train.report import aggregate, write_results

    runs_dir = _runs_root() / ("imagenet-proxy-smoke" if smoke else "imagenet-proxy")
    summaries, t0, load0 = [], time.time(), os.getloadavg()
    grid = proxy_runs(smoke)
    subset = only([name for name, _, _ in grid])
    grid = [g for g in grid if subset is None or g[0] in subset]
    bar = tqdm(grid, desc="imagenet proxy (Fashion-MNIST)", dynamic_ncols=True)
    for name, variant, overrides in bar:
        extra = PROXY_SMOKE_OVERRIDES if smoke else []
        cfg = load_config(PROXY_CONFIG, overrides + extra + [f"train.out_dir={runs_dir / name}", "train.progress=false"])
        bar.set_postfix_str(name)
        summary = resumable_run(cfg)
        summary["row_model"], summary["variant"] = cfg["model"]["name"], variant
        summaries.append(summary)
        tqdm.write(f"{name:>14}: top-1 {summary['top1']:.2f}%  SAD {summary['sad_final']:.4f}  ({summary['seconds']:.0f} s)")
    description = (f"Fashion-MNIST proxy of the ImageNet table ({'SMOKE schedule' if smoke else 'full proxy schedule'}): "
                   f"{PROXY_CONFIG.relative_to(REPO)} with {' '.join(PROXY_SMOKE_OVERRIDES) if smoke else 'no overrides'}; "
                   f"seeds {list(SMOKE_SEEDS if smoke else PROXY_SEEDS)}; top-1 on "
                   f"{'a fixed random 2000-image subset of ' if smoke else ''}the Fashion-MNIST test set. "
                   f"Load average of the machine at start / end: {load0[0]:.1f} / {os.getloadavg()[0]:.1f} "
                   f"(the 2 cores were {'shared' if load0[0] > 1.5 else 'not busy'}).")
    results = aggregate(summaries, "imagenet-proxy" + ("-smoke" if smoke else ""),
                        extra={"description": description, "wall_seconds": time.time() - t0,
                               "load_average": {"start": load0[0], "end": os.getloadavg()[0]},
                               "config": str(PROXY_CONFIG.relative_to(REPO)), "smoke": smoke})
    thresholds = REPO / "ci" / "thresholds" / ("imagenet_proxy_smoke.yaml" if smoke else "imagenet_proxy.yaml")
    results["per_seed"] = per_seed_values(summaries)
    results["claims"] = claim_rows(results["per_seed"], thresholds)
    paths = write_results(results, results_dir)
    paths["plots"] += write_claims(results["claims"], results_dir)
    print(paths["markdown"].read_text())
    print(f"results: {paths['json']}, plots: {', '.join(map(str, paths['plots']))}")
    if subset is not None:
        print(f"GRID_ONLY selects {len(grid)} of {len(proxy_runs(smoke))} runs: no threshold check")
        return 0
    return run_check(paths["json"], thresholds)


def resumable_run(cfg: dict) -> dict:
    """``classify.run(cfg)`` for a grid, through nm_plugins.runtime.grid: the stored summary when its out_dir
    finished the same config (and code) before, resumed from its last epoch's checkpoint when interrupted."""
    from nm_plugins.runtime.grid import run_or_reuse
    from nm_plugins.train.classify import LAST_NAME, run
    out = Path(cfg["train"]["out_dir"])
    return run_or_reuse(out, out.name, cfg, lambda resume: run(cfg, resume=resume), checkpoint=out / LAST_NAME)


def per_seed_values(summaries: list, with_model: bool = False) -> dict:
    """{row: {"top1"|"top5"|"sad": {seed: value}}} of run summaries, for the paired claim statistics."""
    from nm_plugins.train.report import row_key
    out: dict = {}
    for s in summaries:
        row = out.setdefault(row_key(s, with_model), {})
        for metric, key in (("top1", "top1"), ("top5", "top5"), ("sad", "sad_final")):
            row.setdefault(metric, {})[str(s["seed"])] = s[key]
    return out


def claim_rows(per_seed: dict, thresholds: Path) -> list:
    """The paper's claims of a thresholds file evaluated on per-seed values (ci/claims.py)."""
    from nm_plugins.runtime.config import load_yaml
    sys.path.insert(0, str(REPO))
    from nm_plugins.verdicts.claims import evaluate_claims
    return evaluate_claims(per_seed, (load_yaml(thresholds.read_text()) or {}).get("claims", []))


def write_claims(rows: list, results_dir: Path) -> list:
    """Append the claims table to results.md and draw claims.png; the plot paths (none without claims)."""
    if not rows:
        return []
    from nm_plugins.verdicts.claims import markdown_claims, plot_claims
    md = results_dir / "results.md"
    append_text(md, "\n## Paper claims: paired differences over seeds (same seed = same init and "
                  "data order), 95% t-interval\n\n" + markdown_claims(rows))
    return [plot_claims(rows, results_dir / "claims.png")]


# -------------------------------------------------------------------------------------------- ImageNet
def torchrun_command(config: Path, root: str, nproc: int, nnodes: int, out_dir: Path, smoke: bool = False,
                     resume: bool = False, env: dict | None = None, seed: int | None = None) -> list:
    """The torchrun command line that trains one ImageNet row (``python -m torch.distributed.run`` is torchrun)."""
    env = os.environ if env is None else env
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if nnodes > 1:
        addr, node_rank = env.get("MASTER_ADDR"), env.get("NODE_RANK")
        if not addr or node_rank is None:
            raise SystemExit(f"reproduce: NNODES={nnodes} needs MASTER_ADDR (host of node 0, reachable from every node), "
                             "NODE_RANK (0..NNODES-1, 0 on MASTER_ADDR) and optionally MASTER_PORT (default 29500); "
                             "run the target on every node")
        # Static rendezvous: node 0 holds global rank 0, which writes checkpoints and summaries.
        cmd += [f"--node_rank={node_rank}", f"--master_addr={addr}", f"--master_port={env.get('MASTER_PORT', '29500')}"]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "nm_plugins.train.classify", "--config", str(config)]
    if resume:
        cmd += ["--resume"]
    cmd += [f"data.root={root}", f"train.out_dir={out_dir}"]
    if smoke:
        cmd += IMAGENET_SMOKE_OVERRIDES
    if seed is not None:
        cmd += [f"train.seed={seed}"]
    overrides = env.get("IMAGENET_OVERRIDES", "").split()
    if seed is not None and any(o.startswith("train.seed=") for o in overrides):
        raise SystemExit("reproduce: IMAGENET_OVERRIDES sets train.seed; set IMAGENET_SEEDS instead")
    return cmd + overrides


def imagenet_seeds() -> tuple:
    """IMAGENET_SEEDS (comma-separated distinct integers >= 0), default (0,)."""
    raw = os.environ.get("IMAGENET_SEEDS", "").strip() or "0"
    try:
        seeds = tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"reproduce: IMAGENET_SEEDS={raw!r} is not a comma-separated list of integers") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise SystemExit(f"reproduce: IMAGENET_SEEDS={raw!r}: expected distinct integers >= 0")
    return seeds


def select_configs(rows: list, env: str, prog: str) -> list:
    """``rows`` (config paths), or those the comma-separated names in environment variable ``env`` select, in that
    order; an unknown name stops ``prog`` with the known ones."""
    wanted = [w.strip() for w in os.environ.get(env, "").split(",") if w.strip()]
    if not wanted:
        return rows
    names = {p.stem: p for p in rows}
    missing = [w for w in wanted if w not in names]
    if missing:
        raise SystemExit(f"{prog}: {env} names unknown configs {missing}; known: {sorted(names)}")
    return [names[w] for w in wanted]


def imagenet_rows() -> list:
    """The configs/imagenet/*.yaml files to run (IMAGENET_ROWS selects some by name)."""
    return select_configs(sorted(IMAGENET_CONFIGS.glob("*.yaml")), "IMAGENET_ROWS", "reproduce")


def reproduce_imagenet(root: str, smoke: bool, results_dir: Path) -> int:
    """Train every ImageNet row with torchrun, then aggregate (on the first node) and check."""
    import json
    import subprocess

    import torch

    from nm_plugins.train.data import check_imagenet_root
    from nm_plugins.train.report import aggregate, write_results

    check_imagenet_root(root)
    nproc = _env_int("NPROC_PER_NODE", max(torch.cuda.device_count(), 1))
    nnodes = _env_int("NNODES", 1)
    runs_dir = _runs_root() / ("imagenet-smoke" if smoke else "imagenet")
    summaries, t0 = [], time.time()
    for config, seed in [(c, s) for s in imagenet_seeds() for c in imagenet_rows()]:
        out_dir = runs_dir / (config.stem if seed == 0 else f"{config.stem}_s{seed}")
        resume = (out_dir / "checkpoint.pt").is_file() and not (out_dir / "summary.json").is_file()
        if (out_dir / "summary.json").is_file() and not smoke:
            print(f"{out_dir.name}: done before, using {out_dir / 'summary.json'}")
        else:
            cmd = torchrun_command(config, root, nproc, nnodes, out_dir, smoke, resume, seed=seed)
            print("+ " + " ".join(cmd), flush=True)
            status = subprocess.run(cmd, cwd=REPO).returncode
            if status != 0:
                print(f"reproduce-imagenet: row {config.stem} failed (exit status {status}); its last checkpoint is in "
                      f"{out_dir}, running the target again resumes it", file=sys.stderr)
                return status
        if int(os.environ.get("NODE_RANK", "0")) == 0:
            summary = json.loads((out_dir / "summary.json").read_text())
            summary["row_model"] = re.sub(r"_(dense|srste|ste|asp)(_.*)?$", "", config.stem)
            summaries.append(summary)
    if int(os.environ.get("NODE_RANK", "0")) != 0:
        return 0
    results = aggregate(summaries, "imagenet" + ("-smoke" if smoke else ""), with_model=True,
                        extra={"wall_seconds": time.time() - t0, "nproc_per_node": nproc, "nnodes": nnodes,
                               "root": root, "smoke": smoke})
    thresholds = REPO / "ci" / "thresholds" / "imagenet.yaml"
    results["per_seed"] = per_seed_values(summaries, with_model=True)
    results["claims"] = claim_rows(results["per_seed"], thresholds)
    paths = write_results(results, results_dir)
    if any(c["mean"] is not None for c in results["claims"]):  # a row subset may leave every claim without values
        write_claims(results["claims"], results_dir)
    print(paths["markdown"].read_text())
    print(f"per row: {runs_dir}/<row>/model_best.pth (best val top-1; the backbones make reproduce-coco-det/-seg read "
          f"through RUNS_DIR) and checkpoint.pt (last epoch)")
    if smoke:
        print("SMOKE run: the paper thresholds do not apply to a 1-epoch run; skipping ci/thresholds/imagenet.yaml")
        return 0
    return run_check(paths["json"], thresholds)


def main() -> int:
    """Entry point of `make reproduce-imagenet`: the ImageNet table with IMAGENET_ROOT, else the proxy."""
    smoke = _env_flag("SMOKE")
    root = os.environ.get("IMAGENET_ROOT", "").strip()
    default_dir = ("runs/imagenet" if root else "runs/imagenet-proxy") + "-smoke" if smoke else \
        ("results/imagenet" if root else "results/imagenet-proxy")
    results_dir = Path(os.environ.get("RESULTS_DIR") or REPO / default_dir)
    try:
        if root:
            return reproduce_imagenet(root, smoke, results_dir)
        return reproduce_proxy(smoke, results_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"reproduce-imagenet: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

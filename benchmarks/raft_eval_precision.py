"""The effect of bf16 EVALUATION alone on the RAFT proxy: the fp32-trained proxy checkpoints of
``make reproduce-raft`` (``<runs>/proxy[-s1|-s2]/<tag>/final.pth``) evaluated in fp32 and in bf16 autocast
(12 flow updates, the proxy validation split), per row and seed.

    python -m benchmarks.raft_eval_precision [--runs runs/raft] [--out results/raft-proxy-bf16/eval_only.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROWS = (("srste_2x4", "srste"), ("dense", "dense"))
SEEDS = ((0, "proxy"), (1, "proxy-s1"), (2, "proxy-s2"))


def evaluate_precisions(runs: Path) -> dict:
    """{"<tag>/<seed>": {"fp32": EPE, "bf16": EPE}} for every row and seed of the committed proxy grid."""
    from nm_plugins.raft.datasets import val_set
    from nm_plugins.raft.evaluate import evaluate
    from nm_plugins.raft.model import create
    from nm_plugins.raft.train import load_config
    cfg = load_config(REPO / "configs" / "raft" / "proxy.yaml")
    ds = val_set("proxy", cfg["data"]["proxy"])
    out = {}
    for tag, method in ROWS:
        for seed, name in SEEDS:
            checkpoint = runs / name / tag / "final.pth"
            if not checkpoint.is_file():
                raise FileNotFoundError(f"{checkpoint} does not exist: train the proxy grid with `make reproduce-raft` "
                                        "(RAFT_SEEDS=0,1,2) or pass --runs")
            model = create("small", "2:4", method, 2e-4, weights=checkpoint)
            r = {p: evaluate(model, ds, iters=12, batch_size=10, amp=(p == "bf16"), amp_cpu=True)["epe"]
                 for p in ("fp32", "bf16")}
            out[f"{tag}/{seed}"] = r
            print(tag, seed, r, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "raft", help="the RAFT runs folder")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "raft-proxy-bf16" / "eval_only.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        out = evaluate_precisions(args.runs)
    except FileNotFoundError as e:
        print(f"raft_eval_precision: {e}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

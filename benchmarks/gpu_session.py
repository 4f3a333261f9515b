"""One lent-GPU session in at most 8 minutes of wall time: the checks in order of value, each with its own budget
(a hard timeout), each writing its JSON under ``$OUT`` before the next starts.

    python -m benchmarks.gpu_session --out DIR            # on the GPU machine (benchmarks/gpu_session.sh calls this)
    python -m benchmarks.gpu_session --dry-run            # the plan: order, budgets, commands; runs nothing

  1. equality   the Triton masks, masked weights and SR-STE updates equal the CPU path's on every N:M layer shape
                of the four trainers' models, fp32/bf16, contiguous/channels_last (benchmarks/gpu_equality.py);
  2. smoke      gpu-smoke: each trainer's entry point on real-layout data, dense vs SR-STE 2:4 step ratio (2 rounds);
  3. throughput the headline figures: ResNet-50 training step SR-STE/dense, then 2:4 inference as time allows.
A part that runs out of budget is stopped (its process group killed) and the next one starts; what the part
wrote before stays. Installs nothing; needs torch, triton, timm (mmdet/mmcv for the smoke's mmdet row).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TOTAL_S = 480  # the whole session, start-up checks included
REPO = Path(__file__).resolve().parents[1]


def plan(out: str) -> list:
    """[(name, budget seconds, command)] in the order they run."""
    py = sys.executable
    return [
        ("env", 15, [py, "-c", "import json, torch, triton, timm; print(json.dumps({'torch': torch.__version__, "
                     "'cuda': torch.version.cuda, 'triton': triton.__version__, 'timm': timm.__version__, "
                     "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"]),
        ("equality", 150, [py, "-m", "benchmarks.gpu_equality", "--out", f"{out}/equality", "--budget-s", "120"]),
        ("smoke", 180, [py, "-m", "benchmarks.gpu_smoke", "--out", f"{out}/gpu-smoke", "--rounds", "2",
                        "--loader-images", "1024"]),
        ("throughput", 135, [py, "-m", "benchmarks.throughput", "--out", f"{out}/throughput", "--sections",
                             "train,infer", "--models", "resnet50", "--budget-s", "115", "--no-check"]),
    ]


def run_part(name: str, budget: float, cmd: list, out: Path) -> dict:
    """Run one part in its own process group, killed at ``budget`` seconds; its log goes to ``out/<name>.log``."""
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(budget, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    return {"part": name, "budget_s": budget, "seconds": round(time.time() - t0, 1), "exit": rc}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results/gpu-session"))
    ap.add_argument("--dry-run", action="store_true", help="print the plan (order, budgets, commands) and exit")
    ap.add_argument("--parts", default="", help="comma-separated subset of the parts (default: all)")
    args = ap.parse_args(argv)
    parts = [p for p in plan(args.out) if not args.parts or p[0] in args.parts.split(",")]
    total = sum(b for _, b, _ in parts)
    if total > TOTAL_S:
        raise SystemExit(f"gpu-session: the budgets add up to {total} s, over the {TOTAL_S} s of a session")
    if args.dry_run:
        for i, (name, budget, cmd) in enumerate(parts, 1):
            what = " ".join(cmd[1:]) if cmd[1] == "-m" else "python -c <versions of torch, CUDA, Triton, timm; the GPU>"
            print(f"{i}. {name:<11} {budget:>4} s  {what}")
        print(f"total {total} s of {TOTAL_S} s")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, done = time.time(), []
    for name, budget, cmd in parts:
        left = TOTAL_S - (time.time() - start)
        result = run_part(name, min(budget, left), cmd, out)
        done.append(result)
        print(f"[gpu-session] {name}: exit {result['exit']} in {result['seconds']} s (budget {budget} s)", flush=True)
        (out / "session.json").write_text(json.dumps({"parts": done, "seconds": round(time.time() - start, 1)},
                                                     indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU time of one training step (forward + backward + SGD-momentum step) of a single 2:4 layer per N:M method,
against a plain dense layer: 1 thread, the methods interleaved within every round, medians of the per-round
ratios printed side by side (nothing written).

    python -m benchmarks.method_layer_step [ROUNDS] [METHOD ...]     (default: 30 rounds, dense srste maxq)

Layers: Conv2d 64→64 3×3 on 16×64×16×16 and Linear 512→512 on 64×512; each method with its default settings.
"""
import statistics
import sys
import time

import torch
import torch.nn as nn

from nm_plugins import SparseConv2d, SparseLinear

REPS = 5


def make_step(kind: str, method: str):
    """One SGD step of a fresh layer of ``kind`` ("conv" / "linear") trained with ``method`` ("dense": plain layer)."""
    torch.manual_seed(0)
    if kind == "conv":
        layer = (nn.Conv2d(64, 64, 3, padding=1) if method == "dense"
                 else SparseConv2d(64, 64, 3, padding=1, pattern="2:4", method=method))
        x = torch.randn(16, 64, 16, 16)
    else:
        layer = nn.Linear(512, 512) if method == "dense" else SparseLinear(512, 512, pattern="2:4", method=method)
        x = torch.randn(64, 512)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        layer(x).square().mean().backward()
        opt.step()

    return step


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rounds = int(argv[0]) if argv else 30
    methods = ["dense"] + [m for m in (argv[1:] or ["srste", "maxq"]) if m != "dense"]
    torch.set_num_threads(1)
    for kind in ("conv", "linear"):
        steps = {m: make_step(kind, m) for m in methods}
        for step in steps.values():
            for _ in range(3):
                step()
        times = {m: [] for m in steps}
        for _ in range(rounds):
            for m, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(REPS):
                    step()
                times[m].append((time.perf_counter() - t0) / REPS)
        cells = [f"{m} {1e3 * statistics.median(times[m]):.2f} ms "
                 f"({statistics.median(a / b for a, b in zip(times[m], times['dense'])):.2f}x dense)" for m in steps]
        print(f"{kind}: " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

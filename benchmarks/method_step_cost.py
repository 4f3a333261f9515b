"""CPU cost of one training step (forward + backward + SGD step) of a small N:M layer per registered method, relative
to a plain dense layer and to SR-STE, measured interleaved (every round runs one step of each method in turn, so
machine load drifting affects all alike) and amortized (the total time of all rounds, mask refreshes included).

    python -m benchmarks.method_step_cost [--methods transposable decaying] [--rounds 120] [--pattern 2:4]

Layers: Conv2d 64→64 3×3 on a batch of 16 × 64 × 16 × 16, and Linear 512→512 on a batch of 256, one torch thread.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from nm_plugins.core import SparseConv2d, SparseLinear

LAYERS = {
    "conv3x3_64": (lambda **kw: nn.Conv2d(64, 64, 3, padding=1, bias=False), SparseConv2d, (64, 64, 3),
                   {"padding": 1, "bias": False}, (16, 64, 16, 16)),
    "linear_512": (lambda **kw: nn.Linear(512, 512), SparseLinear, (512, 512), {}, (256, 512)),
}


def make_step(layer_name: str, method: "str | None", pattern: str):
    """One SGD step of a fresh layer (``method`` None: the plain dense nn layer) on a fixed input."""
    dense, sparse, args, kwargs, input_shape = LAYERS[layer_name]
    torch.manual_seed(0)
    layer = dense() if method is None else sparse(*args, pattern=pattern, method=method, **kwargs)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(input_shape)
    target = torch.randn_like(layer(x))

    def step():
        opt.zero_grad(set_to_none=True)
        ((layer(x) - target) ** 2).mean().backward()
        opt.step()

    return step


def measure(layer_name: str, methods: list, rounds: int, pattern: str) -> dict:
    """Total seconds of ``rounds`` interleaved steps for the dense layer (key "plain") and each method."""
    steps = {"plain": make_step(layer_name, None, pattern)}
    steps.update({m: make_step(layer_name, m, pattern) for m in methods})
    for step in steps.values():  # warm-up
        step()
    total = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            total[name] += time.perf_counter() - t0
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["transposable", "decaying"])
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--pattern", default="2:4")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    methods = ["srste"] + [m for m in args.methods if m != "srste"]
    for layer_name in LAYERS:
        total = measure(layer_name, methods, args.rounds, args.pattern)
        per_step = {k: 1e3 * v / args.rounds for k, v in total.items()}
        cells = "  ".join(f"{m} {per_step[m]:.2f} ms ({total[m] / total['plain']:.2f}x dense, "
                          f"{total[m] / total['srste']:.2f}x srste)" for m in methods)
        print(f"{layer_name} {args.pattern}, {args.rounds} interleaved steps: dense {per_step['plain']:.2f} ms  {cells}")


if __name__ == "__main__":
    main()

"""torch.compile vs eager: the training-step time of a sparse ResNet-18 (SR-STE 2:4, the N:M masks through the
``nm_sparsity::masked_weight`` operator when compiled) and of the dense ResNet-18, on the CPU, printed side by side.

    python -m benchmarks.compile_step [--batch 8] [--size 112] [--steps 10] [--backend inductor]

Each model: ``--warmup`` steps (compilation), then ``--steps`` timed steps (median). The compiled sparse step is
checked against the eager one (same initial weights, same batch) before timing."""
from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch

import nm_plugins.timm  # noqa: F401  (registers nm_resnet18_srste_2_4)


def _make(name):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=100)


def _step_times(model, fn, x, y, warmup, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(fn(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backend", default="inductor")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 100, (args.batch,), generator=gen)

    # the compiled sparse step against the eager one, first step from the same weights
    a, b = _make("nm_resnet18_srste_2_4"), _make("nm_resnet18_srste_2_4")
    loss_a = torch.nn.functional.cross_entropy(a(x), y)
    loss_b = torch.nn.functional.cross_entropy(torch.compile(b, backend=args.backend)(x), y)
    loss_a.backward()
    loss_b.backward()
    grad_diff = max((p.grad - q.grad).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))

    rows = []
    for name in ("nm_resnet18_srste_2_4", "resnet18"):
        model = _make(name)
        eager = _step_times(model, model, x, y, args.warmup, args.steps)
        model = _make(name)
        compiled = _step_times(model, torch.compile(model, backend=args.backend), x, y, args.warmup, args.steps)
        rows.append((name, eager, compiled))
    print(f"CPU training step, batch {args.batch} at {args.size}x{args.size}, {torch.get_num_threads()} threads, "
          f"backend {args.backend}, load average {os.getloadavg()[0]:.2f}")
    print(f"compiled vs eager sparse step: |loss diff| {abs(loss_a.item() - loss_b.item()):.2e}, "
          f"max |grad diff| {grad_diff:.2e}")
    print(f"{'model':<24}{'eager ms':>10}{'compiled ms':>13}{'compiled/eager':>16}")
    for name, eager, compiled in rows:
        print(f"{name:<24}{eager * 1e3:>10.1f}{compiled * 1e3:>13.1f}{compiled / eager:>16.3f}")
    sparse, dense = rows
    print(f"SR-STE/dense step ratio: eager {sparse[1] / dense[1]:.3f}, compiled {sparse[2] / dense[2]:.3f}")


if __name__ == "__main__":
    main()

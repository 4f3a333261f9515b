"""CPU time of one training step of each proxy's model per method, against dense, interleaved as ``make bench``
does: every round times one step of every method in turn, so machine load drifting during the measurement cannot
bias a ratio; the ratio is the median step time of the method over dense's median (and the median of the per-round
paired ratios beside it). One torch thread, the proxy's own model, batch and optimizer.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

ROUNDS, WARMUP = 20, 3


def _classify_step(cfg: dict):
    from nm_plugins.train.classify import build_model
    torch.manual_seed(0)
    model = build_model(cfg, 10, 1)
    model.train()
    o = cfg["optim"]
    opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    x, y = torch.randn(cfg["data"]["batch_size"], 1, 28, 28), torch.randint(0, 10, (cfg["data"]["batch_size"],))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _translation_step(cfg: dict, vocab_size: int = 3000, length: int = 30):
    from nm_plugins.translation.model import build_model
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size)
    model.train()
    o = cfg["optim"]
    opt = torch.optim.Adam(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
    batch = max(1, cfg["data"]["max_tokens"] // length)  # about max_tokens target tokens, as the trainer's batches
    src = torch.randint(4, vocab_size, (batch, length))
    tgt = torch.randint(4, vocab_size, (batch, length + 1))

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(src, tgt[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten()).backward()
        opt.step()
    return step


def step_times(configs: dict, trainer: str, rounds: int = ROUNDS, warmup: int = WARMUP) -> dict:
    """{label: [seconds of each timed round]} for one training step of every config in ``configs`` ({label:
    resolved trainer config}, ``trainer`` "classify" or "translation"), interleaved within every round."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make = _classify_step if trainer == "classify" else _translation_step
        steps = {label: make(cfg) for label, cfg in configs.items()}
        times = {label: [] for label in steps}
        for _ in range(warmup + rounds):
            for label, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - t0)
        return {label: t[warmup:] for label, t in times.items()}
    finally:
        torch.set_num_threads(threads)


def ratios(times: dict, dense: str = "dense") -> dict:
    """{label: {"median_s", "ratio_vs_dense" (median / dense's median), "paired_ratio_median" (median of the
    per-round ratios)}} of :func:`step_times`."""
    base = times[dense]
    return {label: {"median_s": statistics.median(t), "ratio_vs_dense": statistics.median(t) / statistics.median(base),
                    "paired_ratio_median": statistics.median(a / b for a, b in zip(t, base)), "rounds": len(t)}
            for label, t in times.items()}

"""Shared by the method tests: full-batch training of a small classifier through its N:M layers."""
from __future__ import annotations

import torch


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, steps: int) -> list:
    """``steps`` full-batch cross-entropy steps with ``opt``; the loss of each step, before its update."""
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses

"""Exact reference implementations the benchmarks compare the core against (plain PyTorch, any device)."""
import torch

from nm_plugins.core.mask import from_groups, to_groups


def argsort_nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Reference N:M mask by a stable argsort of every group of M input channels (ties keep the lower index)."""
    groups = to_groups(weight, m).abs()
    keep = torch.argsort(-groups, dim=1, stable=True)[:, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return from_groups(mask, weight.shape)

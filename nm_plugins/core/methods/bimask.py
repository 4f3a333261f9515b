"""Bi-Mask (Zhang et al., ICML 2023, "Bi-directional Masks for Efficient N:M Sparse Training"; authors' code
zyxxmu/Bi-Mask, CnnModels/utils/conv_type.py): a forward N:M mask along input channels (as SR-STE) and a separate
backward mask, N:M along output channels, for the input-gradient GEMM, with the output channels permuted to keep
as many forward-kept weights as possible.

With W [out, in, *k], F = top-N |W| in every group of M input channels (the forward mask), a permutation π of the
output channels, and B_π = top-N |(W ⊙ F)[π]| in every group of M consecutive permuted output channels at each
(in, *k)::

    forward          Y = X ∗ (W ⊙ F)
    backward mask    B = F ∧ π⁻¹(B_π)                      (≤ N kept per group of M output channels, in π's order)
    input gradient   ∂L/∂X = from W ⊙ B                    (the contract's input_grad_weight)
    weight gradient  ∂L/∂W = ∂L/∂(W ⊙ F) + λ·(1 − F) ⊙ W   (straight-through plus SR-STE's term, λ = 2e-4)
    π                = argmax over K random permutations of Σ B  (searched every ``refresh_every`` steps)

See docs/methods/bimask.md for what follows the authors' code rather than the paper.
"""
from __future__ import annotations

import torch

from ..mask import group_topn, nm_mask
from ..pattern import NMPattern
from . import register_method
from .base import NMMethod
from .builtin import add_pruned_decay


def backward_mask(weight: torch.Tensor, forward_mask: torch.Tensor, pattern: "NMPattern | str",
                  perm: "torch.Tensor | None" = None) -> torch.Tensor:
    """B = F ∧ π⁻¹(top-N |(W ⊙ F)[π]| in every group of M consecutive permuted output channels at each (in, *k));
    ``perm`` None: the identity. A last partial group of r output channels keeps at most min(N, r)."""
    pattern = NMPattern.parse(pattern)
    out, m = weight.shape[0], pattern.m
    w, f = weight.detach().reshape(out, -1), forward_mask.reshape(out, -1)  # [out, in·k]: rows contiguous
    if perm is not None:
        w, f = w.index_select(0, perm), f.index_select(0, perm)
    kept = w * f.view(torch.uint8)
    if out % m:  # a last partial group of output channels: zero rows never beat a kept weight
        kept = torch.cat([kept, kept.new_zeros(-out % m, kept.shape[1])])
    # group_topn on [out/M, M, in·k]: rank comparisons between the M row slices of each group (no transpose)
    mask = group_topn(kept.view(-1, m, kept.shape[1]), pattern.n).view(-1, kept.shape[1])[:out].logical_and_(f)
    if perm is not None:
        mask = torch.empty_like(mask).index_copy_(0, perm, mask)
    return mask.view(weight.shape)


def search_permutation(weight: torch.Tensor, forward_mask: torch.Tensor, pattern: "NMPattern | str",
                       candidates: int, generator: torch.Generator) -> "tuple[torch.Tensor | None, int]":
    """(π, Σ B) for the permutation of output channels, among ``candidates`` drawn uniformly from ``generator``,
    whose backward mask keeps the most forward-kept weights (counted as mask entries, as the authors'
    ``get_best_permutation``); the first best wins ties; (None, 0) — the identity — only when no candidate keeps any
    (an all-False forward mask): the identity itself is not a candidate."""
    best, best_kept = None, 0
    for _ in range(candidates):
        perm = torch.randperm(weight.shape[0], generator=generator).to(weight.device)
        kept = int(backward_mask(weight, forward_mask, pattern, perm).sum())
        if kept > best_kept:
            best, best_kept = perm, kept
    return best, best_kept


@register_method("bimask")
class BiMask(NMMethod):
    """Bi-Mask: SR-STE's forward (built-in weight ⊙ mask, straight-through, λ·(1−mask)⊙W at the step) and the input
    gradient from W ⊙ B, B the permuted backward mask (:func:`backward_mask`).

    Settings: ``decay`` λ (2e-4, the authors' ``MyConv2d_Lay``); ``refresh_every`` (100, their ``--iter``): the
    permutation is searched at the steps s with (s + 1) % refresh_every == 0, the identity before the first search;
    ``num_candidates`` (100, their ImageNet command's ``--greedy_num``); ``seed`` (0) of the layer's own generator
    of candidates (the global random streams stay untouched, so data order matches the other methods)."""

    defaults = {"decay": 2e-4, "refresh_every": 100, "num_candidates": 100, "seed": 0}
    uses_step = True

    def __init__(self, **settings):
        super().__init__(**settings)
        self.perm = None                # the current permutation of output channels (None: identity)
        self.searched_at = None         # the step of the last search
        self.generator = torch.Generator().manual_seed(self.settings["seed"])
        self._pattern = None            # the layer's pattern, known from compute_mask

    def validate(self) -> None:
        s = self.settings
        try:
            s["decay"] = float(s["decay"])
        except (TypeError, ValueError):
            raise ValueError(f"N:M method 'bimask': decay must be a number, got {s['decay']!r}") from None
        if not s["decay"] >= 0:
            raise ValueError(f"N:M method 'bimask': decay must be >= 0, got {s['decay']}")
        for key in ("refresh_every", "num_candidates"):
            if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
                raise ValueError(f"N:M method 'bimask': {key} must be an integer >= 1, got {s[key]!r}")
        if isinstance(s["seed"], bool) or not isinstance(s["seed"], int) or s["seed"] < 0:
            raise ValueError(f"N:M method 'bimask': seed must be an integer >= 0, got {s['seed']!r}")

    def compute_mask(self, weight, pattern, grouping, step):
        """The forward mask: SR-STE's top-N |w| in every group of M input channels (the layer's grouping)."""
        self._pattern = NMPattern.parse(pattern)
        return nm_mask(weight, pattern, check_finite=False, grouping=grouping)

    def input_grad_weight(self, weight, mask, step):
        """W ⊙ B (detached), B from the current permutation; searches a new one first when due at ``step`` (once per
        step)."""
        if self._pattern is None:
            raise RuntimeError("N:M method 'bimask': input_grad_weight called before compute_mask (the layer's "
                               "pattern is not known yet)")
        if (step + 1) % self.settings["refresh_every"] == 0 and self.searched_at != step:
            self.perm, _ = search_permutation(weight, mask, self._pattern, self.settings["num_candidates"],
                                              self.generator)
            self.searched_at = step
        perm = None if self.perm is None else self.perm.to(weight.device)
        return weight.detach() * backward_mask(weight, mask, self._pattern, perm).view(torch.uint8)

    def wants_step_term(self) -> bool:
        return self.settings["decay"] != 0.0

    def step_term(self, weight, mask, grad, step, grad_scale=None, calls=1) -> bool:
        """grad += λ·calls·(1 − F) ⊙ W (times ``grad_scale`` while the gradient carries a loss scale)."""
        return add_pruned_decay(weight, mask, grad, self.settings["decay"] * calls, grad_scale)

    def method_state(self) -> dict:
        state = {"generator": self.generator.get_state()}
        if self.perm is not None:
            state["perm"] = self.perm.cpu()
        if self.searched_at is not None:
            state["searched_at"] = torch.tensor(self.searched_at)
        return state

    def load_method_state(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.perm = state["perm"].long() if "perm" in state else None
        self.searched_at = int(state["searched_at"]) if "searched_at" in state else None

"""S-STE (Hu, Zhu & Chen, NeurIPS 2024, "S-STE: Continuous Pruning Function for Efficient 2:4 Sparse Pre-training";
authors' code huyz2023/2by4-pretrain and thu-ml/2by4-pretrain-acc-examples): a continuous N:M pruning function
(soft-thresholding) with a fixed per-tensor scale, trained straight-through.

In every group ``a`` of M weights, with ``t`` the (N+1)-th largest ``|a_i|`` (for 2:4 the second smallest)::

    S(a)_i = sign(a_i) · max(|a_i| − t, 0)          (at most N non-zeros per group: valid N:M)
    forward weight  W_f = β · S(W)
    β = <W₀, S(W₀)> / <S(W₀), S(W₀)>                 (least-squares scale of the weight W₀ at the first forward,
                                                      per tensor, then fixed)
    ∂L/∂W = ∂L/∂W_f                                  (straight-through: neither β nor S's Jacobian)

See docs/methods/sste.md for what follows the authors' code rather than the paper.
"""
from __future__ import annotations

import torch

from ..mask import from_flat_groups, from_groups, nm_mask, to_flat_groups, to_groups
from ..pattern import NMPattern
from . import register_method
from .base import NMMethod


def soft_threshold(weight: torch.Tensor, pattern: "NMPattern | str", grouping: str = "channels",
                   mask: "torch.Tensor | None" = None) -> torch.Tensor:
    """S(W): in every N:M group (the layer's grouping) sign(w)·max(|w| − t, 0), t the group's (N+1)-th largest |w|
    (0 when N = M; a last partial group of r ≤ N channels keeps its weights unchanged). ``mask``: the top-N |w|
    mask of ``weight`` when already known (t is then the largest pruned |w| of each group)."""
    pattern = NMPattern.parse(pattern)
    w = weight.detach()
    if pattern.n == pattern.m:
        return w.clone()
    if mask is None:
        mask = nm_mask(w, pattern, check_finite=False, grouping=grouping)
    m, pruned = pattern.m, (~mask).view(torch.uint8)
    if grouping == "channels" and w.shape[1] % m == 0:  # groups as a view: [out, C/M, M, *k]
        mag = w.abs().unflatten(1, (w.shape[1] // m, m))
        t = (mag * pruned.unflatten(1, (-1, m))).amax(2, keepdim=True)
        shrunk = (mag - t).clamp_min_(0).flatten(1, 2)
    else:  # partial groups (zero-padded: the padding never exceeds t) or the authors' flat groups
        to, back = (to_flat_groups, from_flat_groups) if grouping == "authors_flat" else (to_groups, from_groups)
        mag = to(w, m).abs()
        t = (mag * to(pruned, m)).amax(1, keepdim=True)
        shrunk = back((mag - t).clamp_min_(0), w.shape)
    # |w| ≤ t outside the top-N mask, so only the N kept can be non-zero (and not those tied with t)
    return torch.copysign(shrunk, w)


def rescale_factor(weight: torch.Tensor, shrunk: torch.Tensor) -> float:
    """β = <W, S(W)> / <S(W), S(W)> (the scale minimising ‖W − β·S(W)‖²; 1.0 when S(W) is all zeros)."""
    w, s = weight.detach().double().flatten(), shrunk.detach().double().flatten()
    denominator = torch.dot(s, s)
    return float(torch.dot(w, s) / denominator) if denominator > 0 else 1.0


class _StraightThrough(torch.autograd.Function):
    """Forward: the precomputed ``value``; backward: the gradient passed to ``weight`` unchanged."""

    @staticmethod
    def forward(ctx, weight, value):
        return value

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None


@register_method("sste")
class SSTE(NMMethod):
    """S-STE: forward β·S(W) (soft-thresholding to N:M, fixed per-tensor β), straight-through gradient. Any N:M
    pattern (the paper's 2:4 is the default of the layers); the mask is S(W)'s support's top-N mask.

    Settings: ``beta`` — None (default): β from the layer's weight at its first forward, then fixed (the authors'
    ``init_scale``); a number: that fixed β (1.0: no rescaling)."""

    defaults = {"beta": None}

    def __init__(self, **settings):
        super().__init__(**settings)
        self.beta = self.settings["beta"]
        self._layout = None  # (pattern, grouping) of the layer, known from compute_mask

    def validate(self) -> None:
        beta = self.settings["beta"]
        if beta is None:
            return
        try:
            beta = float(beta)
        except (TypeError, ValueError):
            raise ValueError(f"N:M method 'sste': beta must be null (computed at the first forward) or a number, "
                             f"got {beta!r}") from None
        if not (beta > 0 and beta != float("inf")):
            raise ValueError(f"N:M method 'sste': beta must be a finite number > 0, got {beta}")
        self.settings["beta"] = beta

    def compute_mask(self, weight, pattern, grouping, step):
        """The top-N |w| mask of every group: S(W) is zero outside it (and inside it only where |w| = t)."""
        self._layout = (NMPattern.parse(pattern), grouping)
        return nm_mask(weight, pattern, check_finite=False, grouping=grouping)

    def forward_weight(self, weight, mask, step):
        """β·S(W) from the current weight and its top-N mask ``mask`` (the layer's, computed for this weight),
        straight-through in ``weight``."""
        if self._layout is None:
            raise RuntimeError("N:M method 'sste': forward_weight called before compute_mask (the layer's pattern "
                               "and grouping are not known yet)")
        shrunk = soft_threshold(weight, *self._layout, mask=mask)
        if self.beta is None:
            self.beta = rescale_factor(weight, shrunk)
        return _StraightThrough.apply(weight, shrunk.mul_(self.beta))

    def method_state(self) -> dict:
        return {} if self.beta is None else {"beta": torch.tensor(self.beta, dtype=torch.float64)}

    def load_method_state(self, state: dict) -> None:
        """β from the checkpoint; without one (a dense or another method's checkpoint) the setting's again: null
        recomputes it from the loaded weight at the next forward."""
        self.beta = float(state["beta"]) if "beta" in state else self.settings["beta"]

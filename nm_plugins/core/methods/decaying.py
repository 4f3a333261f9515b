"""Decaying pruning masks (Kao et al. 2022, "Training recipe for N:M structured sparsity with decaying pruning mask";
Bambhaniya et al. 2024, "Progressive gradient flow for robust N:M sparsity training in transformers", MdGf): the
pruned weights are not zeroed at once but scaled by a factor β(t) that decays from 1 to 0 over training,

    forward weight  Ŵ = W ⊙ (m + β(t)·(1 − m)),    m = the N:M top-|W| mask of the dense weight (every step),

with the gradient straight through to every weight, ∂L/∂W := ∂L/∂Ŵ (the authors' ``LinearDecay.backward`` /
``ExponentialDecay.backward`` return ``grad_output`` unchanged; no SR-STE term), and the schedule, in optimizer
steps t (the authors' ``current_step_num``: updates so far, less the dense phase; train.py ``train_one_epoch``)

    t' = t − dense_steps;   β = 1 while t' < 0 (dense);
    "exp":    β(t) = exp(−decay_coef · t')            (the authors' ViT config: EXP, decay_coef 1e-4)
    "linear": β(t) = max(0, 1 − decay_coef · t')
    β = 0 from step ``hard_from`` on (their fine-tune phase: the mask turns binary, ``decay_type = "step"``),
    and β = 0 once it falls below 2^-24 (float32's unit roundoff; ours, not the authors': a smaller β only makes
    denormal, non-zero pruned weights, slow on CPUs and not N:M).

From timm/sparse_pruning/sparse_functions.py of abhibambhaniya/progressive_gradient_flow_nm_sparsity
(``get_sparse_mask``, ``LinearDecay``, ``ExponentialDecay``, ``SparseLinear.get_sparse_weights``); their
``--decay-coef`` default is 2e-4, ours too. Their sparse structure decay (SdGf: N:M itself changing over epochs,
e.g. 8:64 → 4:32 → 2:16 → 1:8) is not part of this method.
"""
from __future__ import annotations

import math

import torch

from . import NMMethod, register_method

SCHEDULES = ("exp", "linear")
BETA_FLOOR = 2.0 ** -24  # float32's unit roundoff: a smaller β is 0


class _DecayedWeight(torch.autograd.Function):
    """Forward W ⊙ (m + β(1−m)); backward the gradient unchanged (straight-through to every weight)."""

    @staticmethod
    def forward(ctx, weight, mask, beta):
        keep = mask.to(weight.dtype)
        return weight * (keep + (1.0 - keep) * beta) if beta != 0.0 else weight * keep

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@register_method("decaying")
class Decaying(NMMethod):
    """Decaying pruning mask: forward W ⊙ (m + β(t)(1−m)), β from 1 to 0 by ``schedule`` ("exp" / "linear") at rate
    ``decay_coef`` per optimizer step after ``dense_steps`` dense ones, 0 from ``hard_from`` (None: never forced);
    straight-through gradient."""

    defaults = {"schedule": "exp", "decay_coef": 2e-4, "dense_steps": 0, "hard_from": None}
    uses_step = True

    def validate(self) -> None:
        """Raise ValueError naming the setting that cannot work (schedule, decay_coef, dense_steps, hard_from)."""
        s = self.settings
        if s["schedule"] not in SCHEDULES:
            raise ValueError(f"N:M method 'decaying': schedule must be one of {', '.join(SCHEDULES)}, got {s['schedule']!r}")
        coef = s["decay_coef"]
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not 0 < float(coef) < math.inf:
            raise ValueError(f"N:M method 'decaying': decay_coef must be a finite number > 0 (β's decay per optimizer "
                             f"step), got {coef!r}")
        s["decay_coef"] = float(coef)
        if not _is_int(s["dense_steps"]) or s["dense_steps"] < 0:
            raise ValueError(f"N:M method 'decaying': dense_steps must be an integer >= 0, got {s['dense_steps']!r}")
        hard = s["hard_from"]
        if hard is not None and (not _is_int(hard) or hard < s["dense_steps"]):
            raise ValueError(f"N:M method 'decaying': hard_from must be None or an integer step >= dense_steps "
                             f"({s['dense_steps']}), got {hard!r}")

    def beta(self, step: int) -> float:
        """β(step): the factor on the pruned weights at optimizer step ``step`` (1 = dense, 0 = hard N:M)."""
        s = self.settings
        if s["hard_from"] is not None and step >= s["hard_from"]:
            return 0.0
        t = step - s["dense_steps"]
        if t < 0:
            return 1.0
        beta = math.exp(-s["decay_coef"] * t) if s["schedule"] == "exp" else max(0.0, 1.0 - s["decay_coef"] * t)
        # Below float32's unit roundoff β·w is below the precision of any weight of w's size; taken as 0 (the mask
        # is hard from there on, and no denormal products: exp(-0.2346 t) reaches 1e-38 near step 375)
        return 0.0 if beta < BETA_FLOOR else beta

    def forward_weight(self, weight: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
        """W ⊙ (mask + β(step)·(1 − mask)), with the straight-through gradient (∂L/∂W = ∂L/∂Ŵ)."""
        return _DecayedWeight.apply(weight, mask, self.beta(step))

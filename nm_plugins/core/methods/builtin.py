"""The built-in N:M training methods on the plugin contract: SR-STE, STE, fixed, dense and ASP. All keep the
layer's built-in ``weight ⊙ mask`` forward (cached, in place; C kernel / Triton), bit-identical to the layers
before the plugin design."""
from __future__ import annotations

import torch

from ..mask import masked_grad
from . import register_method
from .base import NMMethod

DEFAULT_DECAY = 2e-4


@register_method("srste")
class SRSTE(NMMethod):
    """SR-STE (Zhou et al., ICLR 2021): forward weight ⊙ mask, straight-through backward, and at the optimizer
    step the sparse-refined term λ_W·(1−mask)⊙W added to the weight's gradient (``decay`` = λ_W; once per step, or
    once per layer call with the layer's ``decay_mode="call"``, as the authors' code)."""

    defaults = {"decay": DEFAULT_DECAY}

    def validate(self) -> None:
        try:
            decay = float(self.settings["decay"])
        except (TypeError, ValueError):
            raise ValueError(f"N:M method 'srste': decay must be a number, got {self.settings['decay']!r}") from None
        if not decay >= 0:
            raise ValueError(f"SR-STE decay must be >= 0, got {decay}")
        self.settings["decay"] = decay

    def wants_step_term(self) -> bool:
        return self.settings["decay"] != 0.0

    def step_term(self, weight, mask, grad, step, grad_scale=None, calls=1) -> bool:
        return add_pruned_decay(weight, mask, grad, self.settings["decay"] * calls, grad_scale)


def add_pruned_decay(weight, mask, grad, decay: float, grad_scale=None) -> bool:
    """SR-STE's optimizer-step term, in place: grad += decay·(1 − mask)⊙weight (times ``grad_scale`` while the
    gradient still carries a loss scale); False when decay is 0. Shared by the methods that keep SR-STE's decay."""
    if decay == 0.0:
        return False
    with torch.no_grad():
        if grad_scale is not None:
            grad.addcmul_(weight, (~mask).to(grad.dtype).mul_(grad_scale * decay))
        else:
            masked_grad(grad, weight, mask, decay, inplace=True)
    return True


@register_method("ste")
class STE(NMMethod):
    """Straight-through estimator: forward weight ⊙ mask (refreshed from the dense weight), the gradient of the
    masked weight passed to the dense weight unchanged."""


@register_method("fixed")
class Fixed(NMMethod):
    """A frozen mask (ASP fine-tuning; :func:`nm_plugins.core.prune_once`): computed once, never refreshed; pruned
    weights get zero gradient."""

    refreshes = False
    masked_gradient = True


@register_method("dense")
class Dense(NMMethod):
    """Dense training through the N:M layers: the mask is tracked (SAD, masks of the dense weights) but never
    applied."""

    applies_mask = False


@register_method("asp")
class ASP(Dense):
    """ASP (NVIDIA's Automatic SParsity recipe): dense training, then one-shot magnitude N:M masks frozen for
    fine-tuning. A layer trains as ``dense`` until the model is pruned (:func:`nm_plugins.core.prune_once`,
    :func:`nm_plugins.timm.asp_prune`, or the classification trainer at ``sparsity.asp_prune_epoch``), which
    switches it to ``fixed``. The model-level recipes create their layers as ``dense`` and record ``asp`` as the
    model's method."""

"""When the SR-STE decay (any method's step term, and the step count of methods with a schedule) is added: at
``optimizer.step()``, to the gradient the optimizer is about to use.

A sparse layer's backward only records that its decay ``λ_W·(1−mask)⊙W`` is owed (and, in ``"call"`` mode,
how many times the layer was called). A global optimizer step pre-hook adds the owed terms of the optimizer's
parameters just before the update. By then ``GradScaler.step`` / mmengine's ``AmpOptimWrapper`` have unscaled
the gradients (or, for fused optimizers that unscale inside ``step``, the hook multiplies by the optimizer's
``grad_scale``), so λ_W is the configured one under any loss scale, once per step whatever the number of
micro-batches or processes. Loops that update weights without a ``torch.optim.Optimizer`` call
:func:`apply_srste_decay` before their update.
"""
from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .mask_triton import _FLAGS, raise_if_nonfinite

_PENDING: "weakref.WeakSet" = weakref.WeakSet()


def mark_pending(layer) -> None:
    """Record that ``layer`` owes its decay at the next optimizer step (called from its backward)."""
    _PENDING.add(layer)


def apply_srste_decay(params=None, grad_scale: torch.Tensor | None = None) -> int:
    """Add the owed SR-STE decay to the ``.grad`` of every sparse layer whose backward ran since the last step
    and whose weight is in ``params`` (all when None); ``grad_scale``: the loss scale the gradients still
    carry. Returns the number of layers updated."""
    if not _PENDING:
        return 0
    ids = None if params is None else {id(p) for p in params}
    done = 0
    for layer in list(_PENDING):
        if ids is not None and id(layer.weight) not in ids:
            continue  # owed at the step of the optimizer that holds this weight
        _PENDING.discard(layer)
        done += layer._apply_decay(grad_scale)
    return done


def _names_of_nonfinite_layers() -> str:
    bad = [repr(layer) for layer in list(_PENDING) if not bool(torch.isfinite(layer.weight).all())]
    return ", ".join(bad) or "(finite again now)"


def _step_pre_hook(optimizer, args, kwargs) -> None:
    if _FLAGS:
        raise_if_nonfinite(_names_of_nonfinite_layers)
    if _PENDING:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        apply_srste_decay(params, getattr(optimizer, "grad_scale", None))


_HOOK = register_optimizer_step_pre_hook(_step_pre_hook)

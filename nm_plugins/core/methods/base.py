"""The contract of an N:M training method (issue 25): one object per method owns how the mask is chosen, the
weight the layer's forward uses, the gradient rule, and any term added at the optimizer step.

An N:M layer (:class:`nm_plugins.core.SparseConv2d` / :class:`~nm_plugins.core.SparseLinear`) holds one method
object (``layer.nm_method``; ``layer.method`` is its registered name). A method is one module that subclasses
:class:`NMMethod` and registers it with :func:`nm_plugins.core.methods.register_method`; every adapter then accepts
it by name, with its own settings (``method_args``) in config.

Two paths, chosen by the method:

* **the built-in path** (``forward_weight`` not overridden): forward ``weight ⊙ mask`` from the layer's cached,
  in-place masked weight (C kernel on CPU, Triton on CUDA, the ``nm_sparsity::masked_weight`` operator under
  compile/export), straight-through backward (``masked_gradient=True``: the gradient times the mask), then
  :meth:`step_term` at ``optimizer.step``. SR-STE, STE, fixed, dense and ASP use it, bit-identical to before.
* **a method-defined forward** (``forward_weight`` overridden): the layer's forward uses the tensor it returns,
  differentiable in ``weight``; autograd through it (or the method's own ``torch.autograd.Function``) is the
  gradient rule. Plain PyTorch, correct first; its cost is measured by ``make reproduce-methods``.

The layer setting ``decay_mode`` (``"step"``/``"call"``) stays on the layer (``layer.decay_mode``); it decides the
``calls`` passed to :meth:`NMMethod.step_term`. The legacy ``decay`` keyword of the layers, ``sparsify`` and the
adapters fills a method's ``decay`` setting where it has one (``method_args`` wins); ``layer.decay`` reads it (0 for
methods without one).

A method object holds its settings (``self.settings``) and, where a method needs it, what it learned about its
layer (S-STE's β, Bi-Mask's permutation), which :meth:`NMMethod.method_state` returns for the layer to save;
each layer holds its own copy (a deepcopy of an object passed in); the mask and step count live in the layer.

Under ``torch.compile`` / ``torch.export`` / ``torch.jit.trace`` / FX, only methods on the built-in path with the
default ``compute_mask`` and ``mask_due`` are recorded (the ``nm_sparsity::masked_weight`` operator); a layer whose
method defines its own forward weight or mask raises a clear error naming the method there (eager only for now).

On both paths the layer recomputes the mask when its weight changed (version counter), the method ``refreshes`` and
``mask_due(step)``; a method's own ``compute_mask`` replaces the C / Triton kernel. A non-None
``input_grad_weight`` wraps the layer's conv / linear in an autograd Function whose input gradient uses that weight
(the weight and bias gradients stay autograd's; plain PyTorch, its backward re-runs the op).

``step`` everywhere is the number of optimizer steps that updated the layer's weight so far (0 before the first),
counted by the layer and saved in its state_dict as ``nm_step`` for methods with ``uses_step = True`` (resume
keeps a schedule where it was): the optimizer step pre-hook of :mod:`nm_plugins.core.decay` counts a step for every
layer whose backward ran since the last one and whose weight that optimizer holds (loops without a
``torch.optim`` optimizer call :func:`nm_plugins.core.apply_srste_decay` before their update).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..mask import nm_mask
from ..pattern import NMPattern


class NMMethod:
    """One N:M training method; subclass, set ``defaults``, override what differs, and register it. The layer
    that holds a method object sets its ``pattern`` (NMPattern) and ``grouping`` attributes, and saves what
    :meth:`method_state` returns with its state_dict (keys ``<layer>.nm_method.<name>``)."""

    name: ClassVar[str] = ""              # the registered name (set by register_method)
    defaults: ClassVar[dict] = {}         # the method's settings (method_args) and their defaults
    applies_mask: ClassVar[bool] = True   # False: dense — the mask is tracked (SAD) but never applied
    refreshes: ClassVar[bool] = True      # False: the mask is computed once and frozen (fixed)
    masked_gradient: ClassVar[bool] = False  # built-in path: the weight's gradient times the mask (fixed)
    uses_step: ClassVar[bool] = False     # True: the method reads ``step``; the layer saves ``nm_step``

    def __init__(self, **settings):
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"N:M method {self.name!r}: unknown setting(s) {', '.join(unknown)} (its settings: {known})")
        self.settings = {**self.defaults, **settings}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting of ``self.settings`` that cannot work."""

    # --- the mask -----------------------------------------------------------------------------------------
    def compute_mask(self, weight: torch.Tensor, pattern: NMPattern, grouping: str, step: int) -> torch.Tensor:
        """The N:M mask (bool, weight's shape) for ``weight`` at ``step``: by default the N largest |w| in every
        group of M (nm_mask: the C kernel on CPU, one Triton launch on CUDA; ties to the lower index)."""
        return nm_mask(weight, pattern, check_finite=False, grouping=grouping)

    def mask_due(self, step: int) -> bool:
        """Whether a changed weight gets a new mask at ``step`` (default: always; e.g. every k steps)."""
        return True

    # --- forward and backward -----------------------------------------------------------------------------
    def forward_weight(self, weight: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
        """The weight the layer's forward uses, differentiable in ``weight`` (see the module doc); the base class
        raises NotImplementedError: the built-in ``weight ⊙ mask`` path is used."""
        raise NotImplementedError

    def input_grad_weight(self, weight: torch.Tensor, mask: torch.Tensor, step: int) -> "torch.Tensor | None":
        """The weight the gradient of the layer's input is computed with (e.g. Bi-Mask's backward mask), or None:
        the forward weight (autograd's own rule)."""
        return None

    def step_term(self, weight: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor, step: int,
                  grad_scale: "torch.Tensor | None" = None, calls: int = 1) -> bool:
        """Add the method's optimizer-step term to ``grad`` in place (``grad_scale``: the loss scale ``grad``
        still carries; ``calls``: how many times the term is owed: 1, or with the layer's ``decay_mode="call"``
        the number of backward passes through the layer since the last step); True if something was added.
        Called at ``optimizer.step`` for layers whose backward ran, when :meth:`wants_step_term`. Default:
        nothing (SR-STE adds λ_W·(1−mask)⊙W)."""
        return False

    def wants_step_term(self) -> bool:
        """Whether :meth:`step_term` adds anything with these settings (default: when the class overrides it)."""
        return type(self).step_term is not NMMethod.step_term

    # --- per-layer state ---------------------------------------------------------------------------------------
    def method_state(self) -> dict:
        """Tensors this method learned about its layer and must keep across save / load (e.g. S-STE's β, Bi-Mask's
        permutation and its random generator); the layer saves them with its state_dict. Default: none."""
        return {}

    def load_method_state(self, state: dict) -> None:
        """Restore what :meth:`method_state` returned (``state`` is empty for a checkpoint saved without it)."""

    # --- description ----------------------------------------------------------------------------------------
    @classmethod
    def uses_builtin_forward(cls) -> bool:
        """True when the method keeps the built-in ``weight ⊙ mask`` forward (does not override forward_weight)."""
        return cls.forward_weight is NMMethod.forward_weight

    def describe(self) -> str:
        """``name(setting=value, ...)`` for reprs and reports."""
        args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.settings.items())
        return f"{self.name}({args})" if args else self.name

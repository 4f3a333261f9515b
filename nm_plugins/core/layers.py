"""SR-STE / STE / fixed-mask N:M layers: drop-in subclasses of nn.Conv2d and nn.Linear."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mask import check_groupable, masked_grad, nm_mask
from .pattern import NMPattern

METHODS = ("srste", "ste", "fixed", "dense")
DEFAULT_DECAY = 2e-4


class _MaskState:
    """Per-layer cache: the weight version the mask was computed for and the decay was added at, and the
    masked weight (kept between steps and rewritten in place, so a step allocates nothing new for it)
    with the (weight version, mask version) it holds."""

    __slots__ = ("key", "decay_key", "masked", "masked_key")

    def __init__(self):
        self.key = None
        self.decay_key = None
        self.masked = None
        self.masked_key = None


class _MaskedWeight(torch.autograd.Function):
    """The masked weight forward (precomputed); straight-through backward (+ SR-STE decay once per
    weight version, or masked gradient for ``fixed``)."""

    @staticmethod
    def forward(ctx, weight, mask, masked, method, decay, state, key, in_forward):
        ctx.save_for_backward(weight, mask)
        ctx.method, ctx.decay, ctx.state, ctx.key, ctx.in_forward = method, decay, state, key, in_forward
        return masked.view_as(masked)

    @staticmethod
    def backward(ctx, grad_out):
        weight, mask = ctx.saved_tensors
        # In place only on the fresh gradient of the layer's own conv/linear: nothing else holds it.
        in_place = ctx.in_forward and not grad_out.requires_grad
        if ctx.method == "fixed":
            return masked_grad(grad_out, weight, mask, fixed=True, inplace=in_place), *(None,) * 7
        grad = grad_out
        if ctx.method == "srste" and ctx.decay != 0.0 and ctx.state.decay_key != ctx.key:
            # Added once per weight version, i.e. once per optimizer step, however many micro-batches
            # (gradient accumulation) or processes (DDP averages identical terms) contribute.
            ctx.state.decay_key = ctx.key
            grad = masked_grad(grad_out, weight, mask, ctx.decay, inplace=in_place)
        return grad, *(None,) * 7


class SparseMixin:
    """Shared N:M machinery of :class:`SparseConv2d` and :class:`SparseLinear`."""

    weight: nn.Parameter

    def _init_sparsity(self, pattern, method, decay):
        if method not in METHODS:
            raise ValueError(f"unknown sparsity method {method!r}: expected one of {', '.join(METHODS)}")
        decay = float(decay)
        if decay < 0:
            raise ValueError(f"SR-STE decay must be >= 0, got {decay}")
        self.pattern = NMPattern.parse(pattern)
        self.method = method
        self.decay = decay if method == "srste" else 0.0
        check_groupable(self.weight.shape, self.pattern)
        self.register_buffer("nm_mask", torch.ones_like(self.weight, dtype=torch.bool))
        self._state = _MaskState()

    def _weight_key(self):
        w = self.weight
        return (w._version, w.data_ptr(), w.device)

    def mask(self) -> torch.Tensor:
        """The current N:M mask; recomputed only when the dense weight changed since it was computed
        (``fixed`` keeps its mask; ``dense`` computes it for tracking but never applies it)."""
        key = self._weight_key()
        if self._state.key is None or (self.method != "fixed" and self._state.key != key):
            # the masked weight comes with the mask in the same pass (not needed for ``dense``)
            masked = None if self.method == "dense" else self._masked_buffer()
            with torch.no_grad():
                nm_mask(self.weight, self.pattern, out=self.nm_mask, masked=masked)
            self._state.key = key
            if masked is not None:
                self._state.masked_key = self._masked_key(key)
        return self.nm_mask

    def refresh_mask(self) -> torch.Tensor:
        """Recompute the mask from the current weight now (also for ``fixed``) and return it."""
        self._state.key = None
        return self.mask()

    def masked_weight(self) -> torch.Tensor:
        """weight ⊙ mask as a new tensor, differentiable with the layer's method (SR-STE, STE, fixed, dense;
        for ``dense`` the weight itself)."""
        if self.method == "dense":
            return self.weight
        return self._masked_weight(in_forward=False).clone()

    def _forward_weight(self) -> torch.Tensor:
        """The masked weight for the layer's own conv/linear: a view of the layer's persistent buffer
        (rewritten in place when the weight changes); the conv's fresh weight gradient, which nothing
        else holds, receives the decay in place."""
        return self._masked_weight(in_forward=True)

    def _masked_weight(self, in_forward: bool) -> torch.Tensor:
        if self.method == "dense":
            return self.weight
        fused = self.__dict__.get("_fused_engine")  # set by nm_plugins.core.fused.FusedSRSTE
        if fused is not None:
            masked = fused.masked_weight(self)
            if masked is not None:
                return masked
        mask, masked = self.mask(), self._masked_buffer()
        state = self._state
        masked_key = self._masked_key(self._weight_key())
        if state.masked_key != masked_key:
            with torch.no_grad():
                torch.mul(self.weight, mask.view(torch.uint8), out=masked)
            state.masked_key = masked_key
        if not torch.is_grad_enabled() or not self.weight.requires_grad:
            return masked.view_as(masked)
        return _MaskedWeight.apply(self.weight, mask, masked, self.method, self.decay, state, state.key, in_forward)

    def _masked_key(self, weight_key) -> tuple:
        """What the masked-weight buffer depends on: the weight's version and the mask buffer's version."""
        return (weight_key, self.nm_mask._version, self.nm_mask.data_ptr())

    def _masked_buffer(self) -> torch.Tensor:
        """The layer's persistent masked-weight tensor (re-made when the weight's shape, dtype or device changed)."""
        w, buf = self.weight, self._state.masked
        if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device:
            buf = self._state.masked = torch.empty_like(w, requires_grad=False, memory_format=torch.preserve_format)
            self._state.masked_key = None
        return buf

    def set_method(self, method: str, decay: float | None = None) -> None:
        """Switch the training method (e.g. to ``fixed`` for ASP fine-tuning), keeping the current mask."""
        if method not in METHODS:
            raise ValueError(f"unknown sparsity method {method!r}: expected one of {', '.join(METHODS)}")
        if method == "fixed":
            self.mask()
        self.method = method
        self.decay = (DEFAULT_DECAY if decay is None else float(decay)) if method == "srste" else 0.0

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "nm_mask"
        had_mask = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if not had_mask:
            # A dense checkpoint: the mask is derived from the loaded weight.
            if key in missing_keys:
                missing_keys.remove(key)
            self._state.key = None
        elif self.method == "fixed":
            self._state.key = self._weight_key()
        else:
            self._state.key = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pattern={self.pattern}, method={self.method}, decay={self.decay:g}"

    @classmethod
    def from_dense(cls, module, pattern="2:4", method="srste", decay=DEFAULT_DECAY):
        """A sparse layer sharing ``module``'s weight and bias Parameters (optimizers keep working)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(module._parameters)
        new._buffers = dict(module._buffers)
        new._modules = dict(module._modules)
        new._init_sparsity(pattern, method, decay)
        new.train(module.training)
        return new


class SparseConv2d(SparseMixin, nn.Conv2d):
    """nn.Conv2d whose forward uses weight ⊙ N:M mask; groups of M input channels at fixed (out, kh, kw)."""

    def __init__(self, *args, pattern="2:4", method="srste", decay=DEFAULT_DECAY, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparsity(pattern, method, decay)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self._forward_weight(), self.bias)


class SparseLinear(SparseMixin, nn.Linear):
    """nn.Linear whose forward uses weight ⊙ N:M mask (bias kept); groups of M consecutive input features."""

    def __init__(self, *args, pattern="2:4", method="srste", decay=DEFAULT_DECAY, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparsity(pattern, method, decay)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self._forward_weight(), self.bias)


SPARSE_TYPES = {nn.Conv2d: SparseConv2d, nn.Linear: SparseLinear}


def sparse_layers(model: nn.Module):
    """Yield (name, layer) for every N:M layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SparseMixin):
            yield name, module

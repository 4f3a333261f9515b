"""SR-STE / STE / fixed-mask N:M layers: drop-in subclasses of nn.Conv2d and nn.Linear."""
from __future__ import annotations

import functools
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decay import mark_pending
from .mask import check_groupable, check_grouping, is_valid_nm_mask, kernel_mask_call, masked_grad, nm_mask
from .op import UNCHECKED_FX, export_masked_weight, is_recording, masked_weight_op, register_layer
from .pattern import NMPattern

METHODS = ("srste", "ste", "fixed", "dense")
DECAY_MODES = ("step", "call")
DEFAULT_DECAY = 2e-4


class _MaskState:
    """Per-layer cache: the weight version the mask was computed for; the masked weight (kept between steps and
    rewritten in place, so a step allocates nothing new for it) with the (weight, mask) versions it holds; the
    backward calls whose decay is owed; whether the weight's last gradient came through the layer's forward; the
    prepared C-kernel call for the current (weight, mask, masked weight) tensors."""

    __slots__ = ("key", "masked", "masked_key", "calls", "through_forward", "guarded", "kernel_call")

    def __init__(self, key=None):
        self.key = key
        self.masked = None
        self.masked_key = None
        self.calls = 0
        self.through_forward = False
        self.guarded = None
        self.kernel_call = (None, None)  # (what it was prepared for, the call or None)

    def __deepcopy__(self, memo):
        # a copy recomputes its masked weight for its own weight; a ``fixed`` copy keeps its (copied) mask
        return _MaskState(self.key)

    def __reduce__(self):  # torch.save(model) / pickle: as a copy
        return _MaskState, (self.key,)


class _MaskedWeight(torch.autograd.Function):
    """The masked weight forward (precomputed); straight-through backward (the masked gradient for ``fixed``).
    The SR-STE decay is not added here: the backward records it as owed, and the optimizer step adds it to the
    unscaled gradient (nm_plugins.core.decay)."""

    @staticmethod
    def forward(ctx, weight, mask, masked, layer, in_forward):
        ctx.save_for_backward(weight, mask)
        ctx.layer, ctx.method, ctx.in_forward = layer, layer.method, in_forward
        return masked.view_as(masked)

    @staticmethod
    def backward(ctx, grad_out):
        weight, mask = ctx.saved_tensors  # also refuses a graph whose weight or mask was rewritten since
        layer = ctx.layer
        layer._state.through_forward = True
        if ctx.method == "fixed":
            # In place only on the fresh gradient of the layer's own conv/linear: nothing else holds it.
            in_place = ctx.in_forward and not grad_out.requires_grad
            return masked_grad(grad_out, weight, mask, fixed=True, inplace=in_place), None, None, None, None
        if ctx.method == "srste" and layer.decay != 0.0:
            layer._state.calls += 1
            mark_pending(layer)
        return grad_out, None, None, None, None


def _grad_arrived(layer_ref, param) -> None:
    """Post-accumulate-grad hook of a sparse layer's weight: a gradient that did not come through the layer's
    own forward means the model read ``layer.weight`` directly and computed with the dense weight."""
    layer = layer_ref()
    if layer is None or layer.weight is not param or layer.method == "dense":
        return
    if layer._state.through_forward:
        layer._state.through_forward = False
        return
    raise RuntimeError(
        f"the N:M layer {layer!r} received a gradient for its weight without its forward having run: the model "
        f"reads this layer's .weight directly (e.g. F.linear(x, self.qkv.weight, ...)), so it computed with the "
        f"dense weight while the layer is counted as sparse. Keep this layer dense (sparsify(..., exclude=...) or "
        f"sparsify(..., example_inputs=...) which finds such layers), or call the layer itself")


class SparseMixin:
    """Shared N:M machinery of :class:`SparseConv2d` and :class:`SparseLinear`."""

    weight: nn.Parameter

    def _init_sparsity(self, pattern, method, decay, decay_mode="step", grouping="channels"):
        if method not in METHODS:
            raise ValueError(f"unknown sparsity method {method!r}: expected one of {', '.join(METHODS)}")
        if decay_mode not in DECAY_MODES:
            raise ValueError(f"unknown decay_mode {decay_mode!r}: expected 'step' (once per optimizer step) or "
                             f"'call' (once per layer call, as the authors' code)")
        decay = float(decay)
        if decay < 0:
            raise ValueError(f"SR-STE decay must be >= 0, got {decay}")
        self.pattern = NMPattern.parse(pattern)
        self.method = method
        self.decay = decay if method == "srste" else 0.0
        self.decay_mode = decay_mode
        self.grouping = check_grouping(grouping)
        try:
            check_groupable(self.weight.shape, self.pattern, grouping)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        self.register_buffer("nm_mask", torch.ones_like(self.weight, dtype=torch.bool))
        self._state = _MaskState()
        self._nm_op_id = register_layer(self)
        self._guard()
        if self.weight.device.type != "meta":
            self.refresh_mask()  # real masks from the start, in the state_dict too

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("decay_mode", "step")
        self.__dict__.setdefault("grouping", "channels")
        self._nm_op_id = register_layer(self)  # a copy is its own layer in the operator's backward
        self._guard()  # deepcopy / unpickling: the copied weight gets its own guard

    def _guard(self) -> None:
        """Register the direct-read guard (:func:`_grad_arrived`) on the current weight Parameter."""
        w = self.weight
        if self._state.guarded is not None and self._state.guarded() is w:
            return
        if isinstance(w, nn.Parameter) and w.requires_grad:
            w.register_post_accumulate_grad_hook(functools.partial(_grad_arrived, weakref.ref(self)))
            self._state.guarded = weakref.ref(w)

    def _compute_mask(self, weight: torch.Tensor, out: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
        """The one place a layer computes its mask: ``nm_mask`` of ``weight`` with the layer's pattern and grouping
        (into the layer's own buffers on the CPU: a C-kernel call prepared once for them, without nm_mask's per-call
        checks; the same kernel)."""
        state = self._state
        if masked is not None and masked is state.masked and self.grouping == "channels":
            tensors = (weight.data_ptr(), out.data_ptr(), masked.data_ptr(), weight.shape, weight.stride(),
                       weight.dtype, weight.device, self.pattern)
            if state.kernel_call[0] != tensors:
                state.kernel_call = (tensors, kernel_mask_call(weight, self.pattern, out, masked))
            if state.kernel_call[1] is not None:
                state.kernel_call[1]()
                return out
        return nm_mask(weight, self.pattern, out=out, masked=masked, check_finite=False, grouping=self.grouping)

    def mask_is_valid(self, mask: torch.Tensor | None = None) -> bool:
        """True when ``mask`` (default: the layer's mask buffer) is a valid mask of the layer's pattern in its
        grouping (see :func:`nm_plugins.core.is_valid_nm_mask`)."""
        return is_valid_nm_mask(self.nm_mask if mask is None else mask, self.pattern, self.grouping)

    def _weight_key(self):
        w = self.weight
        return (w._version, w.data_ptr(), w.device)

    def mask(self) -> torch.Tensor:
        """The current N:M mask; recomputed only when the dense weight changed (its version counter) since it was
        computed (``fixed`` keeps its mask; ``dense`` computes it for tracking but never applies it)."""
        # the masked weight comes with the mask in the same pass (not needed for ``dense``)
        self._update_mask(self._weight_key(), None if self.method == "dense" else self._masked_buffer())
        return self.nm_mask

    def _update_mask(self, key: tuple, masked: torch.Tensor | None) -> None:
        """Recompute the mask, and ``masked`` with it, unless it was computed for the weight version ``key``."""
        state = self._state
        if state.key is None or (self.method != "fixed" and state.key != key):
            with torch.no_grad():
                self._compute_mask(self.weight, self.nm_mask, masked)
            state.key = key
            if masked is not None:
                state.masked_key = self._masked_key(key)

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
        (rewritten in place when the weight changes); while a tool records the model (compile, export, trace,
        FX), the ``nm_sparsity::masked_weight`` operator instead (:mod:`nm_plugins.core.op`)."""
        if is_recording():
            return self._recorded_weight()
        return self._masked_weight(in_forward=True)

    def _recorded_weight(self) -> torch.Tensor:
        """The masked weight as recording tools see it: the operator (plain PyTorch operations under ONNX export)."""
        if self.method == "dense":
            return self.weight
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            watch = self.__dict__.get("_nm_watch")
            if watch is not None and watch.pending:  # see sparsify: the model was never checked
                raise ValueError(f"{UNCHECKED_FX} (N:M layer {self!r})")
        if torch.onnx.is_in_onnx_export():
            return export_masked_weight(self)
        return masked_weight_op(self)

    def _recorded_backward(self, mask: torch.Tensor) -> None:
        """Run by the operator's backward: the bookkeeping of :class:`_MaskedWeight`'s backward (decay owed at
        the optimizer step, the gradient came through the forward), and the layer's mask buffer set to the mask
        the forward used (the decay's mask)."""
        state = self._state
        state.through_forward = True
        if self.method == "fixed":
            return
        with torch.no_grad():
            self.nm_mask.copy_(mask)
        state.key = self._weight_key()
        if self.method == "srste" and self.decay != 0.0:
            state.calls += 1
            mark_pending(self)

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile the N:M layer {self!r} (its mask is computed by a custom operator "
            f"with Python-side caching): script nm_plugins.core.export_dense(model) instead (plain layers holding "
            f"the masked weights), or use torch.jit.trace / torch.export.export / torch.compile, which record the "
            f"sparse model itself")

    @torch.compiler.disable
    def _masked_weight(self, in_forward: bool) -> torch.Tensor:
        if self.method == "dense":
            return self.weight
        self._guard()
        w, state = self.weight, self._state
        if not torch.is_grad_enabled():
            return self._fresh_masked_weight()
        key, masked, mask = self._weight_key(), self._masked_buffer(), self.nm_mask
        self._update_mask(key, masked)
        masked_key = self._masked_key(key)
        if state.masked_key != masked_key:
            with torch.no_grad():
                torch.mul(w, mask.view(torch.uint8), out=masked)
            state.masked_key = masked_key
        if not w.requires_grad:
            return masked.view_as(masked)
        return _MaskedWeight.apply(w, mask, masked, self, in_forward)

    def _fresh_masked_weight(self) -> torch.Tensor:
        """Without gradients (evaluation, EMA / teacher models, inference): weight ⊙ mask from the weight as it
        is now, however it was written (``.data`` writes and EMA swaps bypass the version counter), in new
        tensors, so the training cache and any pending graph stay untouched."""
        w = self.weight.detach()
        if self.method == "fixed":
            return w * self.nm_mask.view(torch.uint8)
        masked = torch.empty_like(w)
        self._compute_mask(w, torch.empty_like(w, dtype=torch.bool), masked)
        return masked

    def _masked_key(self, weight_key) -> tuple:
        """What the masked-weight buffer depends on: the weight's version and the mask buffer's version."""
        return (weight_key, self.nm_mask._version, self.nm_mask.data_ptr())

    def _masked_buffer(self) -> torch.Tensor:
        """The layer's persistent masked-weight tensor (re-made when the weight's shape, dtype or device changed)."""
        w, buf = self.weight, self._state.masked
        if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device \
                or buf.stride() != w.stride():
            buf = self._state.masked = torch.empty_like(w, requires_grad=False, memory_format=torch.preserve_format)
            self._state.masked_key = None
        return buf

    def _apply_decay(self, grad_scale=None) -> int:
        """Add the owed SR-STE decay λ_W·(1−mask)⊙W to ``weight.grad`` (λ_W times the number of calls in
        ``"call"`` mode; times ``grad_scale`` when the gradient still carries a loss scale). Returns 1 if added."""
        calls, self._state.calls = self._state.calls, 0
        grad = self.weight.grad
        if not calls or grad is None or self.method != "srste" or self.decay == 0.0:
            return 0
        decay = self.decay * (calls if self.decay_mode == "call" else 1)
        w = self.weight.detach()
        with torch.no_grad():
            if grad_scale is not None:
                grad.addcmul_(w, (~self.nm_mask).to(grad.dtype).mul_(grad_scale * decay))
            else:
                masked_grad(grad, w, self.nm_mask, decay, inplace=True)
        return 1

    def set_method(self, method: str, decay: float | None = None) -> None:
        """Switch the training method (e.g. to ``fixed`` for ASP fine-tuning), keeping the current mask."""
        if method not in METHODS:
            raise ValueError(f"unknown sparsity method {method!r}: expected one of {', '.join(METHODS)}")
        if method == "fixed":
            self.mask()
        self.method = method
        self.decay = (DEFAULT_DECAY if decay is None else float(decay)) if method == "srste" else 0.0

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.method != "fixed" and self.weight.device.type != "meta":
            self.refresh_mask()  # the mask of the weight being saved, however it was written
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "nm_mask"
        had_mask = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if not had_mask:
            # A dense checkpoint: the mask is derived from the loaded weight (for ``fixed`` too).
            if key in missing_keys:
                missing_keys.remove(key)
            self._state.key = None
        elif self.method == "fixed":
            if not self.mask_is_valid():
                kept, total = int(self.nm_mask.sum()), self.nm_mask.numel()
                grouping = "" if self.grouping == "channels" else f" in grouping {self.grouping}"
                error_msgs.append(
                    f"{key}: the loaded mask of this fixed-mask layer is not a valid {self.pattern} mask{grouping} "
                    f"(it keeps {kept} of {total} weights; an all-ones mask comes from a model saved before its masks "
                    f"were computed): training would not use the pattern the layer reports. Load a checkpoint with "
                    f"{self.pattern} masks, or recompute them with refresh_masks(model) after loading the weights")
            self._state.key = self._weight_key()
        else:
            self._state.key = None  # srste / ste / dense: masks follow the loaded weights

    def extra_repr(self) -> str:
        mode = "" if self.decay_mode == "step" else f", decay_mode={self.decay_mode}"
        mode += "" if self.grouping == "channels" else f", grouping={self.grouping}"
        return f"{super().extra_repr()}, pattern={self.pattern}, method={self.method}, decay={self.decay:g}{mode}"

    @classmethod
    def from_dense(cls, module, pattern="2:4", method="srste", decay=DEFAULT_DECAY, decay_mode="step",
                   grouping="channels"):
        """A sparse layer sharing ``module``'s weight and bias Parameters (optimizers keep working)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(module._parameters)
        new._buffers = dict(module._buffers)
        new._modules = dict(module._modules)
        new._init_sparsity(pattern, method, decay, decay_mode, grouping)
        new.train(module.training)
        return new


class SparseConv2d(SparseMixin, nn.Conv2d):
    """nn.Conv2d whose forward uses weight ⊙ N:M mask; groups of M input channels at fixed (out, kh, kw)."""

    def __init__(self, *args, pattern="2:4", method="srste", decay=DEFAULT_DECAY, decay_mode="step",
                 grouping="channels", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparsity(pattern, method, decay, decay_mode, grouping)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self._forward_weight(), self.bias)


class SparseLinear(SparseMixin, nn.Linear):
    """nn.Linear whose forward uses weight ⊙ N:M mask (bias kept); groups of M consecutive input features."""

    def __init__(self, *args, pattern="2:4", method="srste", decay=DEFAULT_DECAY, decay_mode="step",
                 grouping="channels", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparsity(pattern, method, decay, decay_mode, grouping)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self._forward_weight(), self.bias)


SPARSE_TYPES = {nn.Conv2d: SparseConv2d, nn.Linear: SparseLinear}


def sparse_layers(model: nn.Module):
    """Yield (name, layer) for every N:M layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SparseMixin):
            yield name, module

"""N:M layers: drop-in subclasses of nn.Conv2d and nn.Linear whose training method is a registered plugin
(:mod:`nm_plugins.core.methods`: SR-STE, STE, fixed, dense, ASP, and any registered method)."""
from __future__ import annotations

import copy
import functools
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decay import mark_pending
from .mask import check_groupable, check_grouping, is_valid_nm_mask, kernel_mask_call, masked_grad, nm_mask
from .methods import NMMethod, method_class, method_names
from .methods.builtin import DEFAULT_DECAY
from .op import UNCHECKED_FX, export_masked_weight, is_recording, masked_weight_op, register_layer
from .pattern import NMPattern

METHODS = method_names()  # compatibility: the registered names at import (method_names() is the live list)
DECAY_MODES = ("step", "call")
METHOD_STATE = "nm_method."  # state_dict prefix of a method's per-layer state (NMMethod.method_state)


def build_method(method, method_args=None, decay=None, decay_mode=None) -> NMMethod:
    """The method object a layer holds: a registered name with its settings ``method_args`` (the legacy ``decay``
    kwarg fills the method's ``decay`` setting where it has one and ``method_args`` does not give it), or a copy of
    an :class:`NMMethod` object (then ``method_args`` must be empty)."""
    if isinstance(method, NMMethod):
        if method_args:
            raise ValueError(f"method_args {dict(method_args)} given with a method object {method.describe()}: "
                             f"pass the settings to the object, or the method by name")
        return copy.deepcopy(method)
    cls = method_class(method)
    if method_args is not None and not isinstance(method_args, dict):
        raise ValueError(f"method_args must be a dict of the method's settings, got {method_args!r}")
    args = {"decay": decay} if decay is not None and "decay" in cls.defaults else {}
    args.update(method_args or {})
    return cls(**args)


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
    """The masked weight forward (precomputed); straight-through backward (the masked gradient for methods with
    ``masked_gradient``, e.g. ``fixed``). A method's step term (SR-STE's decay) is not added here: the backward
    records it as owed, and the optimizer step adds it to the unscaled gradient (nm_plugins.core.decay)."""

    @staticmethod
    def forward(ctx, weight, mask, masked, layer, in_forward):
        ctx.save_for_backward(weight, mask)
        ctx.layer, ctx.masked_gradient, ctx.in_forward = layer, layer.nm_method.masked_gradient, in_forward
        return masked.view_as(masked)

    @staticmethod
    def backward(ctx, grad_out):
        weight, mask = ctx.saved_tensors  # also refuses a graph whose weight or mask was rewritten since
        layer = ctx.layer
        layer._state.through_forward = True
        if ctx.masked_gradient:
            # In place only on the fresh gradient of the layer's own conv/linear: nothing else holds it.
            in_place = ctx.in_forward and not grad_out.requires_grad
            grad_out = masked_grad(grad_out, weight, mask, fixed=True, inplace=in_place)
        if layer._nm_owes:
            layer._state.calls += 1
            mark_pending(layer)
        return grad_out, None, None, None, None


class _Bookkeeping(torch.autograd.Function):
    """Identity on a method-defined forward weight whose backward does the layer's bookkeeping (the gradient came
    through the forward; the step term / step count owed at the optimizer step)."""

    @staticmethod
    def forward(ctx, weight, layer):
        ctx.layer = layer
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        layer = ctx.layer
        layer._state.through_forward = True
        if layer._nm_owes:
            layer._state.calls += 1
            mark_pending(layer)
        return grad, None


class _InputGradWeight(torch.autograd.Function):
    """``op(input, weight, bias)`` whose input gradient is computed with ``grad_weight`` instead of ``weight`` (a
    method's :meth:`~nm_plugins.core.methods.NMMethod.input_grad_weight`); the weight and bias gradients are
    autograd's. Plain PyTorch: the backward re-runs ``op`` for each (correct first), under the forward's autocast."""

    @staticmethod
    def forward(ctx, input, weight, bias, grad_weight, op):
        device = input.device.type
        ctx.op, ctx.amp = op, (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(input, weight, bias, grad_weight)
        return op(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        input, weight, bias, grad_weight = ctx.saved_tensors
        g_in = g_w = g_b = None
        device, amp, dtype = ctx.amp
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=amp):  # as the forward ran
            if ctx.needs_input_grad[0]:
                x = input.detach().requires_grad_(True)
                (g_in,) = torch.autograd.grad(ctx.op(x, grad_weight.detach(), None), x, grad_out)
            wanted = [t for t, need in ((weight, ctx.needs_input_grad[1]), (bias, ctx.needs_input_grad[2])) if need]
            if wanted:
                w = weight.detach().requires_grad_(ctx.needs_input_grad[1])
                b = bias.detach().requires_grad_(ctx.needs_input_grad[2]) if bias is not None else None
                leaves = [t for t in (w, b) if t is not None and t.requires_grad]
                grads = torch.autograd.grad(ctx.op(input.detach(), w, b), leaves, grad_out)
                found = dict(zip([id(t) for t in leaves], grads))
                g_w, g_b = found.get(id(w)), (found.get(id(b)) if b is not None else None)
        return g_in, g_w, g_b, None, None


def _grad_arrived(layer_ref, param) -> None:
    """Post-accumulate-grad hook of a sparse layer's weight: a gradient that did not come through the layer's
    own forward means the model read ``layer.weight`` directly and computed with the dense weight."""
    layer = layer_ref()
    if layer is None or layer.weight is not param or not layer._nm_applies:
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

    def _init_sparsity(self, pattern, method, decay, decay_mode="step", grouping="channels", method_args=None):
        nm = build_method(method, method_args, None if decay is None else float(decay))
        if decay_mode not in DECAY_MODES:
            raise ValueError(f"unknown decay_mode {decay_mode!r}: expected 'step' (once per optimizer step) or "
                             f"'call' (once per layer call, as the authors' code)")
        if decay is not None and float(decay) < 0:
            raise ValueError(f"SR-STE decay must be >= 0, got {float(decay)}")
        self.pattern = NMPattern.parse(pattern)
        self.decay_mode = decay_mode
        self.grouping = check_grouping(grouping)
        try:
            check_groupable(self.weight.shape, self.pattern, grouping)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        self.register_buffer("nm_mask", torch.ones_like(self.weight, dtype=torch.bool))
        self._state = _MaskState()
        self._set_nm_method(nm)
        self._nm_op_id = register_layer(self)
        self._guard()
        if self.weight.device.type != "meta":
            self.refresh_mask()  # real masks from the start, in the state_dict too

    def __setstate__(self, state):
        old = {k: state.pop(k) for k in ("method", "decay") if k in state}  # pickled before methods were plugins
        super().__setstate__(state)
        self.__dict__.setdefault("decay_mode", "step")
        self.__dict__.setdefault("grouping", "channels")
        if "nm_method" not in self.__dict__:
            self._set_nm_method(build_method(old.get("method", "srste"), None, old.get("decay")))
        self._nm_op_id = register_layer(self)  # a copy is its own layer in the operator's backward
        self._guard()  # deepcopy / unpickling: the copied weight gets its own guard

    @property
    def method(self) -> str:
        """The registered name of the layer's training method (``layer.nm_method`` is the method object)."""
        return self.nm_method.name

    @property
    def method_args(self) -> dict:
        """The settings of the layer's method (a copy)."""
        return dict(self.nm_method.settings)

    @property
    def decay(self) -> float:
        """SR-STE's λ_W (the method's ``decay`` setting; 0 for methods without one)."""
        return float(self.nm_method.settings.get("decay", 0.0))

    @decay.setter
    def decay(self, value: float) -> None:
        if "decay" not in self.nm_method.settings:
            if float(value) == 0.0:
                return
            raise ValueError(f"the N:M method {self.method!r} of this layer has no decay setting")
        nm = copy.deepcopy(self.nm_method)
        nm.settings["decay"] = value
        nm.validate()
        self._set_nm_method(nm)

    def _set_nm_method(self, nm: NMMethod) -> None:
        """Hold ``nm`` and cache what the hot paths ask of it; add or drop the ``nm_step`` buffer."""
        cls = type(nm)
        nm.pattern, nm.grouping = self.pattern, self.grouping  # the layer's, for methods that need them
        self.nm_method = nm
        if nm.refreshes:
            self._state.key = None  # the new method computes its own mask at the next forward (a frozen one keeps it)
        self._nm_applies = bool(nm.applies_mask)
        self._nm_builtin = cls.uses_builtin_forward()
        self._nm_custom_mask = cls.compute_mask is not NMMethod.compute_mask
        self._nm_due = cls.mask_due is not NMMethod.mask_due
        self._nm_term = bool(nm.wants_step_term())
        self._nm_owes = self._nm_term or bool(nm.uses_step)
        self._nm_igw = cls.input_grad_weight is not NMMethod.input_grad_weight
        if nm.uses_step and "nm_step" not in self._buffers:
            self.register_buffer("nm_step", torch.zeros((), dtype=torch.long, device=self.weight.device))
        elif not nm.uses_step and "nm_step" in self._buffers:
            del self._buffers["nm_step"]

    def _step(self) -> int:
        """Optimizer steps that updated this layer's weight so far (0 for methods that do not use it)."""
        return int(self._buffers["nm_step"]) if self.nm_method.uses_step else 0

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
        if self._nm_custom_mask:
            with torch.no_grad():
                out.copy_(self.nm_method.compute_mask(weight.detach(), self.pattern, self.grouping, self._step()))
                if masked is not None:
                    torch.mul(weight, out.view(torch.uint8), out=masked)
            return out
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
        # the masked weight comes with the mask in the same pass (not needed for ``dense`` or a method's own forward)
        use_buffer = self._nm_applies and self._nm_builtin
        self._update_mask(self._weight_key(), self._masked_buffer() if use_buffer else None)
        return self.nm_mask

    def _update_mask(self, key: tuple, masked: torch.Tensor | None) -> None:
        """Recompute the mask, and ``masked`` with it, unless it was computed for the weight version ``key``."""
        state = self._state
        if state.key is None or (self.nm_method.refreshes and state.key != key
                                 and (not self._nm_due or self.nm_method.mask_due(self._step()))):
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
        """The weight the layer's forward uses, as a new tensor differentiable with the layer's method (weight ⊙ mask
        for the built-in methods; for ``dense`` the weight itself; a method's own ``forward_weight``)."""
        if not self._nm_applies:
            return self.weight
        if not self._nm_builtin:
            return self._method_weight()
        return self._masked_weight(in_forward=False).clone()

    def _forward_weight(self) -> torch.Tensor:
        """The masked weight for the layer's own conv/linear: a view of the layer's persistent buffer
        (rewritten in place when the weight changes); while a tool records the model (compile, export, trace,
        FX), the ``nm_sparsity::masked_weight`` operator instead (:mod:`nm_plugins.core.op`)."""
        if is_recording():
            return self._recorded_weight()
        if not self._nm_builtin and self._nm_applies:
            return self._method_weight()
        return self._masked_weight(in_forward=True)

    def _run(self, input: torch.Tensor, op) -> torch.Tensor:
        """``op(input, forward weight, bias)``; with a method's ``input_grad_weight``, the input gradient uses it."""
        weight = self._forward_weight()
        if self._nm_igw and self._nm_applies and torch.is_grad_enabled() and not is_recording():
            grad_weight = self.nm_method.input_grad_weight(self.weight.detach(), self.nm_mask, self._step())
            if grad_weight is not None:
                return _InputGradWeight.apply(input, weight, self.bias, grad_weight, op)
        return op(input, weight, self.bias)

    @torch.compiler.disable
    def _method_weight(self) -> torch.Tensor:
        """A method-defined forward weight (``forward_weight`` overridden): the mask kept as the built-in path keeps
        it (refreshed when the weight changed and ``mask_due``; frozen when the method does not refresh), then the
        method's weight, with the layer's bookkeeping in its backward. Without gradients, from the weight as it is."""
        self._guard()
        if not torch.is_grad_enabled():
            w = self.weight.detach()
            return self.nm_method.forward_weight(w, self._fresh_mask(w), self._step())
        self._update_mask(self._weight_key(), None)
        weight = self.nm_method.forward_weight(self.weight, self.nm_mask, self._step())
        if weight.requires_grad:
            weight = _Bookkeeping.apply(weight, self)
        return weight

    def _fresh_mask(self, w: torch.Tensor) -> torch.Tensor:
        """The mask for ``w`` as the method would use it now, in a new tensor (or the layer's frozen / not-due mask)."""
        if not self.nm_method.refreshes or (self._nm_due and not self.nm_method.mask_due(self._step())):
            return self.nm_mask.clone()
        return self._compute_mask(w, torch.empty_like(w, dtype=torch.bool), None)

    def _recorded_weight(self) -> torch.Tensor:
        """The masked weight as recording tools see it: the operator (plain PyTorch operations under ONNX export)."""
        if not self._nm_applies:
            return self.weight
        if not self._nm_builtin or self._nm_custom_mask or self._nm_due or self._nm_igw \
                or self.nm_method.masked_gradient == self.nm_method.refreshes:
            raise RuntimeError(
                f"the N:M method {self.method!r} of layer {self!r} defines its own forward weight, mask, mask schedule "
                f"or gradient rule, which torch.compile / torch.export / torch.jit.trace / FX cannot record yet "
                f"(eager PyTorch only); run it eagerly, or export a trained model with "
                f"nm_plugins.core.export_dense(model)")
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
        if self.nm_method.refreshes:
            with torch.no_grad():
                self.nm_mask.copy_(mask)
            state.key = self._weight_key()
        if self._nm_owes:
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
        if not self._nm_applies:
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
        if not self.nm_method.refreshes or (self._nm_due and not self.nm_method.mask_due(self._step())):
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
        """At the optimizer step of a layer whose backward ran: add the method's owed step term to ``weight.grad``
        (e.g. SR-STE's λ_W·(1−mask)⊙W; owed once, or once per call in ``"call"`` mode; ``grad_scale``: the loss
        scale the gradient still carries) and count the step (``nm_step``, methods that use it). Returns 1 if a
        term was added."""
        calls, self._state.calls = self._state.calls, 0
        grad = self.weight.grad
        if not calls or grad is None:
            return 0
        nm, step = self.nm_method, self._step()
        added = 0
        if self._nm_term:
            owed = calls if self.decay_mode == "call" else 1
            added = int(bool(nm.step_term(self.weight.detach(), self.nm_mask, grad, step, grad_scale, calls=owed)))
        if nm.uses_step:
            with torch.no_grad():
                self._buffers["nm_step"].add_(1)
        return added

    def set_method(self, method, decay: float | None = None, **settings) -> None:
        """Switch the training method (e.g. to ``fixed`` for ASP fine-tuning), keeping the current mask: a registered
        name with its settings (``decay``: SR-STE's λ_W, default 2e-4), or an :class:`NMMethod` object."""
        nm = build_method(method, settings or None, decay)
        if not nm.refreshes:
            self.mask()
        self._set_nm_method(nm)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.nm_method.refreshes and not self._nm_due and self.weight.device.type != "meta":
            self.refresh_mask()  # the mask of the weight being saved, however it was written
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, value in self.nm_method.method_state().items():  # what the method learned (S-STE's β, ...)
            destination[f"{prefix}{METHOD_STATE}{name}"] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "nm_mask"
        had_mask = key in state_dict
        state_prefix = prefix + METHOD_STATE
        method_state = {k[len(state_prefix):]: v for k, v in state_dict.items() if k.startswith(state_prefix)}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if type(self.nm_method).load_method_state is not NMMethod.load_method_state:  # a method that keeps state
            for name in method_state:
                if state_prefix + name in unexpected_keys:
                    unexpected_keys.remove(state_prefix + name)
            self.nm_method.load_method_state(method_state)
        if not had_mask:
            # A dense checkpoint: the mask is derived from the loaded weight (for ``fixed`` too).
            if key in missing_keys:
                missing_keys.remove(key)
            self._state.key = None
        elif not self.nm_method.refreshes:
            if not self.mask_is_valid():
                kept, total = int(self.nm_mask.sum()), self.nm_mask.numel()
                grouping = "" if self.grouping == "channels" else f" in grouping {self.grouping}"
                error_msgs.append(
                    f"{key}: the loaded mask of this fixed-mask layer is not a valid {self.pattern} mask{grouping} "
                    f"(it keeps {kept} of {total} weights; an all-ones mask comes from a model saved before its masks "
                    f"were computed): training would not use the pattern the layer reports. Load a checkpoint with "
                    f"{self.pattern} masks, or recompute them with refresh_masks(model) after loading the weights")
            self._state.key = self._weight_key()
        elif self._nm_due:
            self._state.key = self._weight_key()  # a scheduled mask: the loaded one until its next refresh
        else:
            self._state.key = None  # srste / ste / dense: masks follow the loaded weights

    def extra_repr(self) -> str:
        mode = "" if self.decay_mode == "step" else f", decay_mode={self.decay_mode}"
        mode += "" if self.grouping == "channels" else f", grouping={self.grouping}"
        extra = {k: v for k, v in self.nm_method.settings.items() if k != "decay"}
        mode += f", method_args={extra}" if extra else ""
        return f"{super().extra_repr()}, pattern={self.pattern}, method={self.method}, decay={self.decay:g}{mode}"

    @classmethod
    def from_dense(cls, module, pattern="2:4", method="srste", decay=DEFAULT_DECAY, decay_mode="step",
                   grouping="channels", method_args=None):
        """A sparse layer sharing ``module``'s weight and bias Parameters (optimizers keep working)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(module._parameters)
        new._buffers = dict(module._buffers)
        new._modules = dict(module._modules)
        new._init_sparsity(pattern, method, decay, decay_mode, grouping, method_args)
        new.train(module.training)
        return new


class SparseConv2d(SparseMixin, nn.Conv2d):
    """nn.Conv2d whose forward uses weight ⊙ N:M mask; groups of M input channels at fixed (out, kh, kw)."""

    def __init__(self, *args, pattern="2:4", method="srste", decay=DEFAULT_DECAY, decay_mode="step",
                 grouping="channels", method_args=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparsity(pattern, method, decay, decay_mode, grouping, method_args)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._nm_igw:
            return self._run(input, self._conv_forward)
        return self._conv_forward(input, self._forward_weight(), self.bias)


class SparseLinear(SparseMixin, nn.Linear):
    """nn.Linear whose forward uses weight ⊙ N:M mask (bias kept); groups of M consecutive input features."""

    def __init__(self, *args, pattern="2:4", method="srste", decay=DEFAULT_DECAY, decay_mode="step",
                 grouping="channels", method_args=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparsity(pattern, method, decay, decay_mode, grouping, method_args)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._nm_igw:
            return self._run(input, F.linear)
        return F.linear(input, self._forward_weight(), self.bias)


SPARSE_TYPES = {nn.Conv2d: SparseConv2d, nn.Linear: SparseLinear}


def sparse_layers(model: nn.Module):
    """Yield (name, layer) for every N:M layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SparseMixin):
            yield name, module

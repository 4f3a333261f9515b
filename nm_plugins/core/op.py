"""The N:M masked weight as a ``torch.library`` operator: what PyTorch's tools see of an N:M layer.

In eager mode the layers keep their cached, in-place masked weight (nm_plugins.core.layers). Under a tool that
records the model instead of running it — ``torch.compile`` / ``torch.export`` (dynamo), ``torch.jit.trace``, FX
symbolic tracing — the layer's forward calls :func:`masked_weight_op` instead: one operator
``nm_sparsity::masked_weight`` with a fake (meta) implementation and an autograd formula, whose CPU kernel is the C
kernel and whose CUDA kernel is Triton (both through :func:`nm_plugins.core.mask.nm_mask`). Its backward is a
second operator that does the layer's bookkeeping when it runs (the SR-STE decay owed at ``optimizer.step``, the
direct-read guard), so a compiled training step is the eager one. Under ONNX export the mask is written with
plain PyTorch operations or as a constant (:func:`export_masked_weight`), which the ONNX exporters translate.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Optional

import torch

from .mask import from_flat_groups, from_groups, group_topn, nm_mask, to_flat_groups, to_groups
from .pattern import NMPattern

UNCHECKED_FX = ("this model was made N:M by sparsify() without a probe forward, and an FX symbolic trace cannot show "
                "whether the model reads an N:M layer's weight outside the layer's forward (it would record the dense "
                "weight): call the model once on a real input first, or pass example_inputs= to sparsify")

_LAYERS: dict = {}  # op id -> weakref of the layer (the backward's bookkeeping)
_IDS = itertools.count(1)


def register_layer(layer) -> int:
    """A fresh id naming ``layer`` in the operator's calls (its backward finds the layer by it)."""
    key = next(_IDS)
    _LAYERS[key] = weakref.ref(layer, lambda _ref, key=key: _LAYERS.pop(key, None))
    return key


def is_recording() -> bool:
    """True while a tool records the model instead of running it: dynamo (torch.compile, torch.export, ONNX with
    ``dynamo=True``), ``torch.jit.trace`` (and the TorchScript ONNX exporter) or FX symbolic tracing."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.fx._symbolic_trace.is_fx_symbolic_tracing()


@torch.library.custom_op("nm_sparsity::masked_weight", mutates_args=())
def _masked_weight(weight: torch.Tensor, fixed_mask: Optional[torch.Tensor], n: int, m: int, grouping: str,
                   layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight ⊙ mask, mask): the N:M mask of ``weight`` (C kernel on CPU, Triton on CUDA), or ``fixed_mask``."""
    if fixed_mask is not None:
        return weight * fixed_mask.view(torch.uint8), fixed_mask.clone()
    mask = torch.empty_like(weight, dtype=torch.bool)
    masked = torch.empty_like(weight)
    nm_mask(weight, NMPattern(n, m), out=mask, masked=masked, check_finite=False, grouping=grouping)
    return masked, mask


@_masked_weight.register_fake
def _(weight, fixed_mask, n, m, grouping, layer):
    return torch.empty_like(weight), torch.empty_like(weight, dtype=torch.bool)


@torch.library.custom_op("nm_sparsity::masked_weight_backward", mutates_args=())
def _masked_weight_backward(grad: torch.Tensor, mask: torch.Tensor, fixed: bool, layer: int) -> torch.Tensor:
    """The weight's gradient (straight through; times the mask for ``fixed``), and the layer's bookkeeping."""
    ref = _LAYERS.get(layer)
    obj = ref() if ref is not None else None
    if obj is not None:
        obj._recorded_backward(mask)
    return grad * mask.view(torch.uint8) if fixed else grad.clone()


@_masked_weight_backward.register_fake
def _(grad, mask, fixed, layer):
    return torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    ctx.fixed, ctx.layer = inputs[1] is not None, inputs[5]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_masked, _grad_mask):
    (mask,) = ctx.saved_tensors
    grad = torch.ops.nm_sparsity.masked_weight_backward(grad_masked, mask, ctx.fixed, ctx.layer)
    return grad, None, None, None, None, None


_masked_weight.register_autograd(_backward, setup_context=_setup_context)


def masked_weight_op(layer) -> torch.Tensor:
    """The masked weight of an N:M ``layer`` through the ``nm_sparsity::masked_weight`` operator (see module doc)."""
    fixed = None if layer.nm_method.refreshes else layer.nm_mask
    return torch.ops.nm_sparsity.masked_weight(layer.weight, fixed, layer.pattern.n, layer.pattern.m,
                                               layer.grouping, layer._nm_op_id)[0]


def export_masked_weight(layer) -> torch.Tensor:
    """The masked weight of an N:M ``layer`` for ONNX export (an inference graph: the weight is a constant). The
    TorchScript-based exporter gets it computed outside its trace, as a constant of the graph (a computed mask
    would lose the static weight shape its convolution needs); the dynamo-based one gets plain PyTorch operations
    (the kernels' mask: magnitude rank within each group, ties to the lower index), which it translates."""
    state = torch._C._get_tracing_state()
    if state is not None:
        torch._C._set_tracing_state(None)
        try:
            with torch.no_grad():
                return layer._fresh_masked_weight()
        finally:
            torch._C._set_tracing_state(state)
    w, pattern = layer.weight.detach(), layer.pattern
    if not layer.nm_method.refreshes:
        mask = layer.nm_mask
    elif layer.grouping == "authors_flat":
        mask = from_flat_groups(group_topn(to_flat_groups(w, pattern.m), pattern.n), w.shape)
    else:
        mask = from_groups(group_topn(to_groups(w, pattern.m), pattern.n), w.shape)
    return w * mask.to(w.dtype)

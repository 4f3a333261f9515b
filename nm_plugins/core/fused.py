"""Fused SR-STE: the N:M masks of all layers computed once per optimizer step in one flat buffer.

:class:`FusedSRSTE` attaches to a model whose N:M layers use ``srste`` or ``ste``. Per optimizer step
(i.e. whenever a weight changed) it gathers all maskable weights into one flat buffer laid out in groups
of M consecutive input channels, computes every mask and every masked weight in one pass (a Triton
kernel on CUDA, an exact pure-PyTorch fallback elsewhere), and hands the layers views of that buffer.
One autograd node per forward carries the straight-through gradient to all weights; its backward adds
the SR-STE decay ``decay * (~mask) * W`` in one multi-tensor pass, once per weight version (so once per
optimizer step under gradient accumulation), exactly as the per-layer path does. Forward values and
gradients are identical to the plain per-layer path (tests compare them).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .layers import sparse_layers
from .mask import _KERNEL_DTYPES, group_topn, mask_backend, nm_mask
from .pattern import NMPattern

FUSED_METHODS = ("srste", "ste")


# --------------------------------------------------------------------------------------------------
# The flat mask kernel: groups [G, M] -> mask, masked weights, inverse mask

_TRITON_KERNELS = {}
_TORCH_CHUNK = 1 << 20  # elements per piece of the PyTorch fallback (4 MiB of fp32)


def _triton_kernel():
    """The Triton N:M mask kernel, compiled lazily on first use (under ``TRITON_INTERPRET=1``, set before
    Triton is imported, Triton's interpreter runs it on the CPU: that is how the CPU tests check it)."""
    if "kernel" in _TRITON_KERNELS:
        return _TRITON_KERNELS["kernel"]
    import triton
    import triton.language as tl

    @triton.jit
    def nm_mask_kernel(w_ptr, mask_ptr, masked_ptr, inv_ptr, num_groups,
                       N: tl.constexpr, M: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: buffers over 2**31
        cols = tl.arange(0, M)
        offs = rows[:, None] * M + cols[None, :]
        valid = (rows[:, None] < num_groups) & (cols[None, :] < M)
        w = tl.load(w_ptr + offs, mask=valid, other=0.0)
        mag = tl.abs(w.to(tl.float32))  # exact for fp16/bf16
        rank = tl.zeros((BLOCK, M), dtype=tl.int32)
        for j in tl.static_range(M):
            cj = tl.sum(tl.where(cols[None, :] == j, mag, 0.0), axis=1)  # column j (one non-zero term: exact)
            beats = (cj[:, None] > mag) | ((cj[:, None] == mag) & (cols[None, :] > j))
            rank += beats.to(tl.int32)
        keep = rank < N
        tl.store(mask_ptr + offs, keep.to(tl.uint8), mask=valid)
        tl.store(masked_ptr + offs, w * keep.to(w.dtype), mask=valid)
        tl.store(inv_ptr + offs, tl.where(keep, 0.0, 1.0).to(w.dtype), mask=valid)

    _TRITON_KERNELS["kernel"] = nm_mask_kernel
    return nm_mask_kernel


def triton_available(device: torch.device) -> bool:
    """True when the Triton kernel can run on ``device`` (CUDA with Triton installed)."""
    if torch.device(device).type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _fill_inverse(mask, inv) -> None:
    """inv = 1 - mask in inv's dtype, going through uint8 (this torch's bool -> float casts are several
    times slower than uint8's)."""
    inv.copy_(mask.view(torch.uint8)).neg_().add_(1)


def flat_nm_mask(flat: torch.Tensor, pattern, backend: str = "auto", out=None, check_finite: bool = False):
    """Mask, masked weights and inverse mask of a flat buffer of groups of M consecutive weights.

    ``flat`` is 1-D with a length divisible by M. Returns ``(mask bool, flat * mask, (~mask) as
    flat's dtype)``, written into ``out`` (three tensors) when given. ``backend``: ``"torch"`` (exact,
    any device), ``"triton"`` (CUDA), ``"triton-interpret"`` (the Triton kernel run on the CPU by
    Triton's interpreter, for tests) or ``"auto"`` (Triton on CUDA when available, else torch). On the
    CPU the torch backend uses the core's compiled mask kernel when it is built (it always rejects
    NaN/inf with a ValueError); ``check_finite`` adds that check to the other paths.
    """
    pattern = NMPattern.parse(pattern)
    n, m = pattern.n, pattern.m
    if flat.dim() != 1 or flat.numel() % m:
        raise ValueError(f"flat_nm_mask needs a 1-D buffer whose length is divisible by M={m}, got shape {tuple(flat.shape)}")
    if backend == "auto":
        backend = "triton" if triton_available(flat.device) and (m & (m - 1)) == 0 else "torch"
    if backend not in ("torch", "triton", "triton-interpret"):
        raise ValueError(f"unknown backend {backend!r}: expected auto, torch, triton or triton-interpret")
    if out is None:
        out = (torch.empty_like(flat, dtype=torch.bool), torch.empty_like(flat), torch.empty_like(flat))
    mask, masked, inv = out
    if backend == "torch" and flat.device.type == "cpu" and mask_backend() == "kernel" and flat.dtype in _KERNEL_DTYPES:
        # the core's compiled one-pass kernel: mask and masked weights
        nm_mask(flat.view(-1, m), pattern, out=mask.view(-1, m), masked=masked.view(-1, m))
        _fill_inverse(mask, inv)
        return mask, masked, inv
    if backend == "torch":
        if check_finite and not bool(torch.isfinite(flat).all()):
            raise ValueError(f"cannot compute N:M masks for a buffer of {flat.numel()} weights holding NaN or inf values")
        step = _TORCH_CHUNK - _TORCH_CHUNK % m  # cache-sized pieces: each pass reads what the last one wrote
        for start in range(0, flat.numel(), step):
            sl = slice(start, min(start + step, flat.numel()))
            group_topn(flat[sl].view(-1, m), n, out=mask[sl].view(-1, m))
            torch.mul(flat[sl], mask[sl], out=masked[sl])
            torch.logical_not(mask[sl], out=inv[sl])
        return mask, masked, inv
    if m & (m - 1):
        raise ValueError(f"the Triton kernel needs M a power of two, got pattern {pattern}")
    if backend == "triton" and flat.device.type != "cuda":
        raise ValueError(f"the Triton backend needs a CUDA tensor, got one on {flat.device}")
    if backend == "triton-interpret" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend 'triton-interpret' needs TRITON_INTERPRET=1 in the environment before Triton is imported")
    num_groups = flat.numel() // m
    block = max(1, 1024 // m)
    kernel = _triton_kernel()
    grid = ((num_groups + block - 1) // block,)
    kernel[grid](flat, mask.view(torch.uint8), masked, inv, num_groups, N=n, M=m, BLOCK=block)
    return mask, masked, inv


# --------------------------------------------------------------------------------------------------
# The engine


def _same_memory_order(view: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``view`` and ``weight`` have the same strides on every dimension longer than 1."""
    return all(a == b for a, b, size in zip(view.stride(), weight.stride(), weight.shape) if size > 1)


class _FusedMaskedWeights(torch.autograd.Function):
    """All layers' masked weights as one autograd node: straight-through backward + SR-STE decay."""

    @staticmethod
    def forward(ctx, engine, *weights):
        ctx.engine, ctx.keys = engine, engine._keys
        ctx.set_materialize_grads(False)
        return tuple(v.view_as(v) for v in engine._forward_views)

    @staticmethod
    def backward(ctx, *grads):
        return (None,) + ctx.engine._add_decay(grads, ctx.keys)


def _dense_strides(w: torch.Tensor) -> tuple:
    """``w``'s strides when it is non-overlapping and dense (contiguous or channels_last), else contiguous ones."""
    if w.is_contiguous() or (w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last)):
        return w.stride()
    return torch.empty(w.shape, device="meta").stride()


class _Bucket:
    """Layers sharing device, dtype and pattern: flat buffers of their masks, masked weights, inverse masks.

    ``grouped`` layout (GPU): the weights are gathered into one flat buffer of groups of M consecutive
    input channels and one kernel computes everything. ``native`` layout (CPU): each layer's slice
    keeps the weight's own memory order and the core's compiled mask kernel runs layer by layer (in cache).
    """

    def __init__(self, pattern: NMPattern, indices: list, weights: list, grouped: bool):
        self.pattern, self.indices, self.grouped = pattern, indices, grouped
        w0 = weights[0]
        total = sum(w.numel() for w in weights)
        self.flat = torch.empty(total if grouped else 0, dtype=w0.dtype, device=w0.device)
        self.mask = torch.empty(total, dtype=torch.bool, device=w0.device)
        self.masked = torch.empty(total, dtype=w0.dtype, device=w0.device)
        self.inv = torch.empty_like(self.masked)
        self.src, self.dst, self.slices = [], [], []
        off = 0
        for w in weights:
            moved = w.detach().movedim(1, -1)  # [out, *k, in]: groups of M input channels contiguous
            self.src.append(moved if grouped else w.detach())
            if grouped:
                self.dst.append(self.flat[off:off + w.numel()].view(moved.shape))
            self.slices.append((off, off + w.numel(), tuple(moved.shape), tuple(w.shape), _dense_strides(w)))
            off += w.numel()

    def view(self, buf: torch.Tensor, k: int) -> torch.Tensor:
        """Layer k's part of a flat buffer in the layer's [out, in, *k] shape (grouped or native order)."""
        start, stop, moved, shape, strides = self.slices[k]
        if self.grouped:
            return buf[start:stop].view(moved).movedim(-1, 1)
        return buf.as_strided(shape, strides, start)


class _DetachedEngine:
    """What a deep copy of a model holds in place of its FusedSRSTE: the copy runs the per-layer path
    (attach a new engine to it for the fused one)."""

    def masked_weight(self, layer):
        return None

    def _reset_outputs(self, *args):
        pass

    def _reset_outputs_after(self, *args):
        pass


class FusedSRSTE:
    """Fused SR-STE/STE engine for every ``srste``/``ste`` N:M layer of ``model`` (attached in place).

    Masks and masked weights are computed once per weight version for all layers together; one
    autograd node per forward; the decay is added in one multi-tensor pass. ``check_finite`` raises a
    ValueError naming the layers whose weights hold NaN/inf (on CUDA one step late, without a host sync).
    ``backend`` as in :func:`flat_nm_mask`; ``layout``: ``"grouped"`` (one flat buffer, one kernel;
    the default on CUDA), ``"native"`` (layer by layer with the core's compiled kernel; the default on
    the CPU) or ``"auto"``. Call :meth:`close` to go back to the per-layer path.
    """

    def __init__(self, model: nn.Module, check_finite: bool = True, backend: str = "auto", layout: str = "auto"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"FusedSRSTE needs an nn.Module, got {type(model).__name__}")
        if layout not in ("auto", "grouped", "native"):
            raise ValueError(f"unknown layout {layout!r}: expected auto, grouped or native")
        self.model, self.check_finite, self.backend, self.layout = model, bool(check_finite), backend, layout
        self._layers, self._outputs, self._outputs_grad = [], None, None
        self._finite_flags: dict = {}  # bucket id -> [pinned host flag, CUDA event] (see _check_finite)
        self._hooks = [model.register_forward_pre_hook(self._reset_outputs),
                       model.register_forward_hook(self._reset_outputs_after)]
        self.rebuild()

    # -- set-up -----------------------------------------------------------------------------------
    def rebuild(self) -> None:
        """(Re)collect the layers and buffers (after changing methods, moving or re-typing the model)."""
        for _, layer in self._layers:
            self._release(layer)
        self._layers = [(n, l) for n, l in sparse_layers(self.model) if l.method in FUSED_METHODS]
        if not self._layers:
            raise ValueError("FusedSRSTE found no N:M layer with method 'srste' or 'ste' in the model")
        self._snapshot = [(l.method, l.decay, l.pattern) for _, l in self._layers]
        self._weights = [l.weight for _, l in self._layers]
        self._detached = [w.detach() for w in self._weights]
        self._decays = [l.decay if l.method == "srste" else 0.0 for _, l in self._layers]
        groups = {}
        for i, (_, layer) in enumerate(self._layers):
            w = layer.weight
            groups.setdefault((w.device, w.dtype, layer.pattern), []).append(i)
        self._buckets = []
        for (device, _, pattern), idx in groups.items():
            grouped = self.layout == "grouped" or (self.layout == "auto" and device.type == "cuda")
            self._buckets.append(_Bucket(pattern, idx, [self._weights[i] for i in idx], grouped))
        self._inv_views = [None] * len(self._layers)
        self._forward_views = [None] * len(self._layers)
        self._native_of = {}  # layer index -> (native-layout masked weight, its grouped source)
        self._native = [([], []) for _ in self._buckets]  # per bucket: native-layout copies, their sources
        for b, bucket in enumerate(self._buckets):
            for k, i in enumerate(bucket.indices):
                _, layer = self._layers[i]
                w = layer.weight
                masked = bucket.view(bucket.masked, k)
                self._inv_views[i] = bucket.view(bucket.inv, k)
                if not bucket.grouped:
                    self._forward_views[i] = masked
                elif _same_memory_order(masked, w):  # Linear, 1x1 conv, channels_last conv
                    self._forward_views[i] = bucket.masked.as_strided(w.shape, w.stride(), bucket.slices[k][0])
                else:  # e.g. an NCHW 3x3 conv: the masked weight is materialised in the weight's own layout
                    native = torch.empty_like(w.detach())
                    self._native[b][0].append(native)
                    self._native[b][1].append(masked)
                    self._native_of[i] = (native, masked)
                    self._forward_views[i] = native
                layer.__dict__["_fused_engine"] = self
                layer.__dict__["_fused_index"] = i
                layer._buffers["nm_mask"] = bucket.view(bucket.mask, k)
        self._keys = [None] * len(self._layers)
        self._decay_keys = [None] * len(self._layers)
        self._outputs = None

    def _release(self, layer) -> None:
        layer.__dict__.pop("_fused_engine", None)
        layer.__dict__.pop("_fused_index", None)
        layer._buffers["nm_mask"] = torch.empty_like(layer.weight.detach(), dtype=torch.bool).copy_(layer.nm_mask)
        layer._state.key = None

    def close(self) -> None:
        """Detach from the model: the layers go back to their own per-layer path and mask buffers."""
        for h in self._hooks:
            h.remove()
        for _, layer in self._layers:
            self._release(layer)
        self._layers, self._outputs = [], None

    def __enter__(self):
        return self

    def __deepcopy__(self, memo):
        return _DetachedEngine()  # a copied model (copy.deepcopy, export_dense) uses the per-layer path

    def __exit__(self, *exc):
        self.close()

    # -- per step ---------------------------------------------------------------------------------
    def _reset_outputs(self, module, args):
        self._outputs = None

    def _reset_outputs_after(self, module, args, output):
        self._outputs = None

    def _current_keys(self) -> list:
        return [(w._version, w.data_ptr()) for w in self._weights]

    def refresh(self, force: bool = False) -> None:
        """Recompute the masks and masked weights of every bucket whose weights changed (all if ``force``)."""
        keys = self._current_keys()
        if any(k[1] != old[1] for k, old in zip(keys, self._keys) if old is not None):
            self.rebuild()  # a weight was replaced (model.to, param.data = ...)
            keys = self._current_keys()
        for b, bucket in enumerate(self._buckets):
            if force or any(keys[i] != self._keys[i] for i in bucket.indices):
                self._compute(bucket)
        for i, (_, layer) in enumerate(self._layers):
            layer._state.key = layer._weight_key()  # the layer's own mask() sees an up-to-date nm_mask
        self._keys = keys
        self._outputs = None

    def _compute(self, bucket: _Bucket) -> None:
        """Masks, masked weights and inverse masks of one bucket (see :class:`_Bucket` for the layouts)."""
        b = self._buckets.index(bucket)
        with torch.no_grad():
            if not bucket.grouped:
                for k, i in enumerate(bucket.indices):
                    w = bucket.src[k]
                    try:
                        mask = nm_mask(w, bucket.pattern, out=bucket.view(bucket.mask, k),
                                       masked=bucket.view(bucket.masked, k))
                    except ValueError:
                        self._raise_non_finite(bucket)
                    _fill_inverse(mask, bucket.view(bucket.inv, k))
                return
            torch._foreach_copy_(bucket.dst, bucket.src)
            if self.check_finite:
                self._check_finite(bucket)
            flat_nm_mask(bucket.flat, bucket.pattern, self.backend, out=(bucket.mask, bucket.masked, bucket.inv))
            if self._native[b][0]:
                torch._foreach_copy_(*self._native[b])

    def _check_finite(self, bucket: _Bucket) -> None:
        """Raise for NaN/inf weights. On CUDA without a host sync: the flag of this computation is copied
        to pinned memory and read at the bucket's next computation, so a bad step is reported one step late."""
        flag = torch.isfinite(bucket.flat).all()
        if bucket.flat.device.type != "cuda":
            if not bool(flag):
                self._raise_non_finite(bucket)
            return
        pending = self._finite_flags.get(id(bucket))
        if pending is None:
            pending = self._finite_flags[id(bucket)] = [torch.ones((), dtype=torch.bool).pin_memory(), None]
        host, event = pending
        if event is not None:
            event.synchronize()  # recorded a whole step ago: normally long complete, no stall
            if not bool(host):
                self._raise_non_finite(bucket, late=True)
        host.copy_(flag, non_blocking=True)
        pending[1] = torch.cuda.Event()
        pending[1].record()

    def _raise_non_finite(self, bucket: _Bucket, late: bool = False):
        bad = [self._layers[i][0] for i in bucket.indices if not bool(torch.isfinite(self._weights[i]).all())]
        names = ", ".join(bad) if bad else "of this bucket (finite again now)"
        verb = "held NaN or inf values at the previous optimizer step" if late else "hold NaN or inf values"
        raise ValueError(f"cannot compute N:M masks: the weights of layer(s) {names} {verb}")

    def _prepare(self) -> None:
        if [(l.method, l.decay, l.pattern) for _, l in self._layers] != self._snapshot:
            self.rebuild()
        if self._current_keys() != self._keys:
            self.refresh()
        grad = torch.is_grad_enabled() and any(w.requires_grad for w in self._weights)
        if grad:
            self._outputs = _FusedMaskedWeights.apply(self, *self._weights)
        else:
            self._outputs = [v.view_as(v) for v in self._forward_views]
        self._outputs_grad = grad

    def masked_weight(self, layer) -> torch.Tensor | None:
        """The layer's masked weight for this forward (None when the layer is not handled here)."""
        i = layer.__dict__.get("_fused_index")
        if i is None or i >= len(self._layers) or self._layers[i][1] is not layer:
            return None
        if layer.method not in FUSED_METHODS or self._snapshot[i][0] != layer.method:
            self.rebuild()
            if layer.__dict__.get("_fused_engine") is not self:
                return None
            i = layer.__dict__["_fused_index"]
        if (self._outputs is None or self._outputs_grad != torch.is_grad_enabled()
                or (layer.weight._version, layer.weight.data_ptr()) != self._keys[i]):
            self._prepare()
        return self._outputs[i]

    def _add_decay(self, grads, keys) -> tuple:
        """Straight-through gradients plus decay * (~mask) * W, once per weight version per layer."""
        idx = [i for i, g in enumerate(grads)
               if g is not None and self._decays[i] != 0.0 and self._decay_keys[i] != keys[i]]
        if not idx:
            return tuple(grads)
        for i in idx:
            self._decay_keys[i] = keys[i]
        decayed = torch._foreach_addcmul([grads[i] for i in idx], [self._detached[i] for i in idx],
                                         [self._inv_views[i].to(grads[i].dtype) for i in idx],
                                         [self._decays[i] for i in idx])
        out = list(grads)
        for i, g in zip(idx, decayed):
            out[i] = g
        return tuple(out)

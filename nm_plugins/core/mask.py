"""N:M magnitude masks along the input-channel axis."""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path

import torch

from .mask_triton import _strides3, nonfinite_seen_now, triton_nm_mask, triton_usable
from .pattern import NMPattern


def grouped_axis_size(shape: torch.Size | tuple) -> int:
    """Size of the axis that N:M groups run along: dim 1 (input channels / features) of a weight."""
    if len(shape) < 2:
        raise ValueError(f"N:M masks need a weight with at least 2 dims [out, in, ...], got shape {tuple(shape)}")
    return shape[1]


GROUPINGS = ("channels", "authors_flat")


def check_grouping(grouping: str) -> str:
    """``grouping`` itself when it is one of :data:`GROUPINGS`, else ValueError: ``"channels"`` (M consecutive
    input channels at each (out, *k), the default) or ``"authors_flat"`` (the authors' ``Sparse_NHWC`` / ``Sparse``:
    M consecutive entries of the weight laid out [out, *k, in], groups spanning kernel positions and rows)."""
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown N:M grouping {grouping!r}: expected 'channels' (M consecutive input channels) or "
                         f"'authors_flat' (M consecutive entries of the weight laid out [out, kh, kw, in])")
    return grouping


def check_groupable(shape: torch.Size | tuple, pattern: NMPattern, grouping: str = "channels") -> None:
    """Raise ValueError unless a weight of this shape has an input-channel axis (dim 1) to group, and for
    ``grouping="authors_flat"`` a number of entries divisible by M."""
    grouped_axis_size(shape)
    if check_grouping(grouping) == "authors_flat":
        numel = 1
        for size in shape:
            numel *= size
        if numel % pattern.m:
            raise ValueError(f"grouping='authors_flat' needs a weight whose number of entries divides by M: shape "
                             f"{tuple(shape)} has {numel} entries, not divisible by M={pattern.m} ({pattern})")


def to_flat_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View a weight [out, in, *k] as the authors' groups: rows of M consecutive entries of the weight laid out
    [out, *k, in] (``weight.permute(0, 2, 3, 1).reshape(-1, M)`` for a conv; ``reshape(-1, M)`` for a linear)."""
    moved = weight if weight.dim() == 2 else weight.movedim(1, -1)
    return moved.reshape(-1, m)


def from_flat_groups(groups: torch.Tensor, shape: torch.Size | tuple) -> torch.Tensor:
    """Inverse of :func:`to_flat_groups` for a weight of the given shape."""
    out = groups.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],))
    return out if len(shape) == 2 else out.movedim(-1, 1)


def partial_group_size(shape: torch.Size | tuple, pattern: NMPattern) -> int:
    """Channels in the last, partial group of M input channels (0 when dim 1 is divisible by M). A partial
    group of r channels is zero-padded to M: it keeps min(N, r) of its r weights, still a valid N:M group."""
    return grouped_axis_size(shape) % pattern.m


def to_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View a weight [out, in, *k] as rows of M consecutive input channels: shape [-1, M].

    Input channels are moved last so that each row holds M consecutive channels at a fixed (out, *k); when
    dim 1 is not divisible by M the last group of each row is zero-padded (a copy, not a view).
    """
    moved = weight if weight.dim() == 2 else weight.movedim(1, -1)
    pad = -moved.shape[-1] % m
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    return moved.reshape(-1, m)


def from_groups(groups: torch.Tensor, shape: torch.Size | tuple) -> torch.Tensor:
    """Inverse of :func:`to_groups` for a weight of the given shape (padding dropped)."""
    c = shape[1]
    m = groups.shape[1]
    padded = c + (-c % m)
    moved = (shape[0],) + tuple(shape[2:]) + (padded,)
    out = groups.reshape(moved)[..., :c]
    return out if len(shape) == 2 else out.movedim(-1, 1)


def group_topn(groups: torch.Tensor, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the N largest |values| in every row [G, M]; ties keep the lower index.

    Rank of an element = how many elements of its row beat it (larger magnitude, or equal magnitude at a
    lower index); it is kept when its rank is below N. M(M-1)/2 column comparisons, no sort.
    ``out``: a bool [G, M] tensor to write into.
    """
    m = groups.shape[1]
    if n == m:
        keep = torch.ones_like(groups, dtype=torch.bool)
        return keep if out is None else out.copy_(keep)
    mag = groups.abs()
    cols = [mag[:, i] for i in range(m)]
    rank = [None] * m
    for i in range(m):
        for j in range(i + 1, m):
            i_beats_j = torch.ge(cols[i], cols[j])  # the lower index wins ties
            rank[j] = i_beats_j.to(torch.uint8) if rank[j] is None else rank[j].add_(i_beats_j)
            j_beats_i = i_beats_j.logical_not_()
            rank[i] = j_beats_i.to(torch.uint8) if rank[i] is None else rank[i].add_(j_beats_i)
    return torch.lt(torch.stack(rank, 1), n, out=out)


def _load_kernel():
    """The compiled kernels (csrc/nm_mask_kernel.c, built by ``pip install``) as a ctypes library, or None."""
    if os.environ.get("NM_MASK_BACKEND", "auto") == "torch":
        return None
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_nm_mask_kernel{suffix}"
        if path.exists():
            lib = ctypes.CDLL(str(path))  # torch is imported: its libgomp.so.1 serves the kernel's OpenMP
            i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
            lib.nm_mask_kernel.argtypes = [ptr, ptr, ptr, i64, i64, i64, i32, i32, i32, i32]
            lib.nm_mask_kernel.restype = i32
            lib.nm_grad_kernel.argtypes = [ptr, ptr, ptr, i64, ctypes.c_double, i32, i32, i32]
            lib.nm_grad_kernel.restype = i32
            return lib
    return None


_KERNEL = _load_kernel()
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_KERNEL_OUT_DTYPES = (torch.float32, torch.float64)  # masked weights / gradients written by the kernel
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def mask_implementation(weight: torch.Tensor, pattern: "NMPattern | str" = "2:4") -> str:
    """Which implementation :func:`nm_mask` (and so every N:M layer) uses for this weight: ``"triton"`` (CUDA),
    ``"c-kernel"`` (CPU, compiled) or ``"torch"`` (anything else, or no compiler / no Triton)."""
    m = NMPattern.parse(pattern).m
    if weight.dtype in _TRITON_DTYPES and m <= 64 and triton_usable(weight):
        return "triton"
    if _KERNEL is not None and weight.device.type == "cpu" and weight.dtype in _KERNEL_DTYPES and m <= 64:
        return "c-kernel"
    return "torch"


def mask_backend() -> str:
    """Which implementation :func:`nm_mask` uses for CPU tensors: ``"kernel"`` (compiled C) or ``"torch"``."""
    return "kernel" if _KERNEL is not None else "torch"


def _nonfinite_error(shape) -> ValueError:
    return ValueError(f"cannot compute an N:M mask for a weight of shape {tuple(shape)} holding NaN or inf values")


def _kernel_fits(*tensors: torch.Tensor) -> bool:
    """True when the kernel can write these CPU tensors in place (contiguous, kernel-supported float dtype)."""
    return _KERNEL is not None and all(
        t.device.type == "cpu" and t.is_contiguous() and t.dtype in _KERNEL_OUT_DTYPES for t in tensors)


def _kernel_mask(w: torch.Tensor, pattern: NMPattern, out: torch.Tensor | None,
                 masked: torch.Tensor | None = None) -> torch.Tensor:
    if partial_group_size(w.shape, pattern):  # the kernel takes whole groups: zero-pad the last one
        padded = torch.nn.functional.pad(w.movedim(1, -1), (0, -w.shape[1] % pattern.m)).movedim(-1, 1)
        mask = _kernel_mask(padded.contiguous(), pattern, None)[:, : w.shape[1]]
        out = mask.contiguous() if out is None else out.copy_(mask)
        if masked is not None:
            torch.mul(w, out.view(torch.uint8), out=masked)
        return out
    src = (w if w.dtype in (torch.float32, torch.float64) else w.float()).contiguous()
    if out is None or not out.is_contiguous():
        out = torch.empty(w.shape, dtype=torch.bool)
    if w.numel() == 0:
        return out
    write_masked = masked is not None and src is w and _kernel_fits(masked) and masked.dtype == w.dtype
    o, c = w.shape[0], w.shape[1]
    k = w.numel() // (o * c)
    rc = _KERNEL.nm_mask_kernel(src.data_ptr(), out.data_ptr(), masked.data_ptr() if write_masked else None,
                                o, c, k, pattern.n, pattern.m, int(src.dtype == torch.float64),
                                torch.get_num_threads())
    # the kernel wrote behind torch's back: caches and autograd's saved-tensor checks keyed on versions see it
    torch.autograd.graph.increment_version(out)
    if write_masked:
        torch.autograd.graph.increment_version(masked)
    if rc == 1:
        raise _nonfinite_error(w.shape)
    if rc != 0:
        raise RuntimeError(f"nm_mask kernel failed for shape {tuple(w.shape)} and pattern {pattern}")
    if masked is not None and not write_masked:
        torch.mul(w, out.view(torch.uint8), out=masked)
    return out


def kernel_mask_call(weight: torch.Tensor, pattern: NMPattern, out: torch.Tensor, masked: torch.Tensor):
    """A no-argument function doing ``nm_mask(weight, pattern, out=out, masked=masked, check_finite=False)`` with
    the C kernel for exactly these tensors, its checks done once here; None where the kernel does not take them
    (CUDA, partial groups, other dtypes or layouts: use :func:`nm_mask`). The layers' per-step mask on the CPU."""
    if mask_implementation(weight, pattern) != "c-kernel" or partial_group_size(weight.shape, pattern) \
            or not _kernel_fits(weight, masked) or masked.dtype != weight.dtype or masked.shape != weight.shape \
            or out.dtype != torch.bool or out.shape != weight.shape or not out.is_contiguous() or weight.numel() == 0:
        return None
    o, c = weight.shape[0], weight.shape[1]
    args = (weight.data_ptr(), out.data_ptr(), masked.data_ptr(), o, c, weight.numel() // (o * c), pattern.n,
            pattern.m, int(weight.dtype == torch.float64))
    kernel, num_threads, bump = _KERNEL.nm_mask_kernel, torch.get_num_threads, torch.autograd.graph.increment_version

    def call() -> None:
        rc = kernel(*args, num_threads())
        bump(out)  # written behind torch's back: version-keyed caches and autograd's checks must see it
        bump(masked)
        if rc:
            raise _nonfinite_error(weight.shape) if rc == 1 else RuntimeError(
                f"nm_mask kernel failed for shape {tuple(weight.shape)} and pattern {pattern}")

    return call


def _triton_mask(w: torch.Tensor, pattern: NMPattern, out, masked, check_finite: bool) -> torch.Tensor:
    if _strides3(w) is None:
        w = w.contiguous()
    mask_out = out if out is not None and out.stride() == w.stride() else torch.empty_like(w, dtype=torch.bool)
    masked_out = masked if masked is not None and masked.stride() == w.stride() else torch.empty_like(w)
    triton_nm_mask(w, pattern.n, pattern.m, mask_out, masked_out)
    if check_finite and nonfinite_seen_now(w.device):
        raise _nonfinite_error(w.shape)
    if out is not None and mask_out is not out:
        out.copy_(mask_out)
    if masked is not None and masked_out is not masked:
        masked.copy_(masked_out)
    return mask_out if out is None else out


def nm_mask(weight: torch.Tensor, pattern: "NMPattern | str", out: torch.Tensor | None = None,
            masked: torch.Tensor | None = None, check_finite: bool = True,
            grouping: str = "channels") -> torch.Tensor:
    """Boolean N:M mask of ``weight``'s shape: in every group of M consecutive input channels the N
    largest |w| are True (ties keep the lower index).

    Linear [out, in]: groups of M consecutive input features in a row; Conv [out, in, kh, kw]: M
    consecutive input channels at a fixed (out, kh, kw). When dim 1 is not divisible by M the last group of
    each row is zero-padded: it keeps min(N, r) of its r channels. Raises ValueError when the weight holds
    NaN/inf (on CUDA ``check_finite=False`` skips that host synchronisation: the layers check one step late).
    ``out``: a bool tensor of the weight's shape to write the mask into; ``masked``: a tensor of the weight's
    shape and dtype that also receives ``weight * mask`` (in the same pass over the weight). Runs the compiled
    C kernel on the CPU, a Triton kernel on CUDA, plain PyTorch elsewhere: the same masks.
    ``grouping="authors_flat"``: the groups are M consecutive entries of the weight laid out [out, *k, in] (the
    authors' ``Sparse_NHWC``; see :func:`to_flat_groups`), which needs weight.numel() % M == 0; it equals the
    default grouping whenever dim 1 is divisible by M.
    """
    pattern = NMPattern.parse(pattern)
    check_groupable(weight.shape, pattern, grouping)
    if out is not None and (out.shape != weight.shape or out.dtype != torch.bool or out.device != weight.device):
        raise ValueError(f"nm_mask out= must be a bool tensor of shape {tuple(weight.shape)} on {weight.device}")
    if masked is not None and (masked.shape != weight.shape or masked.dtype != weight.dtype or masked.device != weight.device):
        raise ValueError(f"nm_mask masked= must be a {weight.dtype} tensor of shape {tuple(weight.shape)} on {weight.device}")
    w = weight.detach()
    if grouping == "authors_flat":  # the default grouping on the [G, M] view: one whole group per row
        mask = from_flat_groups(nm_mask(to_flat_groups(w, pattern.m), pattern, check_finite=check_finite), w.shape)
        mask = out.copy_(mask) if out is not None else mask.contiguous()
        if masked is not None:
            torch.mul(w, mask.view(torch.uint8), out=masked)
        return mask
    implementation = mask_implementation(w, pattern)
    if implementation == "triton":
        return _triton_mask(w, pattern, out, masked, check_finite)
    if implementation == "c-kernel":
        mask = _kernel_mask(w, pattern, out, masked)
        if out is not None and mask is not out:
            mask = out.copy_(mask)
        return mask.contiguous() if out is None else mask
    if not bool(torch.isfinite(w).all()):
        raise _nonfinite_error(weight.shape)
    mask = from_groups(group_topn(to_groups(w, pattern.m), pattern.n), weight.shape)
    mask = out.copy_(mask) if out is not None else mask.contiguous()
    if masked is not None:
        torch.mul(w, mask.view(torch.uint8), out=masked)
    return mask


def masked_grad(grad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, decay: float = 0.0,
                fixed: bool = False, inplace: bool = False) -> torch.Tensor:
    """The gradient of a dense weight from the gradient of its masked weight: SR-STE
    ``grad + decay * (~mask) * weight`` (STE when decay is 0), or ``grad * mask`` when ``fixed``.

    Bit-identical to ``torch.addcmul(grad, weight, (~mask).to(grad.dtype), value=decay)`` and
    ``grad * mask``; ``inplace`` writes into ``grad`` (which must not be needed elsewhere).
    """
    if not fixed and decay == 0.0:
        return grad
    if inplace and _kernel_fits(grad, weight) and mask.is_contiguous() and grad.dtype == weight.dtype \
            and grad.shape == weight.shape == mask.shape:
        rc = _KERNEL.nm_grad_kernel(grad.data_ptr(), weight.data_ptr(), mask.data_ptr(), grad.numel(),
                                    float(decay), int(fixed), int(grad.dtype == torch.float64), torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"nm_grad kernel failed for a gradient of shape {tuple(grad.shape)}")
        torch.autograd.graph.increment_version(grad)
        return grad
    keep = mask.view(torch.uint8)
    if fixed:
        return grad.mul_(keep) if inplace else grad * keep
    inverse = (1 - keep).to(grad.dtype)
    return grad.addcmul_(weight, inverse, value=decay) if inplace else torch.addcmul(grad, weight, inverse, value=decay)


def is_valid_nm_mask(mask: torch.Tensor, pattern: "NMPattern | str", grouping: str = "channels") -> bool:
    """True when ``mask`` keeps exactly N entries in every group of M input channels (min(N, r) in a last
    partial group of r channels); with ``grouping="authors_flat"`` in every group of :func:`to_flat_groups`
    (False when the mask's size does not divide by M)."""
    pattern = NMPattern.parse(pattern)
    if check_grouping(grouping) == "authors_flat":
        if mask.dim() < 2 or mask.numel() % pattern.m:
            return False
        return bool((to_flat_groups(mask.to(torch.int32), pattern.m).sum(dim=1) == pattern.n).all())
    counts = to_groups(mask.to(torch.int32), pattern.m).sum(dim=1)
    sizes = to_groups(torch.ones_like(mask, dtype=torch.int32), pattern.m).sum(dim=1)
    return bool((counts == sizes.clamp(max=pattern.n)).all())

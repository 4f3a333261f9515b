"""The N:M mask on CUDA: one Triton launch per weight writes the mask and the masked weight, in the weight's own
memory layout (contiguous or channels_last), without a host synchronisation.

NaN/inf weights are not checked on the host: the kernel raises a per-device flag, and :func:`raise_if_nonfinite`
(called once per optimizer step by the SR-STE decay hook) reads the flag of the previous check from pinned memory,
so a bad weight is reported one step late, without stalling the GPU. Under ``TRITON_INTERPRET=1`` (set before
Triton is imported) Triton's interpreter runs the same kernel on CPU tensors: that is how CPU tests check it.
"""
from __future__ import annotations

import os

import torch

_KERNEL = {}
LAUNCHES = [0]  # kernel launches so far (tests check which implementation the layers take)
_FLAGS = {}  # device -> [device int32 flag, pinned host copy, CUDA event of that copy or None]


def triton_usable(weight: torch.Tensor) -> bool:
    """True when :func:`triton_nm_mask` can run on ``weight``: a CUDA tensor (or any tensor under Triton's
    interpreter) with Triton installed."""
    if weight.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel():
    if "k" in _KERNEL:
        return _KERNEL["k"]
    import triton
    import triton.language as tl

    @triton.jit
    def nm_mask_kernel(w_ptr, mask_ptr, masked_ptr, flag_ptr, num_groups, C, K, groups_per_row,
                       s_o, s_c, s_k, N: tl.constexpr, M: tl.constexpr, M_POW2: tl.constexpr,
                       BLOCK: tl.constexpr, K_FASTEST: tl.constexpr):
        g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: weights over 2**31 elements
        if K_FASTEST:  # NCHW: neighbouring groups are neighbouring kernel positions
            k = g % K
            rest = g // K
            cg = rest % groups_per_row
            o = rest // groups_per_row
        else:  # Linear, 1x1 and channels_last: neighbouring groups are neighbouring channel groups
            cg = g % groups_per_row
            rest = g // groups_per_row
            k = rest % K
            o = rest // K
        cols = tl.arange(0, M_POW2)
        ch = cg[:, None] * M + cols[None, :]
        valid = (g[:, None] < num_groups) & (cols[None, :] < M) & (ch < C)  # a last partial group is zero-padded
        offs = o[:, None] * s_o + ch * s_c + k[:, None] * s_k
        w = tl.load(w_ptr + offs, mask=valid, other=0.0)
        mag = tl.abs(w.to(tl.float32))  # exact for fp16/bf16
        rank = tl.zeros((BLOCK, M_POW2), dtype=tl.int32)
        for j in tl.static_range(M):
            cj = tl.sum(tl.where(cols[None, :] == j, mag, 0.0), axis=1)  # column j (one non-zero term: exact)
            beats = (cj[:, None] > mag) | ((cj[:, None] == mag) & (cols[None, :] > j))  # ties: lower index wins
            rank += beats.to(tl.int32)
        keep = (rank < N) & valid
        tl.store(mask_ptr + offs, keep.to(tl.uint8), mask=valid)
        tl.store(masked_ptr + offs, w * keep.to(w.dtype), mask=valid)
        bad = ((mag != mag) | (mag > 3.4028234663852886e38)) & valid  # NaN or inf
        tl.atomic_max(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0))

    _KERNEL["k"] = nm_mask_kernel
    return nm_mask_kernel


def _flag(device: torch.device) -> torch.Tensor:
    entry = _FLAGS.get(device)
    if entry is None:
        host = torch.zeros((), dtype=torch.int32)
        entry = _FLAGS[device] = [torch.zeros((), dtype=torch.int32, device=device),
                                  host.pin_memory() if device.type == "cuda" else host, None]
    return entry[0]


def _strides3(t: torch.Tensor) -> tuple | None:
    """(stride of out, of in, of the flattened kernel positions) when the kernel dims of ``t`` flatten into
    one strided axis (true for contiguous and channels_last weights), else None."""
    if t.dim() == 2:
        return t.stride(0), t.stride(1), 1
    k_stride = t.stride(-1)
    expect = k_stride
    for d in range(t.dim() - 1, 2, -1):
        expect *= t.shape[d]
        if t.shape[d - 1] > 1 and t.stride(d - 1) != expect:
            return None
    return t.stride(0), t.stride(1), k_stride


def triton_nm_mask(weight: torch.Tensor, n: int, m: int, out: torch.Tensor, masked: torch.Tensor) -> None:
    """Write the N:M mask of ``weight`` [O, C, *k] into ``out`` (bool) and ``weight * mask`` into ``masked``
    (the weight's dtype), all three with the same strides; groups of M input channels at fixed (o, *k), a last
    partial group zero-padded. Raises the device's non-finite flag for NaN/inf weights (see module doc)."""
    strides = _strides3(weight)
    if strides is None or out.stride() != weight.stride() or masked.stride() != weight.stride():
        raise ValueError("triton_nm_mask needs a weight in a contiguous or channels_last layout and outputs "
                         f"with its strides, got strides {weight.stride()}, {out.stride()}, {masked.stride()}")
    o, c = weight.shape[0], weight.shape[1]
    k = weight.numel() // max(o * c, 1)
    if weight.numel() == 0:
        return
    groups_per_row = -(-c // m)
    num_groups = o * k * groups_per_row
    m_pow2 = 1 << (m - 1).bit_length()
    block = max(1, 1024 // m_pow2)
    k_fastest = k > 1 and strides[2] < strides[1]
    grid = (-(-num_groups // block),)
    LAUNCHES[0] += 1
    _kernel()[grid](weight, out.view(torch.uint8), masked, _flag(weight.device), num_groups, c, k, groups_per_row,
                    *strides, N=n, M=m, M_POW2=m_pow2, BLOCK=block, K_FASTEST=k_fastest)
    torch.autograd.graph.increment_version(out)
    torch.autograd.graph.increment_version(masked)


def nonfinite_seen_now(device: torch.device) -> bool:
    """Whether any weight masked on ``device`` since the last reset held NaN/inf (synchronises); resets it."""
    flag = _flag(torch.device(device))
    seen = bool(flag.item())
    flag.zero_()
    return seen


def raise_if_nonfinite(names_of_bad_layers) -> None:
    """Raise ValueError when the flag copied at the previous call was set; then start this step's copy.
    ``names_of_bad_layers()`` names the culprits (only called on that error path)."""
    for device, entry in _FLAGS.items():
        flag, host, event = entry
        if device.type != "cuda":
            continue
        if event is not None:
            event.synchronize()  # recorded a whole step ago: normally long complete
            if int(host):
                flag.zero_()
                entry[2] = None
                raise ValueError(f"cannot compute N:M masks: the weights of layer(s) {names_of_bad_layers()} "
                                 f"held NaN or inf values at the previous optimizer step")
        host.copy_(flag, non_blocking=True)
        entry[2] = torch.cuda.Event()
        entry[2].record()

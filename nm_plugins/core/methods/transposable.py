"""Transposable N:M masks (Hubara et al., NeurIPS 2021, "Accelerated sparse neural training: a provable and efficient
method to find N:M transposable masks"): the mask is N:M along the input channels AND along the output channels, so
the weight's transpose, which the backward GEMM multiplies the output gradient with, is N:M sparse too.

Blocks: a weight [O, I, *k] is cut, at every kernel position, into M×M blocks of M consecutive output channels ×
M consecutive input channels. A mask is transposable when every row and every column of every block keeps exactly
N weights, i.e. ``mask`` is a valid N:M mask along dim 1 and ``mask.transpose(0, 1)`` is one along its dim 1
(:func:`is_transposable_mask`).

The mask maximises the kept magnitude Σ|w|·mask approximately (the paper's greedy 2-approximation, the authors'
``update_mask_approx2`` in dynamic_TNM/src/sparse_ops.py): the M² entries of a block are visited in order of
decreasing |w| (ties: lower output channel, then lower input channel first) and an entry is kept when its row and its
column still hold fewer than N kept entries. Greedy can stop with a row and a column of a block one short of N while
their crossing is already kept; the authors' code leaves such blocks with fewer than N (its README: "at least N
zeros"). We complete them (not in the authors' code) by swaps: keep (r, c'), drop (r', c'), keep (r', c) for the
short row r and column c, the swap of largest kept-magnitude gain (:func:`_swap_fill`; one always exists), so every
row and column keeps exactly N: a valid N:M mask, and transposable.

Training, as the authors' dynamic_TNM code: straight-through (forward ``W ⊙ mask``, backward the dense gradient,
``SparseTranspose.backward``), the mask recomputed from |W| every ``refresh_every`` optimizer steps
(``SparseConvTranspose.forward``: ``freq = 40`` training forwards), and the SR-STE term λ_W·(1−mask)⊙W added to the
gradient at each step (their ``sparse_optimizer.SGD`` decays pruned weights by 5×weight_decay and kept ones by
weight_decay: an extra 4×5e-5 = 2e-4 on the pruned ones at their ResNet-50 weight decay).
"""
from __future__ import annotations

import torch

from ..mask import is_valid_nm_mask
from ..pattern import NMPattern
from . import register_method
from .builtin import DEFAULT_DECAY, SRSTE


def unblockable_reason(shape, pattern: NMPattern) -> "str | None":
    """Why a weight of this shape has no transposable N:M mask (None when it has one): it needs at least 2 dims and
    output and input channels divisible by M."""
    if len(shape) < 2:
        return f"transposable N:M masks need a weight with at least 2 dims [out, in, ...], got shape {tuple(shape)}"
    out_ch, in_ch = shape[0], shape[1]
    if out_ch % pattern.m or in_ch % pattern.m:
        return (f"transposable {pattern} masks need output and input channels divisible by M={pattern.m} (blocks of M "
                f"outputs × M inputs): weight shape {tuple(shape)} has {out_ch} outputs and {in_ch} inputs")
    return None


def _check_blockable(shape, pattern: NMPattern) -> None:
    reason = unblockable_reason(shape, pattern)
    if reason is not None:
        raise ValueError(f"{reason}; keep this layer dense or use another method for it")


def to_blocks(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View a weight [O, I, *k] (O and I divisible by M) as blocks [B, M, M]: rows M consecutive output channels,
    columns M consecutive input channels, at one kernel position each."""
    out_ch, in_ch = weight.shape[0], weight.shape[1]
    moved = weight.reshape(out_ch, in_ch, -1).permute(2, 0, 1)            # [K, O, I]
    blocks = moved.reshape(-1, out_ch // m, m, in_ch // m, m).transpose(2, 3)  # [K, O/M, I/M, M, M]
    return blocks.reshape(-1, m, m)


def from_blocks(blocks: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`to_blocks` for a weight of the given shape."""
    m = blocks.shape[-1]
    out_ch, in_ch = shape[0], shape[1]
    grid = blocks.reshape(-1, out_ch // m, in_ch // m, m, m).transpose(2, 3).reshape(-1, out_ch, in_ch)
    return grid.permute(1, 2, 0).reshape(shape)


def _swap_fill(keep: torch.Tensor, mag: torch.Tensor, n: int) -> None:
    """Complete the greedy (maximal) masks ``keep`` [B, M, M] in place to exactly n per row and column, all blocks at
    once: for the first short row r and first short column c of a block, keep (r, c'), drop (r', c'), keep (r', c),
    with (r', c') the kept entry of largest gain |w[r, c']| + |w[r', c]| − |w[r', c']| among those whose (r, c') and
    (r', c) are free; one unit of each short block's deficit per round.

    Such an (r', c') always exists while the mask is maximal (every free entry has a full row or column, as greedy
    leaves it): the columns c' free in row r are full (n kept each); were none of their kept entries in a row r'
    free in column c, all n·|C'| of them would lie in the rows kept in column c other than r: at most n−2 rows
    holding at most |C'| each. The swap keeps the mask maximal (only row r and column c grow)."""
    m = keep.shape[-1]
    for _ in range(m * m):
        row_count = keep.sum(dim=2)
        short = (row_count < n).any(dim=1).nonzero().flatten()
        if short.numel() == 0:
            return
        k, g = keep[short], mag[short]
        r = (row_count[short] < n).to(torch.uint8).argmax(dim=1)
        c = (k.sum(dim=1) < n).to(torch.uint8).argmax(dim=1)
        every = torch.arange(short.numel(), device=keep.device)
        in_row_r, in_col_c = k[every, r], k[every, :, c]  # [S, M]: kept (r, ·); kept (·, c)
        movable = k & ~in_col_c[:, :, None] & ~in_row_r[:, None, :]  # kept (r', c') with (r', c), (r, c') free
        gain = g[every, r][:, None, :] + g[every, :, c][:, :, None] - g
        best = gain.masked_fill(~movable, float("-inf")).reshape(short.numel(), -1).max(dim=1)
        found = torch.isfinite(best.values)
        if not bool(found.any()):
            break
        b, r, c, entry = short[found], r[found], c[found], best.indices[found]
        r2, c2 = entry // m, entry % m
        keep[b, r, c2] = True
        keep[b, r2, c2] = False
        keep[b, r2, c] = True


def transposable_mask(weight: torch.Tensor, pattern: "NMPattern | str") -> torch.Tensor:
    """Boolean transposable N:M mask of ``weight`` [O, I, *k] (O, I divisible by M): in every M×M block of outputs ×
    inputs, at each kernel position, exactly N kept per row and per column, chosen greedily by decreasing |w| (the
    paper's 2-approximation of the largest kept magnitude) and completed by swaps where greedy stops short."""
    pattern = NMPattern.parse(pattern)
    _check_blockable(weight.shape, pattern)
    n, m = pattern.n, pattern.m
    w = weight.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"cannot compute a transposable N:M mask for a weight of shape {tuple(w.shape)} holding NaN or inf values")
    if n == m:
        return torch.ones(w.shape, dtype=torch.bool, device=w.device)
    mag = to_blocks(w.abs().float(), m).reshape(-1, m * m)  # [B, M²], row-major: entry r*M + c
    blocks = mag.shape[0]
    order = torch.sort(mag, dim=1, descending=True, stable=True).indices  # equal |w|: the lower index first
    rows, cols = order // m, order % m
    keep = torch.zeros(blocks, m * m, dtype=torch.bool, device=w.device)
    row_count = torch.zeros(blocks, m, dtype=torch.int32, device=w.device)
    col_count = torch.zeros_like(row_count)
    for k in range(m * m):
        row, col = rows[:, k:k + 1], cols[:, k:k + 1]
        take = (row_count.gather(1, row) < n) & (col_count.gather(1, col) < n)
        keep.scatter_(1, order[:, k:k + 1], take)
        took = take.to(torch.int32)
        row_count.scatter_add_(1, row, took)
        col_count.scatter_add_(1, col, took)
        if k % m == m - 1 and bool((row_count == n).all()):
            break
    keep = keep.view(-1, m, m)
    if not bool((row_count == n).all()):
        _swap_fill(keep, mag.view(-1, m, m), n)
        if not (bool((keep.sum(dim=2) == n).all()) and bool((keep.sum(dim=1) == n).all())):
            raise RuntimeError(f"transposable {pattern} mask: a block left incomplete after greedy (please report)")
    return from_blocks(keep, w.shape).contiguous()


def is_transposable_mask(mask: torch.Tensor, pattern: "NMPattern | str") -> bool:
    """True when ``mask`` [O, I, *k] is a valid N:M mask along its input channels and its transpose [I, O, *k] is one
    along the output channels (every M×M block keeps N per row and per column): the backward GEMM's weight is N:M."""
    pattern = NMPattern.parse(pattern)
    if mask.dim() < 2 or mask.shape[0] % pattern.m or mask.shape[1] % pattern.m:
        return False
    return is_valid_nm_mask(mask, pattern) and is_valid_nm_mask(mask.transpose(0, 1), pattern)


@register_method("transposable")
class Transposable(SRSTE):
    """Transposable N:M masks (Hubara et al. 2021): greedy transposable mask of |W| every ``refresh_every`` steps,
    forward W ⊙ mask, straight-through backward, SR-STE's step term ``decay``·(1−mask)⊙W (inherited)."""

    defaults = {"decay": DEFAULT_DECAY, "refresh_every": 40}
    uses_step = True

    def validate(self) -> None:
        """Raise ValueError naming ``decay`` (SR-STE's rule) or ``refresh_every`` (an integer >= 1)."""
        super().validate()
        every = self.settings["refresh_every"]
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"N:M method 'transposable': refresh_every must be an integer >= 1 (optimizer steps "
                             f"between mask refreshes), got {every!r}")

    def compute_mask(self, weight: torch.Tensor, pattern: NMPattern, grouping: str, step: int) -> torch.Tensor:
        """The transposable N:M mask of ``weight`` (:func:`transposable_mask`); blocks need grouping='channels'."""
        if grouping != "channels":
            raise ValueError(f"N:M method 'transposable' needs grouping='channels' (blocks of M outputs × M inputs at "
                             f"each kernel position), got grouping={grouping!r}: the authors' code cuts blocks from "
                             f"M·M consecutive entries of one output's row, whose transpose is not N:M over outputs")
        return transposable_mask(weight, pattern)

    def dense_reason(self, shape, pattern: NMPattern) -> "str | None":
        """Why a layer of this weight shape must stay dense under this method (channels not divisible by M), or None
        (for sparsify to keep such layers dense, as it does for layers that cannot be grouped)."""
        return unblockable_reason(shape, pattern)

    def mask_due(self, step: int) -> bool:
        """A new mask at steps 0, refresh_every, 2·refresh_every, ... (the authors refresh every 40 forwards)."""
        return step % self.settings["refresh_every"] == 0

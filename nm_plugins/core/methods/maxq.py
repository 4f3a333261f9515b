"""MaxQ (Xiang et al., CVPR 2024, "MaxQ: Multi-Axis Query for N:M Sparsity Network"): a hard N:M mask times
soft multi-axis importance scores, with the share of N:M groups ramped up over training.

With ``m`` the N:M mask (top-N |w| of every group of M), a filter score ``f`` and a kernel score ``p``, the
forward weight is ::

    W_fwd = W ⊙ m ⊙ (1 + f + p)

* filter axis: in every output filter (the row ``|W[o]|`` of L = in·kh·kw entries), q = ⌊(M−N)/M · L⌋, s the
  ascending sort of the row, t = (s[q−1] + s[q]) / 2 ; f = 0 for the q smallest entries, σ((|w| − t)/τ) for
  the others (each kept entry gets a score in [0.5, 1)).
* kernel axis (convolutions with a kernel of more than one position): the same at every kernel position
  (kh, kw) over its out·in entries; p = 0 for linear layers and 1×1 convolutions.
* incremental sparsity: at step t a share ρ(t) of the groups stays dense: the ⌊ρ(t)·G⌋ groups with the
  smallest Σ|w| (of G groups) keep all their M weights. ρ = 1 before ``ramp_start_step``, ρ = 0 from
  ``ramp_end_step`` on, and in between ρ = 1 − x (``linear``), (1 − x)³ (``cubic``) or cos(πx/2) (``cos``) with
  x = (t' − ramp_start_step)/(ramp_end_step − ramp_start_step), t' = t rounded down to a multiple of
  ``ramp_every_steps``.
* gradient: straight through, ∂L/∂W = ∂L/∂W_fwd (neither the mask nor the scores are differentiated);
  at the optimizer step the SR-STE term λ·(1 − m)⊙W is added (m including the dense groups).

From ramp_end_step on the mask is a valid N:M mask; the forward weight is then W ⊙ m ⊙ (1 + f + p), N:M sparse
with the support of m (the deployable weight: the scores fold into it). Details read in the authors' code
(JingyangXiang/MaxQ, models/conv_type/mullt_axis_query_v2_pro.py ``MaxQConv2dBNV2Pro.get_mask`` /
``get_preserve_rate`` / ``do_grad_decay_v1``, models/conv_type/masker.py ``SoftParameterMasker``): see
docs/methods/maxq.md.
"""
from __future__ import annotations

import math

import torch

from . import NMMethod, register_method
from ..mask import from_flat_groups, from_groups, nm_mask, to_flat_groups, to_groups
from ..pattern import NMPattern

SCHEDULES = ("linear", "cubic", "cos")


class _StraightThrough(torch.autograd.Function):
    """``weight * scale`` forward; the gradient passes to ``weight`` unchanged (the authors' SoftParameterMasker)."""

    @staticmethod
    def forward(ctx, weight, scale):
        return weight * scale

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None


def axis_scores(magnitude: torch.Tensor, pattern: NMPattern, tau: float) -> torch.Tensor:
    """MaxQ's soft score along the last axis of ``magnitude`` [R, L] (|w|): with q = ⌊(M−N)/M·L⌋ and
    t = the mean of the q-th and (q+1)-th smallest of the row, 0 for the row's q smallest entries (ties: the
    lower index is counted smaller) and σ((|w| − t)/τ) for the others."""
    length = magnitude.shape[1]
    if pattern.n >= pattern.m:
        raise ValueError(f"MaxQ needs a pattern with N < M (it scores the share (M-N)/M it prunes), got {pattern}")
    q = int((pattern.m - pattern.n) / pattern.m * length)
    if q < 1:
        raise ValueError(f"MaxQ's axis score needs at least {math.ceil(pattern.m / (pattern.m - pattern.n))} weights "
                         f"along an axis for pattern {pattern}, got an axis of {length}")
    # the q+1 smallest of each row (no full sort): their largest is s[q], their second largest s[q-1]
    smallest = torch.topk(magnitude, q + 1, dim=1, largest=False, sorted=False).values
    top2 = torch.topk(smallest, 2, dim=1).values
    below, at = top2[:, 1:], top2[:, :1]  # s[q-1], s[q]
    threshold = (below + at) / 2
    # the q smallest: the entries <= s[q-1], unless s[q-1] is tied past the q-th: then the tied ones by index
    kept = magnitude > below
    if bool((kept.sum(dim=1) != length - q).any()):
        tied = magnitude == below
        extra = tied.cumsum(dim=1) > q - (magnitude < below).sum(dim=1, keepdim=True)
        kept |= tied & extra
    return torch.sigmoid((magnitude - threshold) / tau).mul_(kept)


@register_method("maxq")
class MaxQ(NMMethod):
    """MaxQ: forward W ⊙ m ⊙ (1 + f + p), straight-through gradient, SR-STE decay λ·(1 − m)⊙W at the step, and
    the share of N:M groups ramped from 0 to 1 between ``ramp_start_step`` and ``ramp_end_step`` (optimizer steps)."""

    defaults = {
        "decay": 2e-4,            # λ of the SR-STE term (the authors' --decay)
        "tau": 1e-2,              # temperature of the soft scores' sigmoid (the authors' tau)
        "ramp_start_step": 0,     # optimizer step where groups start turning N:M (authors: --decay-start, epochs)
        "ramp_end_step": 0,       # step from which all groups are N:M (authors: --decay-end, 30 of 120 epochs)
        "ramp_every_steps": 1,    # the ramp advances every this many steps (authors: once per epoch)
        "schedule": "linear",     # dense share over the ramp: linear, cubic or cos (authors: --prune-schedule)
        "kernel_axis": True,      # add the kernel-position score p for convolutions with kh·kw > 1
    }
    uses_step = True

    def validate(self) -> None:
        s = self.settings
        for key in ("decay", "tau"):  # numbers; "1e-2" too (a YAML 1.1 reader leaves it a string), as SR-STE's decay
            try:
                if isinstance(s[key], bool):
                    raise TypeError
                s[key] = float(s[key])
            except (TypeError, ValueError):
                raise ValueError(f"maxq: {key} must be a number, got {s[key]!r}") from None
        if not s["decay"] >= 0:
            raise ValueError(f"maxq: decay must be >= 0, got {s['decay']}")
        if not s["tau"] > 0:
            raise ValueError(f"maxq: tau must be > 0, got {s['tau']}")
        for key in ("ramp_start_step", "ramp_end_step", "ramp_every_steps"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise ValueError(f"maxq: {key} must be an integer number of optimizer steps, got {s[key]!r}")
        if s["ramp_start_step"] < 0:
            raise ValueError(f"maxq: ramp_start_step must be >= 0, got {s['ramp_start_step']}")
        if s["ramp_end_step"] < s["ramp_start_step"]:
            raise ValueError(f"maxq: ramp_end_step ({s['ramp_end_step']}) must be >= ramp_start_step "
                             f"({s['ramp_start_step']})")
        if s["ramp_every_steps"] < 1:
            raise ValueError(f"maxq: ramp_every_steps must be >= 1, got {s['ramp_every_steps']}")
        if s["schedule"] not in SCHEDULES:
            raise ValueError(f"maxq: unknown schedule {s['schedule']!r}: expected one of {', '.join(SCHEDULES)}")
        if not isinstance(s["kernel_axis"], bool):
            raise ValueError(f"maxq: kernel_axis must be true or false, got {s['kernel_axis']!r}")

    # --- the schedule -----------------------------------------------------------------------------------------
    def dense_share(self, step: int) -> float:
        """ρ(step): the share of groups kept dense at ``step`` (1 before ramp_start_step, 0 from ramp_end_step on)."""
        s = self.settings
        start, end = s["ramp_start_step"], s["ramp_end_step"]
        t = step // s["ramp_every_steps"] * s["ramp_every_steps"]
        if t < start:
            return 1.0
        if t >= end:
            return 0.0
        x = (t - start) / (end - start)
        if s["schedule"] == "linear":
            return 1.0 - x
        if s["schedule"] == "cubic":
            return (1.0 - x) ** 3
        return math.cos(x * math.pi / 2)

    # --- the mask ---------------------------------------------------------------------------------------------
    def compute_mask(self, weight: torch.Tensor, pattern: NMPattern, grouping: str, step: int) -> torch.Tensor:
        """The N:M mask of |w| (nm_mask: C kernel / Triton), with the ⌊ρ(step)·G⌋ groups of smallest Σ|w| all
        True (ties: the lower group index first). Remembers ``pattern`` for :meth:`forward_weight`."""
        pattern = NMPattern.parse(pattern)
        self.__dict__.setdefault("_patterns", set()).add(pattern)
        mask = nm_mask(weight, pattern, check_finite=False, grouping=grouping)
        w = weight.detach()
        flat = grouping == "authors_flat"
        groups = to_flat_groups(w, pattern.m) if flat else to_groups(w, pattern.m)
        dense = int(self.dense_share(step) * groups.shape[0])
        if dense == 0:
            return mask
        order = torch.sort(groups.abs().sum(dim=1), stable=True).indices
        revived = torch.zeros(groups.shape[0], dtype=torch.bool, device=w.device)
        revived[order[:dense]] = True
        full = revived[:, None].expand(groups.shape)
        full = from_flat_groups(full, w.shape) if flat else from_groups(full, w.shape)
        return mask | full

    # --- forward and backward ---------------------------------------------------------------------------------
    def scores(self, weight: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
        """1 + f + p for ``weight`` (not differentiated): the filter score f, plus the kernel score p for a
        convolution with more than one kernel position (when ``kernel_axis``)."""
        tau = float(self.settings["tau"])
        with torch.no_grad():
            mag = weight.detach().abs()
            out = 1 + axis_scores(mag.flatten(1), pattern, tau).reshape(mag.shape)
            positions = math.prod(mag.shape[2:])
            if self.settings["kernel_axis"] and positions > 1:
                by_position = mag.reshape(-1, positions).t()
                out += axis_scores(by_position, pattern, tau).t().reshape(mag.shape)
        return out

    def forward_weight(self, weight: torch.Tensor, mask: torch.Tensor, step: int,
                       pattern: "NMPattern | None" = None) -> torch.Tensor:
        """W ⊙ m ⊙ (1 + f + p), with the gradient passed straight through to W.

        ``pattern``: the layer's N:M pattern (the scores prune the share (M−N)/M of each axis). The contract's
        forward_weight does not pass it, so by default it is the object's ``pattern`` attribute where a layer sets
        one, else the pattern this object's :meth:`compute_mask` was called with (each layer holds its own method
        object); ValueError when there is none, or several."""
        if pattern is None:
            pattern = self.__dict__.get("pattern")
        if pattern is None:
            seen = self.__dict__.get("_patterns", set())
            if len(seen) != 1:
                found = ", ".join(sorted(map(str, seen))) or "none"
                raise ValueError(f"maxq: forward_weight needs the layer's N:M pattern: pass pattern=..., or compute "
                                 f"this object's mask for exactly one pattern first (patterns seen: {found})")
            (pattern,) = seen
        pattern = NMPattern.parse(pattern)
        scale = mask.to(weight.dtype) * self.scores(weight, pattern)
        return _StraightThrough.apply(weight, scale)

    def wants_step_term(self) -> bool:
        """Whether :meth:`step_term` adds anything: when decay > 0."""
        return float(self.settings["decay"]) != 0.0

    def step_term(self, weight: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor, step: int,
                  grad_scale: "torch.Tensor | None" = None, calls: int = 1) -> bool:
        """grad += calls·λ·(1 − m)⊙W (times ``grad_scale`` when the gradient carries a loss scale; ``calls``: the
        times the term is owed, >1 only with the layer's decay_mode="call")."""
        decay = float(self.settings["decay"]) * calls
        if decay == 0.0:
            return False
        with torch.no_grad():
            pruned = (~mask).to(grad.dtype)
            pruned = pruned * (grad_scale * decay) if grad_scale is not None else pruned.mul_(decay)
            grad.addcmul_(weight.detach(), pruned)
        return True

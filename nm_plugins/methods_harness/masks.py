"""What a trained model's N:M masks are good for: valid N:M, valid 2:4 for sparse tensor cores, transposable.

Read from the ``*.nm_mask`` buffers of a checkpoint's ``model`` state (every N:M layer saves the mask of its
weight), so the properties are those of the model as trained, whatever the method.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nm_plugins.core.mask import is_valid_nm_mask
from nm_plugins.core.pattern import NMPattern


def fits_2_4(mask: torch.Tensor) -> bool:
    """At most 2 kept in every 4 consecutive input channels (the last partial group padded with zeros): what the
    2:4 sparse tensor core format can store (zeros fill a group that keeps fewer)."""
    moved = mask if mask.dim() == 2 else mask.movedim(1, -1)
    pad = -moved.shape[-1] % 4
    if pad:
        moved = torch.nn.functional.pad(moved.to(torch.int32), (0, pad))
    return bool((moved.reshape(-1, 4).to(torch.int32).sum(dim=1) <= 2).all())


def transposed(mask: torch.Tensor) -> torch.Tensor:
    """The mask with its output and input channel axes swapped (dims 0 and 1): the mask the backward GEMM
    (gradient of the input, W^T) sees along its reduction axis."""
    return mask.transpose(0, 1)


def mask_properties(masks: dict, pattern: "str | NMPattern") -> dict:
    """Properties of a model's masks ``{layer: bool tensor}`` at ``pattern``: layers, valid_nm (every layer keeps
    exactly N of every M input channels), valid_2_4 (pattern 2:4: every mask a valid 2:4 mask; other patterns:
    None, not asked), fits_2_4 (at most 2 of every 4: storable in the 2:4 format), transposable (every mask's
    transpose is valid N:M too), and the layers failing each."""
    pattern = NMPattern.parse(pattern)
    if not masks:
        raise ValueError("mask_properties: no N:M masks (no *.nm_mask buffer in the model state)")
    bad = {"valid_nm": [], "fits_2_4": [], "transposable": []}
    for name, mask in masks.items():
        mask = mask.to(torch.bool)
        if not is_valid_nm_mask(mask, pattern):
            bad["valid_nm"].append(name)
        if not fits_2_4(mask):
            bad["fits_2_4"].append(name)
        if not is_valid_nm_mask(transposed(mask), pattern):
            bad["transposable"].append(name)
    is24 = (pattern.n, pattern.m) == (2, 4)
    return {"pattern": str(pattern), "layers": len(masks), "valid_nm": not bad["valid_nm"],
            "valid_2_4": (not bad["valid_nm"]) if is24 else None, "fits_2_4": not bad["fits_2_4"],
            "transposable": not bad["transposable"], "failing": {k: v for k, v in bad.items() if v}}


def checkpoint_masks(path: "str | Path") -> dict:
    """``{layer: mask}`` of the ``*.nm_mask`` buffers of a trainer checkpoint's ``model`` state (or of a plain
    state dict)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = state.get("model", state) if isinstance(state, dict) else {}
    return {k[: -len(".nm_mask")]: v for k, v in model.items() if k.endswith(".nm_mask")}


def run_mask_properties(out_dir: "str | Path", pattern: str, checkpoint: str = "checkpoint.pt") -> "dict | None":
    """:func:`mask_properties` of the last checkpoint in a run folder; None when the run left no checkpoint."""
    path = Path(out_dir) / checkpoint
    if not path.is_file():
        return None
    return {**mask_properties(checkpoint_masks(path), pattern), "checkpoint": str(path)}

"""What a trained model's N:M masks are good for: valid N:M, valid 2:4 for sparse tensor cores, transposable.

Read from the ``*.nm_mask`` buffers of a checkpoint's ``model`` state (every N:M layer saves the mask of its
weight), so the properties are those of the model as trained, whatever the method. A method with its own forward
(decaying masks, MaxQ's ramp, S-STE's soft threshold) could keep a valid mask while its forward weight still has
weights outside it: :func:`forward_outside_mask` recomputes each layer's forward weight from the checkpoint (the
method's ``forward_weight`` at the layer's saved step) and counts the layers where it does; ``valid_nm`` requires
none.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nm_plugins.core.mask import is_valid_nm_mask
from nm_plugins.core.pattern import NMPattern
from nm_plugins.runtime.training import load_checkpoint


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


def forward_outside_mask(state: dict, method: str, method_args: dict, pattern: "str | None" = None) -> list:
    """The layers of a model state whose forward weight under ``method`` (its ``forward_weight`` at the layer's
    saved ``nm_step``; the built-in path: weight x mask) is non-zero somewhere its ``nm_mask`` is not. A method
    whose ``forward_weight`` needs the layer's pattern first (MaxQ) gets it through one ``compute_mask`` call."""
    from nm_plugins.core.methods import make_method
    out = []
    for key, mask in state.items():
        if not key.endswith(".nm_mask"):
            continue
        name = key[: -len(".nm_mask")]
        weight, step = state[f"{name}.weight"].float(), int(state.get(f"{name}.nm_step", torch.tensor(0)))
        nm = make_method(method, **method_args)  # a fresh object per layer, as each layer holds its own copy
        with torch.no_grad():
            if pattern is not None and not nm.uses_builtin_forward():
                nm.compute_mask(weight, NMPattern.parse(pattern), "channels", step)
            try:
                fw = nm.forward_weight(weight, mask.to(torch.bool), step)
            except NotImplementedError:  # the built-in path: weight x mask (dense: the weight itself)
                fw = weight * mask if nm.applies_mask else weight
        if bool(((fw != 0) & ~mask.to(torch.bool)).any()):
            out.append(name)
    return out


def mask_properties(masks: dict, pattern: "str | NMPattern", outside: "list | None" = None) -> dict:
    """Properties of a model's masks ``{layer: bool tensor}`` at ``pattern``: layers, valid_nm (every layer keeps
    exactly N of every M input channels), valid_2_4 (pattern 2:4: every mask a valid 2:4 mask; other patterns:
    None, not asked), fits_2_4 (at most 2 of every 4: storable in the 2:4 format), transposable (every mask's
    transpose is valid N:M too), and the layers failing each; ``outside``: the layers whose forward weight has
    weights outside their mask (:func:`forward_outside_mask`), which fail valid_nm (and valid_2_4) too."""
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
    bad["forward_outside_mask"] = list(outside or [])
    bad["valid_nm"] += [n for n in bad["forward_outside_mask"] if n not in bad["valid_nm"]]
    is24 = (pattern.n, pattern.m) == (2, 4)
    return {"pattern": str(pattern), "layers": len(masks), "valid_nm": not bad["valid_nm"],
            "valid_2_4": (not bad["valid_nm"]) if is24 else None, "fits_2_4": not bad["fits_2_4"],
            "transposable": not bad["transposable"], "failing": {k: v for k, v in bad.items() if v}}


def checkpoint_state(path: "str | Path") -> dict:
    """The ``model`` state of a trainer checkpoint (or a plain state dict)."""
    state = load_checkpoint(path)  # the trainers' own loader: weights_only, no pickled code runs
    return state.get("model", state) if isinstance(state, dict) else {}


def checkpoint_masks(path: "str | Path") -> dict:
    """``{layer: mask}`` of the ``*.nm_mask`` buffers of a trainer checkpoint's ``model`` state (or of a plain
    state dict)."""
    return _masks_of(checkpoint_state(path))


def _masks_of(state: dict) -> dict:
    """``{layer: mask}`` of the ``*.nm_mask`` entries of a model state dict."""
    return {k[: -len(".nm_mask")]: v for k, v in state.items() if k.endswith(".nm_mask")}


def run_mask_properties(out_dir: "str | Path", pattern: str, checkpoint: str = "checkpoint.pt",
                        method: "str | None" = None, method_args: "dict | None" = None) -> "dict | None":
    """:func:`mask_properties` of the last checkpoint in a run folder (with ``method``: its forward weights checked
    against the masks too); None when the run left no checkpoint."""
    path = Path(out_dir) / checkpoint
    if not path.is_file():
        return None
    state = checkpoint_state(path)
    masks = _masks_of(state)
    outside, error = None, None
    if method:
        try:
            outside = forward_outside_mask(state, method, method_args or {}, pattern)
        except (ValueError, TypeError, RuntimeError) as e:  # not checkable: valid_nm unknown, said so, not guessed
            error = f"{type(e).__name__}: {e}"
    props = mask_properties(masks, pattern, outside)
    if error:
        props.update(valid_nm=None, valid_2_4=None, forward_error=error)
    return {**props, "forward_checked": method is not None and error is None, "checkpoint": str(path)}

"""Sparse RAFT: torchvision's raft_large / raft_small with N:M convolutions from the core."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models.optical_flow import raft_large, raft_small

from nm_plugins.core import SparsityReport, sparsify

BUILDERS = {"large": raft_large, "small": raft_small}
RGB_STEMS = ("feature_encoder.convnormrelu.0", "context_encoder.convnormrelu.0")  # the two encoders' first convs


def create(size: str = "large", pattern="2:4", method: str = "srste", decay: float = 2e-4,
           weights: "str | Path | None" = None, decay_mode: str = "step",
           method_args: "dict | None" = None) -> nn.Module:
    """A torchvision RAFT (``size`` "large" or "small") whose convolutions are N:M through
    :func:`nm_plugins.sparsify`; ``method="dense"`` gives the dense baseline through the same path; any registered
    method by name, its settings in ``method_args``.

    The RGB stems of both encoders stay dense (reported as excluded), and so does any conv whose N:M mask would
    keep every weight (the 2-channel flow input of the motion encoder under 2:4); convs whose input channels are
    not divisible by M (raft_small's GRU, 242 channels) are N:M with a zero-padded last group. ``decay_mode``:
    ``"step"`` or ``"call"`` (the authors' code: λ_W for each of the recurrent block's calls). The
    :class:`SparsityReport` is kept as ``model.sparsity_report``.
    ``weights``: a local checkpoint file (a torchvision RAFT state_dict, or a checkpoint of this project's
    trainer) loaded after sparsifying, so masks of a dense checkpoint are derived from its weights.
    """
    if size not in BUILDERS:
        raise ValueError(f"unknown RAFT size {size!r}: expected one of {', '.join(BUILDERS)}")
    model = BUILDERS[size](weights=None, progress=False)
    report = sparsify(model, pattern=pattern, method=method, decay=decay, keep_classifier_dense=False,
                      exclude=RGB_STEMS, decay_mode=decay_mode,
                      method_args=method_args)
    model.sparsity_report = report
    if weights is not None:
        load_weights(model, weights)
    return model


def sparsity_report(model: nn.Module) -> SparsityReport:
    """The report :func:`create` attached to ``model`` (unwrapping DistributedDataParallel)."""
    model = getattr(model, "module", model)
    report = getattr(model, "sparsity_report", None)
    if report is None:
        raise ValueError("this model was not built by nm_plugins.raft.create (no sparsity_report attached)")
    return report


def _state_dict_from_file(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint of nm_plugins.raft.train
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"RAFT weights file {path} does not hold a state_dict of tensors "
                         "(expected a torchvision RAFT state_dict or an nm_plugins.raft.train checkpoint)")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: "str | Path") -> nn.Module:
    """Load RAFT weights from a local file into ``model`` (strict; N:M masks are recomputed from the loaded
    weights when the file has none). Raises FileNotFoundError / ValueError naming the file when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RAFT weights file {path} does not exist (downloads are not supported: "
                                "give the path of a torchvision RAFT .pth file)")
    state = _state_dict_from_file(path)
    target = getattr(model, "module", model)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"RAFT weights file {path} does not fit this model (wrong size large/small?): {err}") from None
    return model

"""Checks for state_dicts that carry N:M masks: a sparse checkpoint must not load silently into a dense model."""
from __future__ import annotations

import torch.nn as nn

from .layers import SparseMixin

MASK_SUFFIX = ".nm_mask"


def check_sparse_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Raise ValueError when ``state_dict`` holds N:M masks (``<layer>.nm_mask``) for layers of ``model`` that
    are not N:M layers: loading it would silently give the dense master weights, pruned weights included.

    Masks whose layer does not exist in ``model`` at all are left to ``load_state_dict``'s own key checks.
    """
    modules = dict(model.named_modules())
    dense = []
    for key in state_dict:
        if not key.endswith(MASK_SUFFIX):
            continue
        name = key[: -len(MASK_SUFFIX)]
        module = modules.get(name)
        if module is not None and not isinstance(module, SparseMixin):
            dense.append(name)
    if dense:
        shown = ", ".join(dense[:5]) + (f" and {len(dense) - 5} more" if len(dense) > 5 else "")
        raise ValueError(
            f"this state_dict comes from an N:M sparse model (it holds masks for {shown}), but these layers of "
            f"the model are dense: loading would give the unmasked master weights. Load it into a model "
            f"sparsified with the same pattern, or write a dense checkpoint with nm_plugins.export_dense first")

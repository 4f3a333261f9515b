"""torch >= 2.6 compatibility of mmengine 0.10 checkpoints, applied when ``nm_plugins.mmdet`` is imported.

``torch.load`` defaults to ``weights_only=True`` since torch 2.6, and mmengine writes objects into its
checkpoints that the weights-only unpickler refuses (the message hub's ``HistoryBuffer`` with numpy
arrays and its statistics functions, numpy scalars in the runtime info), so ``resume`` fails. Instead of
turning the safe loader off, HistoryBuffer pickles only its data and the few types mmengine stores are
added to torch's allow-list (:func:`allow_mmengine_checkpoints`). Checkpoints written by mmengine without
this plugin loaded still need the unsafe (non weights-only) loader: their HistoryBuffers hold function references.

mmengine's loader for local files is also replaced (:func:`load_local_checkpoint`) so that
``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` accepts what our classification trainer writes:
a plain state_dict or ``{"model": state_dict, ...}`` (``module.`` prefixes are stripped by mmengine).
"""
from __future__ import annotations

import os.path as osp

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    types = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    # numpy >= 1.25 pickles dtypes by their class (np.dtypes.Float64DType, ...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        types += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return types


def _history_buffer_state(self) -> dict:
    """HistoryBuffer state without its statistics *functions* (pickled as ``getattr(HistoryBuffer, 'min')``,
    which a weights-only load must refuse); ``__setstate__`` re-registers the defaults on load."""
    state = dict(self.__dict__)
    state.pop("statistics_methods", None)
    return state


def allow_mmengine_checkpoints() -> None:
    """Make mmengine 0.10 checkpoints weights-only loadable: data-only HistoryBuffer pickles, and the
    types mmengine stores (HistoryBuffer, numpy arrays / scalars / dtypes) on torch's allow-list."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])


def _unwrap_state_dict(checkpoint):
    """{"model": state_dict, ...} (our trainers' format) -> {"state_dict": state_dict, ...}."""
    if (isinstance(checkpoint, dict) and "state_dict" not in checkpoint and isinstance(checkpoint.get("model"), dict)
            and all(torch.is_tensor(v) for v in checkpoint["model"].values())):
        checkpoint = {**checkpoint, "state_dict": checkpoint["model"]}
        del checkpoint["model"]
    return checkpoint


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local-file checkpoint loader, safe (weights_only) and aware of ``{"model": ...}`` files."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(
            f"checkpoint {filename} does not exist (for backbone init, train it with our classification trainer "
            f"or set model.backbone.init_cfg.checkpoint to the file)")
    return _unwrap_state_dict(torch.load(filename, map_location=map_location, weights_only=True))


def apply() -> None:
    """Apply both fixes (idempotent)."""
    allow_mmengine_checkpoints()
    CheckpointLoader.register_scheme(prefixes="", loader=load_local_checkpoint, force=True)

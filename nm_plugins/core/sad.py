"""Sparse Architecture Divergence (SAD): how many mask entries flip during training."""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import sparse_layers


def sad(mask_a: torch.Tensor, mask_b: torch.Tensor) -> int:
    """Number of entries where two binary masks differ (their L1 distance)."""
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"SAD needs masks of one shape, got {tuple(mask_a.shape)} and {tuple(mask_b.shape)}")
    return int((mask_a.bool() != mask_b.bool()).sum())


class SADTracker:
    """Records, per N:M layer and for the whole model, SAD against the initial mask and the previous record.

    ``record()`` returns ``{"layers": {name: stats}, "model": stats}`` where stats holds ``sad_init``,
    ``sad_prev`` (absolute counts) and ``sad_init_norm``, ``sad_prev_norm`` (divided by the number of
    maskable weights). Stages (e.g. ``layer1``) are aggregated by :meth:`by_stage`.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.initial = self._snapshot()
        if not self.initial:
            raise ValueError("SADTracker: the model has no N:M layers (run nm_plugins.sparsify first)")
        self.previous = self.initial
        self.history: list = []

    def _snapshot(self) -> dict:
        with torch.no_grad():
            return {name: layer.mask().detach().clone() for name, layer in sparse_layers(self.model)}

    def record(self) -> dict:
        """Compare the current masks with the initial and the previous ones; returns the stats."""
        current = self._snapshot()
        layers, total = {}, {"sad_init": 0, "sad_prev": 0, "numel": 0}
        for name, mask in current.items():
            stats = {"sad_init": sad(mask, self.initial[name]), "sad_prev": sad(mask, self.previous[name]),
                     "numel": mask.numel()}
            for k in total:
                total[k] += stats[k]
            layers[name] = _normalise(stats)
        self.previous = current
        result = {"layers": layers, "model": _normalise(total)}
        self.history.append(result)
        return result

    def state_dict(self) -> dict:
        """Initial and previous masks, for checkpoints (a resumed run continues the same SAD curve)."""
        return {"initial": self.initial, "previous": self.previous, "history": self.history}

    def load_state_dict(self, state: dict) -> dict:
        """Restore what :meth:`state_dict` returned, for the layers the model has now.

        A layer of the model that the state does not hold (or holds with another mask shape) keeps its
        current mask as its baseline (initial and previous); saved layers the model no longer has are
        dropped. Returns ``{"restored": [...], "new": [...], "dropped": [...]}`` (layer names).
        """
        current = self._snapshot()
        initial, previous = state["initial"], state["previous"]
        out = {"restored": [], "new": [], "dropped": sorted(set(initial) - set(current))}
        self.initial, self.previous = {}, {}
        for name, mask in current.items():
            saved_init, saved_prev = initial.get(name), previous.get(name, initial.get(name))
            if saved_init is None or saved_init.shape != mask.shape or saved_prev.shape != mask.shape:
                self.initial[name] = self.previous[name] = mask
                out["new"].append(name)
            else:
                self.initial[name], self.previous[name] = saved_init.to(mask.device), saved_prev.to(mask.device)
                out["restored"].append(name)
        self.history = list(state.get("history", []))
        return out

    @staticmethod
    def by_stage(record: dict, depth: int = 1) -> dict:
        """Aggregate a record's per-layer stats by the first ``depth`` parts of the layer names."""
        stages: dict = {}
        for name, stats in record["layers"].items():
            stage = ".".join(name.split(".")[:depth])
            agg = stages.setdefault(stage, {"sad_init": 0, "sad_prev": 0, "numel": 0})
            for k in agg:
                agg[k] += stats[k]
        return {k: _normalise(v) for k, v in stages.items()}


def _normalise(stats: dict) -> dict:
    n = max(stats["numel"], 1)
    return {**stats, "sad_init_norm": stats["sad_init"] / n, "sad_prev_norm": stats["sad_prev"] / n}

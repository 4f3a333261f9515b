"""RAFT optical flow with N:M sparse convolutions (torchvision RAFT + the nm_plugins core).

``create(size, pattern, method, weights=path)`` builds the model; ``nm_plugins.raft.train`` trains it
(``python -m nm_plugins.raft.train --config configs/raft/chairs.yaml``) and ``nm_plugins.raft.reproduce`` is
the entry of ``make reproduce-raft``.
"""
from .model import create, load_weights, sparsity_report

__all__ = ["create", "load_weights", "sparsity_report"]

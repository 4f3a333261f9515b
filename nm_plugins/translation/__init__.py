"""Transformer translation with N:M linear layers (the paper's fourth task): model, data (WMT14 En-De and the
Debian-catalog proxy), trainer, beam search, sacrebleu scores, ``make reproduce-translation``. Imports the core
and the shared training layer (``nm_plugins.runtime.training``), no other adapter."""
from .model import Transformer, build_model

__all__ = ["Transformer", "build_model"]

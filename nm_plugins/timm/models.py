"""N:M timm models: the generic ``create_model`` and the registered ``nm_*`` names of the paper's table."""
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch.nn as nn
from timm.models import load_checkpoint, register_model

from nm_plugins.core import NMPattern, SparsityReport, prune_once, sparsify

METHOD_NAMES = ("srste", "ste", "asp", "fixed", "dense")
PAPER_PATTERNS = ("2:4", "4:8", "1:4", "2:8")
# timm architecture + extra kwargs behind each registered base name.
BASES = {
    "resnet50": ("resnet50", {}),
    "resnet50x1_25": ("resnet50", {"channels": (80, 160, 320, 640), "stem_width": 80}),
    "resnet18": ("resnet18", {}),
}
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def create_model(name: str, pattern="2:4", method: str = "srste", decay: float = 2e-4, exclude=(),
                 keep_classifier_dense: bool = True, checkpoint_path: "str | Path | None" = None,
                 **timm_kwargs) -> nn.Module:
    """timm.create_model(name, **timm_kwargs) with every groupable Conv2d/Linear made N:M (classifier dense).

    ``method`` is srste, ste, dense, fixed, or ``asp`` (dense training until :func:`asp_prune`).
    ``checkpoint_path`` is a local file (dense timm checkpoint or one of ours) loaded after sparsification;
    masks are then derived from the loaded weights unless the file holds them. The model gets
    ``nm_config`` (pattern, method, decay) and ``nm_report`` (the :class:`SparsityReport`).
    """
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown N:M method {method!r}: expected one of {', '.join(METHOD_NAMES)}")
    pattern = NMPattern.parse(pattern)
    model = timm.create_model(name, **timm_kwargs)
    report = sparsify(model, pattern, "dense" if method == "asp" else method, decay, exclude=exclude,
                      keep_classifier_dense=keep_classifier_dense)
    model.nm_config = {"pattern": str(pattern), "method": method, "decay": decay if method == "srste" else 0.0}
    model.nm_report = report
    if checkpoint_path is not None:
        load_local_checkpoint(model, checkpoint_path)
    return model


def load_local_checkpoint(model: nn.Module, path: "str | Path", strict: bool = True) -> nn.Module:
    """Load a local checkpoint file (timm/torchvision state dict, ``{"model"|"state_dict": ...}``, or a
    trainer checkpoint of this project) into ``model``; N:M masks missing from it follow the weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist (only local files are loaded, no downloads)")
    load_checkpoint(model, str(path), use_ema=False, strict=strict)
    return model


def asp_prune(model: nn.Module) -> SparsityReport:
    """ASP step for a model made with method ``asp``: one-shot magnitude N:M masks from its trained weights,
    then method ``fixed`` for fine-tuning (pruned weights set to 0 and frozen)."""
    config = getattr(model, "nm_config", None)
    if config is None:
        raise ValueError("asp_prune: the model was not made by nm_plugins.timm.create_model (no nm_config)")
    report = prune_once(model, config["pattern"])
    model.nm_config = {**config, "method": "fixed"}
    return report


def _make_entrypoint(model_name: str, base: str, method: str, pattern: str):
    arch, arch_kwargs = BASES[base]

    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        kwargs = {**arch_kwargs, **kwargs}
        return create_model(arch, pattern=pattern, method=method, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = model_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"{base} with {pattern} N:M sparsity trained by {method} "
                          f"({'dense until nm_plugins.timm.asp_prune' if method == 'asp' else 'classifier dense'}).")
    return entrypoint


def registered_nm_models() -> list:
    """Names of the N:M models this module registers with timm."""
    return [f"nm_{base}_{method}_{p.replace(':', '_')}"
            for base in BASES for method in ("srste", "ste", "asp") for p in PAPER_PATTERNS]


def _register_all() -> None:
    module = sys.modules[__name__]
    for base in BASES:
        for method in ("srste", "ste", "asp"):
            for pattern in PAPER_PATTERNS:
                name = f"nm_{base}_{method}_{pattern.replace(':', '_')}"
                fn = _make_entrypoint(name, base, method, pattern)
                setattr(module, name, fn)
                register_model(fn)


_register_all()

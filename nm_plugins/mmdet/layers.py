"""N:M layers for mmdetection configs: ``SRSTEConv2d`` (a ``conv_cfg`` type) and a bbox head whose shared
fully connected layers are N:M (``NMShared2FCBBoxHead``). Registered in mmdet's ``MODELS``."""
from __future__ import annotations

import torch.nn as nn
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.registry import MODELS
from mmengine.logging import print_log

from nm_plugins.core import NMPattern, SparseConv2d, SparseLinear
from nm_plugins.core.layers import DEFAULT_DECAY, build_method


def _check_method(method, where: str, method_args=None, decay=None) -> None:
    """ValueError prefixed with ``where`` for an unregistered method or a setting it does not have."""
    try:
        build_method(method, method_args, decay)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def dense_reason(in_channels: int, groups: int, pattern: NMPattern) -> str | None:
    """Why a conv with these input channels / groups cannot take ``pattern`` (None when it can)."""
    per_group = in_channels // max(groups, 1)
    if groups > 1 and per_group == 1:
        return "depthwise conv: one input channel per group"
    if per_group % pattern.m:
        return f"{per_group} input channels not divisible by M={pattern.m}"
    return None


@MODELS.register_module(name="SRSTEConv2d")
def SRSTEConv2d(in_channels: int, out_channels: int, kernel_size, *args, pattern="2:4", method: str = "srste",
                decay: float = DEFAULT_DECAY, strict: bool = False, method_args: "dict | None" = None,
                **kwargs) -> nn.Conv2d:
    """An N:M conv for ``conv_cfg=dict(type='SRSTEConv2d', pattern='2:4', method='srste', decay=2e-4)``; any
    registered method by name, its settings in ``method_args=dict(...)``.

    Returns a :class:`nm_plugins.SparseConv2d`; a conv whose input channels cannot be split into groups
    of M (e.g. the RGB stem) is returned as a plain ``nn.Conv2d`` (the core cannot group it), or raises
    ValueError when ``strict=True``. ``method='dense'`` builds the dense baseline through the same path.
    """
    nm = NMPattern.parse(pattern)
    _check_method(method, "SRSTEConv2d", method_args, decay)
    reason = dense_reason(in_channels, kwargs.get("groups", 1), nm)
    if reason is not None:
        if strict:
            raise ValueError(f"SRSTEConv2d({in_channels}, {out_channels}) cannot take N:M {nm}: {reason}")
        print_log(f"SRSTEConv2d: conv {in_channels}->{out_channels} stays dense ({reason})", logger="current")
        return nn.Conv2d(in_channels, out_channels, kernel_size, *args, **kwargs)
    return SparseConv2d(in_channels, out_channels, kernel_size, *args, pattern=nm, method=method, decay=decay,
                        method_args=method_args, **kwargs)


def sparsify_linears(module: nn.ModuleList, pattern="2:4", method: str = "srste", decay: float = DEFAULT_DECAY,
                     where: str = "layer", method_args: "dict | None" = None) -> list:
    """Replace every nn.Linear of a ModuleList in place by an N:M SparseLinear (same Parameters);
    returns the indices replaced. A Linear whose input features are not divisible by M raises ValueError."""
    nm = NMPattern.parse(pattern)
    _check_method(method, where, method_args, decay)
    done = []
    for i, layer in enumerate(module):
        if type(layer) is nn.Linear:
            if layer.in_features % nm.m:
                raise ValueError(f"{where}[{i}]: {layer.in_features} input features are not divisible by "
                                 f"M={nm.m} of the N:M pattern {nm}")
            module[i] = SparseLinear.from_dense(layer, nm, method, decay, method_args=method_args)
            done.append(i)
    return done


@MODELS.register_module()
class NMShared2FCBBoxHead(Shared2FCBBoxHead):
    """mmdet's ``Shared2FCBBoxHead`` whose two shared fully connected layers are N:M.

    ``fc_sparsity=dict(pattern='2:4', method='srste', decay=2e-4, method_args=dict(...))``; the classifier and box regressor stay
    dense (like the classifier of the classification models)."""

    def __init__(self, *args, fc_sparsity: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = dict(pattern="2:4", method="srste", decay=DEFAULT_DECAY, method_args=None)
        unknown = set(fc_sparsity or {}) - set(cfg)
        if unknown:
            raise ValueError(f"NMShared2FCBBoxHead.fc_sparsity: unknown keys {sorted(unknown)}; "
                             f"expected pattern, method, decay, method_args")
        cfg.update(fc_sparsity or {})
        self.fc_sparsity = cfg
        sparsify_linears(self.shared_fcs, where="NMShared2FCBBoxHead.shared_fcs", **cfg)

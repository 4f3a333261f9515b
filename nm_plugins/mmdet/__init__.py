"""mmdetection 3.x plugin: N:M sparse layers, the NMSparsityHook and torch-2.6+ checkpoint compatibility.

Importing this package (configs: ``custom_imports=dict(imports=['nm_plugins.mmdet'],
allow_failed_imports=False)``) registers in mmdetection's registries (scope ``mmdet``):

- ``MODELS``: ``SRSTEConv2d`` — ``conv_cfg=dict(type='SRSTEConv2d', pattern='2:4', method='srste',
  decay=2e-4)`` anywhere mmcv's ``build_conv_layer`` is used; ``NMShared2FCBBoxHead`` — a bbox head
  whose shared FC layers are N:M (``fc_sparsity=dict(pattern=..., method=..., decay=...)``);
- ``HOOKS``: ``NMSparsityHook`` — ``custom_hooks=[dict(type='NMSparsityHook', interval=50)]``.

It also lets mmengine resume its own checkpoints under torch's ``weights_only`` default (see
:mod:`nm_plugins.mmdet.compat`). Tools: ``python -m nm_plugins.mmdet.export CONFIG CHECKPOINT OUT.pth`` (a plain
mmdet checkpoint and config that need no plugin, :mod:`nm_plugins.mmdet.export`) and ``python -m
nm_plugins.mmdet.flops CONFIG`` (N:M-aware Params/FLOPs of the whole detector, :mod:`nm_plugins.mmdet.flops`).
"""
from . import compat
from .hook import NMSparsityHook
from .layers import NMShared2FCBBoxHead, SRSTEConv2d, sparsify_linears

compat.apply()

__all__ = ["SRSTEConv2d", "NMShared2FCBBoxHead", "NMSparsityHook", "sparsify_linears"]

"""timm adapter: N:M variants of timm models.

``import nm_plugins.timm`` registers, with timm's own ``@register_model``:

* ``nm_{resnet50,resnet50x1_25,resnet18}_{srste,ste,asp}_{2_4,4_8,1_4,2_8}`` (e.g. ``nm_resnet50_srste_2_4``;
  ``resnet50x1_25`` is ResNet-50 with every width times 1.25, the paper's 2:8 row),
* ``cifar_resnet8/14/20``: CIFAR-style ResNets for 28x28 inputs (the Fashion-MNIST proxy).

``create_model(name, pattern=..., method=..., **timm_kwargs)`` makes any timm model N:M. ``checkpoint_path``
loads a local dense or sparse checkpoint (never downloads). ASP models are created with method ``dense`` (the
N:M layers only track masks); after dense training call :func:`asp_prune` and fine-tune (method ``fixed``).
"""
from __future__ import annotations

from . import cifar_resnet  # noqa: F401  (registers cifar_resnet8/14/20)
from .models import asp_prune, create_model, load_local_checkpoint, registered_nm_models

__all__ = ["create_model", "asp_prune", "load_local_checkpoint", "registered_nm_models"]

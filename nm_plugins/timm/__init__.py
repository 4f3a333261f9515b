"""timm adapter: N:M variants of timm models.

``import nm_plugins.timm`` registers, with timm's own ``@register_model``:

* ``nm_{resnet50,resnet50x1_25,resnet18}_{srste,ste,asp}_{2_4,4_8,1_4,2_8}`` (e.g. ``nm_resnet50_srste_2_4``),
* ``resnet50x1_25``: dense ResNet-50 with every width times 1.25, the 7x7 stem included (the paper's 2:8 row),
* ``cifar_resnet8/14/20``: CIFAR-style ResNets for 28x28 inputs (the Fashion-MNIST proxy).

``create_model(name, pattern=..., method=..., **timm_kwargs)`` makes any timm model N:M. The classifier(s)
(``get_classifier()``; none for ``num_classes=0`` / ``features_only``) and the stem (``pretrained_cfg['first_conv']``
and the layers fed the input) stay dense; a probe forward finds layers whose weight the model reads outside their
own forward (kept dense; BEiT/EVA/Swin-V2 ``qkv`` made to run its own forward). ``checkpoint_path`` loads a local
dense, sparse or authors' checkpoint (never downloads); masks for layers that are dense here raise. ASP models are
created with method ``dense`` (the N:M layers only track masks); after dense training call :func:`asp_prune` and
fine-tune (method ``fixed``).
"""
from __future__ import annotations

from . import cifar_resnet  # noqa: F401  (registers cifar_resnet8/14/20)
from .models import asp_prune, create_model, load_local_checkpoint, registered_nm_models

__all__ = ["create_model", "asp_prune", "load_local_checkpoint", "registered_nm_models"]

"""CIFAR-style ResNet-8/14/20 (He et al. 2016, 3 stages of BasicBlocks) for small images such as
Fashion-MNIST's 28x28, registered with timm as ``cifar_resnet8`` / ``cifar_resnet14`` / ``cifar_resnet20``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 conv) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: 3x3 stem (stride ``stem_stride``), stages of ``blocks_per_stage``
    blocks at widths w, 2w, 4w (strides 1, 2, 2), global average pool and a linear classifier ``fc``. Follows
    timm's model conventions (``feature_info``, ``forward_features`` / ``forward_head`` / ``forward_intermediates``,
    ``get_classifier`` / ``reset_classifier``; ``features_only`` through ``timm.create_model``)."""

    def __init__(self, blocks_per_stage: int = 1, width: int = 16, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, stem_stride: int = 1, global_pool: str = "avg", **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"CifarResNet got unexpected arguments: {', '.join(sorted(kwargs))}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"CifarResNet global_pool must be 'avg' or '' (none), got {global_pool!r}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = 4 * width
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.conv1 = nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU()
        stages, ch = [], width
        self.feature_info = [dict(num_chs=width, reduction=stem_stride, module="act1")]
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(ch, out_ch, 1 if i == 0 else 2)]
            blocks += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_ch, reduction=stem_stride * 2 ** i, module=f"layer{i + 1}"))
            ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm convention)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: "str | None" = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` classes (0: none), optionally the pooling
        (``"avg"`` or ``""``) (timm convention)."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"CifarResNet global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, [B, 4w, H/4, W/4] (H/8 with a stride-2 stem)."""
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classifier on a feature map (``pre_logits``: stop before the classifier)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The feature maps of the stem and stages picked by ``indices`` (timm convention: an int takes the last
        n, a list the given ones), with the final feature map unless ``intermediates_only``."""
        if output_fmt != "NCHW":
            raise ValueError("CifarResNet gives NCHW feature maps only")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        stages = [nn.Sequential(self.conv1, self.bn1, self.act1), self.layer1, self.layer2, self.layer3]
        intermediates = []
        for i, stage in enumerate(stages[: max_index + 1] if stop_early else stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv="conv1",
                classifier="fc", **kwargs)


default_cfgs = generate_default_cfgs({"cifar_resnet8": _cfg(), "cifar_resnet14": _cfg(), "cifar_resnet20": _cfg()})


def _cifar_resnet(variant: str, blocks: int, pretrained: bool, kwargs: dict) -> CifarResNet:
    if pretrained:
        raise ValueError("cifar_resnet models have no pretrained weights; pass checkpoint_path=LOCAL_FILE instead")
    return build_model_with_cfg(CifarResNet, variant, False, blocks_per_stage=blocks,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR-style ResNet-8 (one block per stage); ``width`` (default 16) sets the first stage's channels."""
    return _cifar_resnet("cifar_resnet8", 1, pretrained, kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR-style ResNet-14 (two blocks per stage)."""
    return _cifar_resnet("cifar_resnet14", 2, pretrained, kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR-style ResNet-20 (three blocks per stage)."""
    return _cifar_resnet("cifar_resnet20", 3, pretrained, kwargs)

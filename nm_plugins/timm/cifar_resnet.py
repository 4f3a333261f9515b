"""CIFAR-style ResNet-8/14/20 (He et al. 2016, 3 stages of BasicBlocks) for small images such as
Fashion-MNIST's 28x28, registered with timm as ``cifar_resnet8`` / ``cifar_resnet14`` / ``cifar_resnet20``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model


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
    blocks at widths w, 2w, 4w (strides 1, 2, 2), global average pool and a linear classifier ``fc``."""

    def __init__(self, blocks_per_stage: int = 1, width: int = 16, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, stem_stride: int = 1, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"CifarResNet got unexpected arguments: {', '.join(sorted(kwargs))}")
        self.num_classes = num_classes
        self.num_features = 4 * width
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, ch = [], width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(ch, out_ch, 1 if i == 0 else 2)]
            blocks += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm convention)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` classes (timm convention)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, [B, 4w, H/4, W/4] (H/8 with a stride-2 stem)."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        x = self.forward_features(x).mean((2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return self.fc(x)


def _cifar_resnet(blocks: int, pretrained: bool, kwargs: dict) -> CifarResNet:
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError("cifar_resnet models have no pretrained weights; pass checkpoint_path=LOCAL_FILE instead")
    return CifarResNet(blocks, **kwargs)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR-style ResNet-8 (one block per stage); ``width`` (default 16) sets the first stage's channels."""
    return _cifar_resnet(1, pretrained, kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR-style ResNet-14 (two blocks per stage)."""
    return _cifar_resnet(2, pretrained, kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR-style ResNet-20 (three blocks per stage)."""
    return _cifar_resnet(3, pretrained, kwargs)

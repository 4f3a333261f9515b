"""What both ImageNet loaders (PIL workers in data.py, on-device decoding in gpu_loader.py) share: the folder
layout and its check, the normalisation, the PCA lighting constants, the unreadable-image error and the
(seed, epoch) sharded order."""
from __future__ import annotations

from pathlib import Path

import torch

IMAGENET_LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> with the same class folders"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class UnreadableImageError(RuntimeError):
    """An image file that PIL cannot decode."""


def check_imagenet_root(root) -> list:
    """The class names of an ImageNet-style root; a clear error naming the path when the layout is wrong."""
    if root is None or str(root) == "":
        raise ValueError(f"ImageNet root not set: set IMAGENET_ROOT or data.root to a folder laid out as {IMAGENET_LAYOUT}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet root {root} does not exist or is not a folder; expected {IMAGENET_LAYOUT}")
    classes = {}
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir():
            raise FileNotFoundError(f"ImageNet root {root} has no {split}/ folder; expected {IMAGENET_LAYOUT}")
        classes[split] = sorted(p.name for p in d.iterdir() if p.is_dir())
        if not classes[split]:
            raise FileNotFoundError(f"{d} holds no class folders; expected {IMAGENET_LAYOUT} "
                                    "(val/ images sorted into class folders, e.g. with the usual valprep script)")
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))[:5]
        only_val = sorted(set(classes["val"]) - set(classes["train"]))[:5]
        raise ValueError(f"ImageNet root {root}: train/ and val/ class folders differ "
                         f"(only in train: {only_train}, only in val: {only_val}); expected {IMAGENET_LAYOUT}")
    return classes["train"]


class Lighting:
    """AlexNet-style PCA lighting noise on a [3, H, W] tensor (the authors' ImageNet recipe, std 0.1)."""

    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __init__(self, std: float = 0.1):
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        rgb = (self.EIGVEC * alpha * self.EIGVAL).sum(1)
        return img + rgb.view(3, 1, 1)


class _ShardSampler(torch.utils.data.Sampler):
    """This process's share of a (seed, epoch)-shuffled or plain order; ``drop_last`` keeps shards equal."""

    def __init__(self, n, rank, world, shuffle, seed, drop_last):
        self.n, self.rank, self.world, self.shuffle, self.seed, self.drop_last = n, rank, world, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            order = order[: self.n - self.n % self.world]
        return order[self.rank:: self.world]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self):
        return len(self._indices())

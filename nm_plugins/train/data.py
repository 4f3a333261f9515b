"""Classification data: ImageNet class folders (``train/``, ``val/``) and the Fashion-MNIST proxy.

Both give loaders with ``len()``, ``set_epoch(epoch)`` and iteration over ``(images, labels, skipped)``
batches, sharded over torchrun processes; the order depends only on (seed, epoch), so a resumed run sees
the same batches as an uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from nm_plugins.data import load_fashion_mnist
from nm_plugins.train.imagenet import (IMAGENET_LAYOUT, IMAGENET_MEAN, IMAGENET_STD, Lighting,  # noqa: F401 (re-exported)
                                     UnreadableImageError, _ShardSampler, check_imagenet_root)

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def _pil_loader(path: str):
    from PIL import Image
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for broken files
        raise UnreadableImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


class SkippingImageFolder(datasets.ImageFolder):
    """ImageFolder that returns None for an unreadable image when ``skip_bad`` (counted by the collate)."""

    def __init__(self, *args, skip_bad: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_bad = skip_bad

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except UnreadableImageError:
            if self.skip_bad:
                return None
            raise


def _imagenet_dataset(root: Path, split: str, img_size: int, augment: bool, skip_bad: bool):
    from torchvision import transforms as T
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if split == "train" and augment:
        tf = T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(), Lighting(0.1), norm])
    else:
        tf = T.Compose([T.Resize(int(round(img_size * 256 / 224))), T.CenterCrop(img_size), T.ToTensor(), norm])

    return SkippingImageFolder(str(root / split), transform=tf, loader=_pil_loader, skip_bad=skip_bad)


def _collate_skipping(batch):
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, labels = torch.utils.data.default_collate(kept)
    return images, labels, skipped


class ImageNetLoader:
    """DataLoader over an ImageNet split for this process (train: shuffled by (seed, epoch), drop_last)."""

    def __init__(self, cfg: dict, split: str, rank: int, world: int, seed: int, pin_memory: bool = False):
        root = Path(cfg["root"])
        train = split == "train"
        self.dataset = _imagenet_dataset(root, split, cfg["img_size"], cfg["augment"], cfg["skip_bad_images"])
        subset = cfg["train_subset" if train else "val_subset"]
        n = len(self.dataset) if subset is None else min(int(subset), len(self.dataset))
        if n == 0:
            raise FileNotFoundError(f"ImageNet {split} split at {root / split} holds no images; expected {IMAGENET_LAYOUT}")
        self.sampler = _ShardSampler(n, rank, world, train, seed, drop_last=train)
        per_rank = max(cfg["batch_size"] // world, 1)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=per_rank, sampler=self.sampler, num_workers=cfg["workers"],
            collate_fn=_collate_skipping, pin_memory=pin_memory, drop_last=train,
            persistent_workers=cfg["workers"] > 0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


class FashionMNISTLoader:
    """Fashion-MNIST batches from memory, [B, 1, 28, 28] normalised; train: random 2-pixel shifts and
    horizontal flips drawn from a (seed, epoch) generator; ``subset`` takes a fixed random subset."""

    def __init__(self, cfg: dict, split: str, rank: int, world: int, seed: int):
        images, labels = load_fashion_mnist("train" if split == "train" else "test")
        self.train = split == "train"
        subset = cfg["train_subset" if self.train else "val_subset"]
        if subset is not None and int(subset) < len(labels):
            # A fixed subset (independent of the run seed), so every run of a grid sees the same images.
            pick = np.random.default_rng(12345).permutation(len(labels))[: int(subset)]
            images, labels = images[np.sort(pick)], labels[np.sort(pick)]
        self.images = torch.from_numpy(np.array(images, copy=True)).unsqueeze(1)
        self.labels = torch.from_numpy(labels)
        self.augment = bool(cfg["augment"]) and self.train
        self.batch = max(cfg["batch_size"] // world, 1) if self.train else 500
        self.sampler = _ShardSampler(len(self.labels), rank, world, self.train, seed, drop_last=self.train)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch if self.train else -(-n // self.batch)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
        dx, dy = torch.randint(0, 5, (b,), generator=g), torch.randint(0, 5, (b,), generator=g)
        flip = torch.rand(b, generator=g) < 0.5
        out = torch.empty_like(x)
        for i in range(b):
            crop = padded[i, :, dy[i]: dy[i] + 28, dx[i]: dx[i] + 28]
            out[i] = crop.flip(-1) if flip[i] else crop
        return out

    def __iter__(self):
        idx = torch.tensor(self.sampler._indices(), dtype=torch.long)
        g = torch.Generator().manual_seed(self.seed * 7919 + self.sampler.epoch + 1)
        for start in range(0, len(self) * self.batch, self.batch):
            sel = idx[start: start + self.batch]
            x = self.images[sel].float().div_(255.0)
            if self.augment:
                x = self._augment(x, g)
            yield (x - FMNIST_MEAN) / FMNIST_STD, self.labels[sel], 0


def build_loaders(cfg: dict, rank: int, world: int, seed: int, pin_memory: bool = False, device="cpu"):
    """(train_loader, val_loader, num_classes, in_chans, input_size) for ``cfg['data']``. ImageNet with
    ``data.decode: gpu`` decodes and augments on ``device`` (the training device; see gpu_loader.py)."""
    data = cfg["data"]
    if data["dataset"] == "imagenet":
        classes = check_imagenet_root(data["root"])
        if data["decode"] == "gpu":
            from nm_plugins.train.gpu_loader import DeviceImageNetLoader
            train = DeviceImageNetLoader(data, "train", rank, world, seed, device)
            val = DeviceImageNetLoader(data, "val", rank, world, seed, device)
        else:
            train = ImageNetLoader(data, "train", rank, world, seed, pin_memory)
            val = ImageNetLoader(data, "val", rank, world, seed, pin_memory)
        return train, val, len(classes), 3, (1, 3, data["img_size"], data["img_size"])
    train = FashionMNISTLoader(data, "train", rank, world, seed)
    val = FashionMNISTLoader(data, "test", rank, world, seed)
    return train, val, 10, 1, (1, 1, 28, 28)

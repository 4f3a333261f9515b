"""ImageNet batches decoded and augmented on the training device (``data.decode: gpu``).

DataLoader workers only read the JPEG files' bytes; the process then decodes a whole batch at once with
``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA, libjpeg on the CPU) and applies the
paper's recipe on that device: train = RandomResizedCrop(img_size, scale (0.08, 1), ratio (3/4, 4/3)),
horizontal flip (p 0.5), AlexNet PCA lighting (std 0.1), normalise; val = resize of the shorter side to
img_size * 256/224 and a centre crop. Crop boxes are drawn exactly as torchvision's
``RandomResizedCrop.get_params`` draws them, from a generator seeded by (seed, epoch, rank), so a resumed
run sees the same crops. Resizing is bilinear with antialiasing (as torchvision's resize of tensors and
PIL's); files that are not JPEGs or that nvJPEG refuses (PNG, CMYK) are decoded on the CPU by
``torchvision.io.decode_image`` and moved. On a CPU device the same code runs on the CPU. Batches are
prepared ``depth`` ahead in a background thread (on its own CUDA stream), so that decoding overlaps the
training step instead of adding to it.
"""
from __future__ import annotations

import contextlib
import math
import queue
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from nm_plugins.train.imagenet import (IMAGENET_LAYOUT, IMAGENET_MEAN, IMAGENET_STD, Lighting, UnreadableImageError,
                                     _ShardSampler)

SCALE, RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)


def rrc_params(height: int, width: int, g: torch.Generator, scale=SCALE, ratio=RATIO) -> tuple:
    """(top, left, h, w) of a RandomResizedCrop box: torchvision's ``get_params`` algorithm and draw order,
    from the generator ``g`` (10 tries, then the central crop of the closest allowed aspect ratio)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_crop(img: torch.Tensor, box: tuple, size: tuple) -> torch.Tensor:
    """uint8 [3, H, W] -> float [3, *size] in 0..255: the ``box`` (top, left, h, w) resized bilinearly with
    antialiasing."""
    i, j, h, w = box
    crop = img[:, i:i + h, j:j + w].unsqueeze(0).float()
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def val_box(height: int, width: int, img_size: int) -> tuple:
    """The box of the original image that resize(shorter side -> img_size*256/224) + centre crop keeps,
    and the resized size: ((top, left, h, w) in resized pixels, (new_h, new_w))."""
    short = int(round(img_size * 256 / 224))
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_w, new_h = short, int(short * height / width)
    top, left = int(round((new_h - img_size) / 2.0)), int(round((new_w - img_size) / 2.0))
    return (top, left, img_size, img_size), (new_h, new_w)


class JpegBytes(torch.utils.data.Dataset):
    """An ImageNet split's files as raw bytes: item = (uint8 1-D tensor, label, path)."""

    def __init__(self, folder: Path):
        self.folder = datasets.ImageFolder(str(folder), loader=lambda p: p)  # lists files, reads nothing
        self.samples = self.folder.samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), label, path


def collate_bytes(batch):
    """(list of byte tensors, labels, paths)."""
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch], dtype=torch.long), [b[2] for b in batch]


def decode_batch(data: list, paths: list, device: torch.device, skip_bad: bool):
    """Decode a batch on ``device``: (list of uint8 [3, H, W], kept indices). A file neither decoder reads
    raises UnreadableImageError naming it, or is dropped when ``skip_bad``."""
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device), list(range(len(data)))
    except Exception:  # a file nvJPEG/libjpeg refuses: decode one by one to find it
        pass
    images, kept = [], []
    for k, (d, path) in enumerate(zip(data, paths)):
        try:
            try:
                img = decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
            except Exception:
                img = decode_image(d, mode=ImageReadMode.RGB).to(device)
        except Exception as e:
            if skip_bad:
                continue
            raise UnreadableImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
        images.append(img)
        kept.append(k)
    return images, kept


class DeviceAugment:
    """The recipe applied on the images' device: ``(list of uint8 [3, H, W], generator) -> float [B, 3, S, S]``
    normalised (train: random crop, flip, lighting; val: resize + centre crop)."""

    def __init__(self, img_size: int, train: bool, mean, std):
        self.size, self.train = img_size, train
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.eigval, self.eigvec, self.light_std = Lighting.EIGVAL, Lighting.EIGVEC, 0.1

    def __call__(self, images: list, g: torch.Generator) -> torch.Tensor:
        out = []
        for img in images:
            _, h, w = img.shape
            if self.train:
                x = resize_crop(img, rrc_params(h, w, g), (self.size, self.size))
                if torch.rand(1, generator=g).item() < 0.5:
                    x = x.flip(-1)
            else:
                box, new = val_box(h, w, self.size)
                x = F.interpolate(img.unsqueeze(0).float(), size=new, mode="bilinear", align_corners=False,
                                  antialias=True)[0]
                x = x[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
            out.append(x)
        x = torch.stack(out).div_(255.0)
        device = x.device
        if self.train:  # PCA lighting: one alpha per image, as Lighting draws it
            alpha = torch.randn(len(out), 3, generator=g) * self.light_std
            rgb = (self.eigvec.unsqueeze(0) * alpha.unsqueeze(1) * self.eigval).sum(2)  # [B, 3]
            x = x + rgb.to(device).view(-1, 3, 1, 1)
        return (x - self.mean.to(device)) / self.std.to(device)


class DeviceImageNetLoader:
    """ImageNet split for this process with decoding and augmentation on ``device``: the same interface,
    sharding, (seed, epoch) order and batch size as ``ImageNetLoader``; batches come out on ``device``."""

    def __init__(self, cfg: dict, split: str, rank: int, world: int, seed: int, device, pin_memory: bool = False):
        root = Path(cfg["root"])
        self.train = split == "train"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # the background thread sets it explicitly
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dataset = JpegBytes(root / split)
        subset = cfg["train_subset" if self.train else "val_subset"]
        n = len(self.dataset) if subset is None else min(int(subset), len(self.dataset))
        if n == 0:
            raise FileNotFoundError(f"ImageNet {split} split at {root / split} holds no images; expected {IMAGENET_LAYOUT}")
        self.sampler = _ShardSampler(n, rank, world, self.train, seed, drop_last=self.train)
        self.skip_bad, self.seed, self.rank = cfg["skip_bad_images"], seed, rank
        self.augment = DeviceAugment(cfg["img_size"], self.train and cfg["augment"], IMAGENET_MEAN, IMAGENET_STD)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=max(cfg["batch_size"] // world, 1), sampler=self.sampler,
            num_workers=cfg["workers"], collate_fn=collate_bytes, drop_last=self.train,
            persistent_workers=cfg["workers"] > 0, prefetch_factor=4 if cfg["workers"] > 0 else None)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return prefetched(self._batches(), self.device, depth=2)

    def _batches(self):
        g = torch.Generator().manual_seed((self.seed * 100003 + self.sampler.epoch) * 1009 + self.rank + 1)
        for data, labels, paths in self.loader:
            images, kept = decode_batch(data, paths, self.device, self.skip_bad)
            skipped = len(data) - len(kept)
            if not kept:
                yield torch.empty(0), torch.empty(0, dtype=torch.long), skipped
                continue
            yield self.augment(images, g), labels[kept].to(self.device, non_blocking=True), skipped


def prefetched(source, device: torch.device, depth: int = 2):
    """Iterate ``source`` (batches of tensors) in a background thread, ``depth`` batches ahead; on CUDA the
    thread works on its own stream and each batch is handed over with an event (and ``record_stream``), so
    the training stream waits for exactly that batch. An exception in the thread is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            if side is not None:
                torch.cuda.set_device(device)
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for batch in source:
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not put(("batch", batch, event)):
                        return
        except BaseException as exc:  # handed to the consumer
            put(("error", exc, None))
            return
        put(("end", None, None))

    thread = threading.Thread(target=produce, name="nm-device-loader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item, event = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for t in item:
                    if isinstance(t, torch.Tensor) and t.is_cuda:
                        t.record_stream(current)
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)

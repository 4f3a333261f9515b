"""FlyingChairs-like synthetic flow pairs: textured Fashion-MNIST objects moving by random affine motions
over a moving textured background, with exact dense ground-truth flow and a valid (visible) mask.

Every layer (background, then objects back to front) is a texture placed in the image by an affine map
A_t (texel -> pixel) per frame t. Frame t is rendered by inverse warping; the flow at pixel p of frame 1 is
A_2 A_1^-1 p - p for the front-most layer at p. ``valid`` marks pixels whose point lands inside frame 2 on
the same (unoccluded) layer. Samples are a deterministic function of (seed, split, index) and are cached
under ``data/raft_proxy/``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nm_plugins.data import load_fashion_mnist
from nm_plugins.runtime.project import project_root

CACHE_VERSION = 2
DEFAULT_CACHE_DIR = Path(os.environ.get("RAFT_PROXY_DIR", project_root() / "data" / "raft_proxy"))
_SPLIT_SOURCE = {"train": "train", "val": "test"}  # val objects come from Fashion-MNIST's test split


def _smooth_noise(rng: np.random.Generator, channels: int, size: int, octaves=(4, 8, 16, 32),
                  falloff: float = 1.6) -> torch.Tensor:
    """A [channels, size, size] texture in [0, 1]: random noise at a few resolutions, upsampled and summed
    (octave i weighted falloff**-i)."""
    out = torch.zeros(1, channels, size, size)
    for i, res in enumerate(octaves):
        noise = torch.from_numpy(rng.random((1, channels, res, res), dtype=np.float32))
        out += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False) / (falloff ** i)
    out -= out.amin(dim=(2, 3), keepdim=True)
    out /= out.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return out[0]


def _affine(scale: float, angle: float, centre_texel, position) -> np.ndarray:
    """3x3 matrix mapping texel (u, v) to pixel (x, y): rotate/scale about ``centre_texel``, put at ``position``."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    cu, cv = centre_texel
    return np.array([[c, -s, position[0] - c * cu + s * cv],
                     [s, c, position[1] - s * cu - c * cv],
                     [0.0, 0.0, 1.0]])


def _motion(rng, centre, max_shift: float, max_angle: float, max_zoom: float) -> np.ndarray:
    """A random small affine motion (pixel -> pixel) about ``centre``: rotation, zoom, translation."""
    angle = math.radians(rng.uniform(-max_angle, max_angle))
    zoom = 2.0 ** rng.uniform(-max_zoom, max_zoom)
    shift = rng.uniform(-max_shift, max_shift, size=2)
    return _affine(zoom, angle, centre, (centre[0] + shift[0], centre[1] + shift[1]))


def _sample(texture: torch.Tensor, inv: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """Sample ``texture`` [C, h, w] at A^-1 p for every pixel p of a size x size frame (zeros outside)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    inv_t = torch.from_numpy(inv)
    u = inv_t[0, 0] * xs + inv_t[0, 1] * ys + inv_t[0, 2]
    v = inv_t[1, 0] * xs + inv_t[1, 1] * ys + inv_t[1, 2]
    h, w = texture.shape[-2:]
    grid = torch.stack([2 * u / (w - 1) - 1, 2 * v / (h - 1) - 1], dim=-1).float()[None]
    return F.grid_sample(texture[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]


def _objects(split: str):
    images, _ = load_fashion_mnist(_SPLIT_SOURCE[split])
    return images


def render_pair(index: int, split: str = "train", size: int = 128, seed: int = 0, objects=None) -> dict:
    """One synthetic pair: ``img1``, ``img2`` float [3, size, size] in [0, 1], ``flow`` float32 [2, size, size]
    (x, y displacement from frame 1 to frame 2), ``valid`` bool [size, size], ``layers`` int [size, size]."""
    if split not in _SPLIT_SOURCE:
        raise ValueError(f"proxy split must be 'train' or 'val', got {split!r}")
    if size < 32:
        raise ValueError(f"proxy frame size must be >= 32 pixels, got {size}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    objects = _objects(split) if objects is None else objects
    centre = (size / 2, size / 2)
    # Background: a textured canvas twice the frame, slowly moving.
    bg_size = 2 * size
    bg = _smooth_noise(rng, 3, bg_size, octaves=(4, 8, 16, 32, 64, 128), falloff=1.25)  # detail to match
    a1 = _affine(1.0, math.radians(rng.uniform(-10, 10)), (bg_size / 2, bg_size / 2), centre)
    layers = [(bg, torch.ones(1, bg_size, bg_size), a1, _motion(rng, centre, 0.04 * size, 3.0, 0.05) @ a1)]
    for _ in range(int(rng.integers(3, 7))):
        item = torch.from_numpy(objects[int(rng.integers(len(objects)))].astype(np.float32) / 255.0)[None, None]
        item = F.interpolate(item, size=(56, 56), mode="bilinear", align_corners=True)[0]
        colour = torch.from_numpy(rng.uniform(0.15, 1.0, size=(3, 1, 1)).astype(np.float32))
        texture = (item * (0.55 * colour + 0.45 * _smooth_noise(rng, 3, 56, octaves=(3, 7, 14, 28), falloff=1.25))).clamp(0, 1)
        alpha = (item > 0.12).float()
        position = rng.uniform(0.1 * size, 0.9 * size, size=2)
        a1 = _affine(rng.uniform(0.6, 1.3) * size / 128, rng.uniform(-math.pi, math.pi), (27.5, 27.5), position)
        layers.append((texture, alpha, a1, _motion(rng, position, 0.08 * size, 15.0, 0.12) @ a1))
    frames, ids = [], []
    for t in (2, 3):  # index of A_t in the layer tuples
        img = torch.zeros(3, size, size)
        layer_id = torch.zeros(size, size, dtype=torch.long)
        for k, layer in enumerate(layers):
            inv = np.linalg.inv(layer[t])
            colour = _sample(layer[0], inv, size, "bilinear")
            cover = _sample(layer[1], inv, size, "bilinear")[0] > 0.5
            img = torch.where(cover, colour, img)
            layer_id[cover] = k
        frames.append(img)
        ids.append(layer_id)
    # Flow of frame 1: per layer, p' = A2 A1^-1 p.
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    flow = torch.zeros(2, size, size, dtype=torch.float64)
    for k, layer in enumerate(layers):
        m = torch.from_numpy(layer[3] @ np.linalg.inv(layer[2]))
        here = ids[0] == k
        flow[0][here] = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs)[here]
        flow[1][here] = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys)[here]
    # Valid: the target point is inside frame 2 and all four pixels around it show the same layer there.
    tx, ty = xs + flow[0], ys + flow[1]
    valid = (tx >= 0) & (tx <= size - 1) & (ty >= 0) & (ty <= size - 1)
    x0, y0 = tx.floor().clamp(0, size - 1).long(), ty.floor().clamp(0, size - 1).long()
    x1, y1 = (x0 + 1).clamp(max=size - 1), (y0 + 1).clamp(max=size - 1)
    for yy, xx in ((y0, x0), (y0, x1), (y1, x0), (y1, x1)):
        valid &= ids[1][yy, xx] == ids[0]
    return {"img1": frames[0], "img2": frames[1], "flow": flow.float(), "valid": valid, "layers": ids[0]}


def cache_path(split: str, count: int, size: int, seed: int, cache_dir=None) -> Path:
    """Where :func:`generate` caches ``count`` samples of ``split``."""
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    return root / f"v{CACHE_VERSION}_{split}_n{count}_s{size}_seed{seed}.pt"


def generate(split: str, count: int, size: int = 128, seed: int = 0, cache_dir=None, progress: bool = False) -> dict:
    """The first ``count`` samples of ``split`` as uint8 images [N, 3, H, W], float16 flow [N, 2, H, W] and bool
    valid [N, H, W]; read from the cache when present, else rendered and cached (atomic write)."""
    if count < 1:
        raise ValueError(f"proxy sample count must be >= 1, got {count}")
    path = cache_path(split, count, size, seed, cache_dir)
    larger = sorted((int(p.name.split("_n")[1].split("_")[0]), p)
                    for p in path.parent.glob(f"v{CACHE_VERSION}_{split}_n*_s{size}_seed{seed}.pt"))
    for n, found in larger:  # samples depend only on their index: a larger cache holds the first `count`
        if n >= count:
            data = torch.load(found, weights_only=True)
            return {k: v[:count] for k, v in data.items()}
    objects = _objects(split)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threading only adds overhead (about 6x here)
    try:
        data = _render_all(split, count, size, seed, objects, progress)
    finally:
        torch.set_num_threads(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def _render_all(split: str, count: int, size: int, seed: int, objects, progress: bool) -> dict:
    img1 = torch.empty(count, 3, size, size, dtype=torch.uint8)
    img2 = torch.empty_like(img1)
    flow = torch.empty(count, 2, size, size, dtype=torch.float16)
    valid = torch.empty(count, size, size, dtype=torch.bool)
    indices = range(count)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=f"render proxy {split}", leave=False)
    for i in indices:
        s = render_pair(i, split, size, seed, objects)
        img1[i] = (s["img1"] * 255).round().to(torch.uint8)
        img2[i] = (s["img2"] * 255).round().to(torch.uint8)
        flow[i] = s["flow"].half()
        valid[i] = s["valid"]
    return {"img1": img1, "img2": img2, "flow": flow, "valid": valid}


class ProxyFlowDataset(Dataset):
    """The synthetic set as a torch Dataset of (img1, img2, flow, valid): images float [3, H, W] in [-1, 1]
    after ``transforms`` (a callable on uint8 images, flow, valid — see :mod:`nm_plugins.raft.augment`)."""

    def __init__(self, split: str = "train", count: int = 1000, size: int = 128, seed: int = 0, transforms=None,
                 cache_dir=None):
        self.data = generate(split, count, size, seed, cache_dir, progress=True)
        self.transforms = transforms

    def __len__(self) -> int:
        return self.data["img1"].shape[0]

    def __getitem__(self, i: int):
        img1, img2 = self.data["img1"][i], self.data["img2"][i]
        flow, valid = self.data["flow"][i].float(), self.data["valid"][i]
        if self.transforms is not None:
            return self.transforms(img1, img2, flow, valid)
        return img1.float() / 127.5 - 1.0, img2.float() / 127.5 - 1.0, flow, valid

"""The embedded COCO proxy: a COCO-format detection + instance-segmentation dataset composed from
Fashion-MNIST objects pasted at several scales on textured canvases (10 categories, RLE masks).

Entry point of ``make coco-proxy-data``::

    python -m nm_plugins.mmdet.proxy_data [--root data/coco_fmnist] [--train 1000] [--val 200] [--size 96]

Deterministic: the same arguments give byte-identical files; an existing dataset written with the same
arguments is reused (cached). Train objects come from Fashion-MNIST's train split, val objects from its
test split. Layout (what mmdetection's ``CocoDataset`` reads)::

    ROOT/annotations/instances_{train,val}.json   ROOT/{train,val}/000000.png ...
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from nm_plugins.data import FASHION_MNIST_CLASSES, load_fashion_mnist

DEFAULT_ROOT = "data/coco_fmnist"
FORMAT_VERSION = 1
MASK_THRESHOLD = 40  # object pixels: Fashion-MNIST intensity above this (out of 255) after resizing


def proxy_root() -> Path:
    """Where the proxy lives: ``$COCO_PROXY_ROOT`` or ``data/coco_fmnist`` (relative to the working dir)."""
    return Path(os.environ.get("COCO_PROXY_ROOT", DEFAULT_ROOT))


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth coloured background: low-frequency noise plus faint stripes, uint8 [size, size, 3]."""
    coarse = rng.uniform(0, 1, (size // 16 + 2, size // 16 + 2, 3))
    idx = np.linspace(0, coarse.shape[0] - 1.001, size)
    i0 = idx.astype(int)
    f = (idx - i0)[:, None, None]
    rows = coarse[i0] * (1 - f) + coarse[i0 + 1] * f                    # [size, cw, 3]
    g = (idx - i0)[None, :, None]
    smooth = rows[:, i0] * (1 - g) + rows[:, i0 + 1] * g                # [size, size, 3]
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    base = rng.uniform(40, 140, 3)
    img = base + 70 * (smooth - 0.5) + 25 * (stripes[..., None] - 0.5) + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _resize(obj: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a square uint8 image to ``side`` x ``side`` (numpy only)."""
    src = obj.astype(np.float32)
    pos = (np.arange(side) + 0.5) * (src.shape[0] / side) - 0.5
    pos = np.clip(pos, 0, src.shape[0] - 1)
    p0 = np.floor(pos).astype(int)
    p1 = np.minimum(p0 + 1, src.shape[0] - 1)
    w = (pos - p0).astype(np.float32)
    rows = src[p0] * (1 - w)[:, None] + src[p1] * w[:, None]
    out = rows[:, p0] * (1 - w)[None, :] + rows[:, p1] * w[None, :]
    return np.clip(out, 0, 255).astype(np.uint8)


def _encode_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def compose_split(images: np.ndarray, labels: np.ndarray, num_images: int, size: int, seed: int,
                  objects=(2, 4), scales=(0.22, 0.5)) -> tuple[list, list]:
    """Compose ``num_images`` canvases; returns (list of uint8 [size, size, 3] images, COCO annotations
    per image as lists of dicts with ``bbox`` [x, y, w, h], ``category_id`` (1..10), ``segmentation`` RLE,
    ``area``). Objects do not overlap, so every mask is the whole visible object."""
    rng = np.random.default_rng(seed)
    out_images, out_anns = [], []
    for _ in range(num_images):
        canvas = _texture(rng, size).astype(np.float32)
        taken = np.zeros((size, size), dtype=bool)
        anns = []
        for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
            for _attempt in range(20):
                side = int(round(size * rng.uniform(*scales)))
                x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
                if not taken[max(y - 2, 0):y + side + 2, max(x - 2, 0):x + side + 2].any():
                    break
            else:
                continue
            k = int(rng.integers(len(images)))
            obj = _resize(images[k], side)
            mask = obj > MASK_THRESHOLD
            if mask.sum() < 16:
                continue
            color = rng.uniform(150, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 255, 3)
            alpha = (obj.astype(np.float32) / 255.0)[..., None]
            region = canvas[y:y + side, x:x + side]
            canvas[y:y + side, x:x + side] = np.where(mask[..., None], region * (1 - alpha) + color * alpha, region)
            full = np.zeros((size, size), dtype=bool)
            full[y:y + side, x:x + side] = mask
            taken[y:y + side, x:x + side] = True
            ys, xs = np.nonzero(full)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            anns.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": int(labels[k]) + 1,
                         "segmentation": _encode_rle(full), "area": int(full.sum()), "iscrowd": 0})
        out_images.append(np.clip(canvas, 0, 255).astype(np.uint8))
        out_anns.append(anns)
    return out_images, out_anns


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2  # opencv ships with mmcv
    if not cv2.imwrite(str(path), img[..., ::-1]):
        raise OSError(f"could not write {path}")


def _spec(num_train: int, num_val: int, size: int, seed: int) -> dict:
    return {"format_version": FORMAT_VERSION, "train": num_train, "val": num_val, "size": size, "seed": seed}


def generate(root: "str | Path | None" = None, num_train: int = 1000, num_val: int = 200, size: int = 96,
             seed: int = 0, force: bool = False) -> Path:
    """Write the proxy dataset under ``root`` (default :func:`proxy_root`) unless it is already there
    with the same settings; returns the root."""
    root = Path(root) if root is not None else proxy_root()
    spec = _spec(num_train, num_val, size, seed)
    stamp = root / "proxy_spec.json"
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return root
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(FASHION_MNIST_CLASSES)]
    for split, source, count, split_seed in (("train", "train", num_train, seed), ("val", "test", num_val, seed + 1)):
        fm_images, fm_labels = load_fashion_mnist(source)
        imgs, anns = compose_split(fm_images, fm_labels, count, size, split_seed)
        (root / split).mkdir(exist_ok=True)
        coco = {"info": {"description": f"Fashion-MNIST COCO proxy ({split})", **spec}, "licenses": [],
                "categories": categories, "images": [], "annotations": []}
        for i, (img, img_anns) in enumerate(zip(imgs, anns)):
            name = f"{i:06d}.png"
            _write_png(root / split / name, img)
            coco["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for a in img_anns:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, **a})
        tmp = root / "annotations" / f".instances_{split}.json.tmp"
        tmp.write_text(json.dumps(coco))
        os.replace(tmp, root / "annotations" / f"instances_{split}.json")
    stamp.write_text(json.dumps(spec))
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help=f"output folder (default $COCO_PROXY_ROOT or {DEFAULT_ROOT})")
    parser.add_argument("--train", type=int, default=1000, help="number of train images")
    parser.add_argument("--val", type=int, default=200, help="number of val images")
    parser.add_argument("--size", type=int, default=96, help="canvas side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite even when a matching dataset exists")
    args = parser.parse_args(argv)
    root = generate(args.root, args.train, args.val, args.size, args.seed, args.force)
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        print(f"{split}: {len(data['images'])} images, {len(data['annotations'])} objects -> {root / split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

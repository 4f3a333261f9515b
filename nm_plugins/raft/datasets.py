"""Optical-flow datasets for training and evaluation: FlyingChairs, FlyingThings3D, Sintel, KITTI-2015, HD1K
through torchvision.datasets at roots given by environment variables, and the embedded synthetic proxy."""
from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets as tvd

from .augment import EvalTransform, FlowAugment
from .proxy import ProxyFlowDataset

ROOT_ENV = {"chairs": "CHAIRS_ROOT", "things": "THINGS_ROOT", "sintel": "SINTEL_ROOT", "kitti": "KITTI_ROOT",
            "hd1k": "HD1K_ROOT"}
LAYOUT = {
    "chairs": "$CHAIRS_ROOT/FlyingChairs/data/*.ppm and *.flo, plus $CHAIRS_ROOT/FlyingChairs/FlyingChairs_train_val.txt",
    "things": "$THINGS_ROOT/FlyingThings3D/frames_cleanpass|frames_finalpass/TRAIN/*/*/left|right/*.png and "
              "$THINGS_ROOT/FlyingThings3D/optical_flow/TRAIN/*/*/into_future|into_past/left|right/*.pfm",
    "sintel": "$SINTEL_ROOT/Sintel/training/clean|final/<scene>/*.png and $SINTEL_ROOT/Sintel/training/flow/<scene>/*.flo",
    "kitti": "$KITTI_ROOT/KittiFlow/training/image_2/*_10.png, *_11.png and $KITTI_ROOT/KittiFlow/training/flow_occ/*_10.png",
    "hd1k": "$HD1K_ROOT/hd1k/hd1k_input/image_2/*.png and $HD1K_ROOT/hd1k/hd1k_flow_gt/flow_occ/*.png",
}
_PROBE = {"chairs": "FlyingChairs", "things": "FlyingThings3D", "sintel": "Sintel", "kitti": "KittiFlow", "hd1k": "hd1k"}


def dataset_root(name: str) -> Path:
    """The root of dataset ``name`` from its environment variable; a clear error when unset or wrongly laid out."""
    if name not in ROOT_ENV:
        raise ValueError(f"unknown optical-flow dataset {name!r}: expected one of {', '.join(ROOT_ENV)} or 'proxy'")
    var = ROOT_ENV[name]
    value = os.environ.get(var)
    if not value:
        raise FileNotFoundError(f"{var} is not set: point it at the folder holding {_PROBE[name]}/ "
                                f"(expected layout: {LAYOUT[name]})")
    root = Path(value)
    if not (root / _PROBE[name]).is_dir():
        raise FileNotFoundError(f"{var}={root} does not hold a {_PROBE[name]}/ folder "
                                f"(expected layout: {LAYOUT[name]})")
    return root


def available(name: str) -> bool:
    """Whether dataset ``name``'s root variable is set and points at the expected folder."""
    try:
        dataset_root(name)
        return True
    except FileNotFoundError:
        return False


def _checked(ds: Dataset, name: str) -> Dataset:
    if len(ds) == 0:
        raise FileNotFoundError(f"{ROOT_ENV[name]}={os.environ[ROOT_ENV[name]]} holds no samples for {name} "
                                f"(expected layout: {LAYOUT[name]})")
    return ds


def _tv(name: str, split: str, transforms, pass_name: str = "clean") -> Dataset:
    root = dataset_root(name)
    if name == "chairs":
        return _checked(tvd.FlyingChairs(root, split=split, transforms=transforms), name)
    if name == "things":
        return _checked(tvd.FlyingThings3D(root, split=split, pass_name=pass_name, camera="both", transforms=transforms),
                        name)
    if name == "sintel":
        return _checked(tvd.Sintel(root, split=split, pass_name=pass_name, transforms=transforms), name)
    if name == "kitti":
        return _checked(tvd.KittiFlow(root, split=split, transforms=transforms), name)
    return _checked(tvd.HD1K(root, split=split, transforms=transforms), name)


def train_set(stage: str, crop, proxy: dict | None = None) -> Dataset:
    """The training mixture of a RAFT stage (``chairs``, ``things``, ``sintel``, ``kitti`` or ``proxy``) with
    the standard augmentation ranges of the RAFT recipe; ``proxy`` takes {count, size, seed, cache_dir}."""
    if stage == "proxy":
        p = dict(proxy or {})
        aug = FlowAugment(crop, spatial=False, eraser=False, do_flip=True)
        return ProxyFlowDataset("train", p.get("count", 1000), p.get("size", 128), p.get("seed", 0), transforms=aug,
                                cache_dir=p.get("cache_dir"))
    if stage == "chairs":
        return _tv("chairs", "train", FlowAugment(crop, -0.1, 1.0))
    if stage == "things":
        return _tv("things", "train", FlowAugment(crop, -0.4, 0.8), pass_name="both")
    if stage == "sintel":  # RAFT's C+T+K+S+H mixture; KITTI and HD1K join when their roots are set
        parts = [_tv("things", "train", FlowAugment(crop, -0.4, 0.8), pass_name="clean")]
        sintel_aug = FlowAugment(crop, -0.2, 0.6)
        for pass_name in ("clean", "final"):
            parts += [_tv("sintel", "train", sintel_aug, pass_name=pass_name)] * 100
        if available("kitti"):
            parts += [_tv("kitti", "train", FlowAugment(crop, -0.3, 0.5, do_flip=False, sparse=True))] * 200
        if available("hd1k"):
            parts += [_tv("hd1k", "train", FlowAugment(crop, -0.5, 0.2, do_flip=False, sparse=True))] * 5
        return ConcatDataset(parts)
    if stage == "kitti":
        return _tv("kitti", "train", FlowAugment(crop, -0.2, 0.4, do_flip=False, sparse=True))
    raise ValueError(f"unknown RAFT training stage {stage!r}: expected chairs, things, sintel, kitti or proxy")


def val_set(name: str, proxy: dict | None = None) -> Dataset:
    """An evaluation set: ``chairs`` (val split), ``sintel_clean`` / ``sintel_final`` (train split),
    ``kitti`` (train split) or ``proxy`` (val split, {val_count, size, seed, cache_dir})."""
    if name == "proxy":
        p = dict(proxy or {})
        return ProxyFlowDataset("val", p.get("val_count", 100), p.get("size", 128), p.get("seed", 0),
                                cache_dir=p.get("cache_dir"))
    if name == "chairs":
        return _tv("chairs", "val", EvalTransform())
    if name in ("sintel_clean", "sintel_final"):
        return _tv("sintel", "train", EvalTransform(), pass_name=name.split("_")[1])
    if name == "kitti":
        return _tv("kitti", "train", EvalTransform())
    raise ValueError(f"unknown evaluation set {name!r}: expected chairs, sintel_clean, sintel_final, kitti or proxy")

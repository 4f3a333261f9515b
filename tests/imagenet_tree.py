"""A small ImageNet class-folder tree of JPEGs for the tests (``root/{train,val}/<class>/*.JPEG``)."""
from pathlib import Path

import numpy as np
from PIL import Image


def write_imagenet(root: Path, classes=("n01", "n02", "n03"), per_class=(6, 2), size=(40, 48)) -> Path:
    """Class folders of smooth random JPEGs of ``size`` (h, w); ``per_class``: (train, val) images per class;
    the classes differ in brightness, so a model can learn them."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                base = rng.integers(0, 60, (size[0] // 4, size[1] // 4, 3)).astype(np.uint8) + 60 * c
                img = Image.fromarray(base).resize((size[1], size[0]), Image.BILINEAR)
                img.save(d / f"img{i}.JPEG", format="JPEG", quality=95)
    return root

"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (or ``FASHION_MNIST_DIR``), read with numpy."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def fashion_mnist_dir() -> Path:
    """Folder holding the four IDX files: ``$FASHION_MNIST_DIR`` or Debian's install location."""
    root = Path(os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR))
    if not (root / (_FILES["train"][0] + ".gz")).exists() and not (root / _FILES["train"][0]).exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}: expected {_FILES['train'][0]}[.gz] and the other IDX files there. "
            "Install Debian's package (apt-get install dataset-fashion-mnist; `make install` does) "
            "or set FASHION_MNIST_DIR to a folder holding the IDX files.")
    return root


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {arr.size} bytes")
    return arr.reshape(dims)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the ``train`` (60k) or ``test`` (10k) split."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = fashion_mnist_dir()
    out = []
    for name in _FILES[split]:
        path = root / (name + ".gz")
        out.append(_read_idx(path if path.exists() else root / name))
    images, labels = out
    return images, labels.astype(np.int64)

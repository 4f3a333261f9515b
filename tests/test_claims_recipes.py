"""Recipe conventions behind the claims: data.batch_size is the global batch for classification (split over
torchrun processes, an error when it does not divide), as the authors' 256 over 8 GPUs."""
from pathlib import Path

import pytest

from nm_plugins.train.config import load_config
from nm_plugins.train.data import FashionMNISTLoader

REPO = Path(__file__).resolve().parents[1]


def test_global_batch_must_divide_over_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"data.batch_size 256 is the global batch .* WORLD_SIZE=3"):
        load_config(REPO / "configs" / "imagenet" / "resnet50_srste_2_4.yaml")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert load_config(REPO / "configs" / "imagenet" / "resnet50_srste_2_4.yaml")["data"]["batch_size"] == 256


def test_global_batch_is_split_over_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml")
    loaders = [FashionMNISTLoader(cfg["data"], "train", rank, 2, seed=0) for rank in (0, 1)]
    batches = [next(iter(loader)) for loader in loaders]
    assert [b[0].shape[0] for b in batches] == [64, 64]  # 128 global = 2 x 64
    single = FashionMNISTLoader(cfg["data"], "train", 0, 1, seed=0)
    assert len(single) == len(loaders[0]) == len(loaders[1])  # the same optimizer steps per epoch as one process

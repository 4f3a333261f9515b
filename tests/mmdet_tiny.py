"""Shared pieces of the mmdet tests: a tiny COCO proxy, the options of a tiny run on it, the N:M hook."""
from pathlib import Path

import pytest

from nm_plugins.mmdet import NMSparsityHook
from nm_plugins.mmdet.proxy_data import generate


@pytest.fixture(scope="module")
def proxy_root(tmp_path_factory):
    """A COCO-format Fashion-MNIST proxy of 16 train and 8 val images (96x96)."""
    return generate(tmp_path_factory.mktemp("coco_proxy"), num_train=16, num_val=8, size=96, seed=0)


def tiny_options(root: Path, **extra) -> dict:
    """mmengine cfg options for a tiny run on ``root``: 8 train images (2 iterations of 4 per epoch), 8 val
    images, full lr from the first step (masks do move), the N:M hook and a checkpoint every iteration."""
    opts = {"train_dataloader.dataset.data_root": f"{root}/", "val_dataloader.dataset.data_root": f"{root}/",
            "test_dataloader.dataset.data_root": f"{root}/",
            "val_evaluator.ann_file": f"{root}/annotations/instances_val.json",
            "test_evaluator.ann_file": f"{root}/annotations/instances_val.json",
            "train_dataloader.dataset.indices": 8, "train_cfg.max_epochs": 1, "train_cfg.val_interval": 100,
            "param_scheduler.0.start_factor": 1.0,
            "custom_hooks.0.interval": 1, "default_hooks.logger.interval": 1,
            "default_hooks.checkpoint.interval": 1}
    opts.update(extra)
    return opts


def sparsity_hook(runner) -> NMSparsityHook:
    """The runner's NMSparsityHook."""
    return next(h for h in runner.hooks if isinstance(h, NMSparsityHook))

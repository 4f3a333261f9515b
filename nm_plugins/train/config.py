"""Trainer configuration: YAML file + ``section.key=value`` overrides over documented defaults."""
from __future__ import annotations

import copy
import os
from pathlib import Path

from nm_plugins.runtime.config import apply_override, check_method, merge_config, read_yaml

# Every key a classification config may set, with its default (the paper's ImageNet recipe).
DEFAULTS = {
    "name": "run",
    "model": {"name": "resnet50", "kwargs": {}, "checkpoint": None},
    # sparsity.method: any registered N:M method (nm_plugins.core.method_names()), its settings in method_args
    # sparsity.stem: dense | nm (channel groups, the last zero-padded) | authors (their flattened groups)
    "sparsity": {"method": "srste", "pattern": "2:4", "decay": 2.0e-4, "keep_classifier_dense": True,
                 "stem": "dense", "exclude": [], "asp_prune_epoch": None, "method_args": {}},
    # data.batch_size is the global batch, over all processes (each takes batch_size / WORLD_SIZE)
    "data": {"dataset": "imagenet", "root": None, "batch_size": 256, "workers": 8, "img_size": 224,
             "train_subset": None, "val_subset": None, "skip_bad_images": False, "augment": True,
             "decode": "cpu"},  # cpu: PIL in the loader workers; gpu: batched decode + augmentation on the device
    "optim": {"epochs": 120, "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5.0e-5,
              "warmup_epochs": 5, "label_smoothing": 0.0},
    "train": {"seed": 0, "device": "auto", "amp": True, "channels_last": True, "out_dir": None,
              "eval_every": 1, "stop_after_epoch": None, "threads": None, "progress": True,
              "checkpoint": True, "step_times": False},  # step_times: per-step seconds and loss in summary.json
}
DATASETS = ("imagenet", "fashion_mnist")


def load_config(path: "str | Path | None" = None, overrides=()) -> dict:
    """Defaults, then the YAML file (may name a ``base:`` file relative to itself), then overrides."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        config = merge_config(config, read_yaml(Path(path)), "")
    for item in overrides:
        config = apply_override(config, item)
    validate(config)
    return config


def validate(config: dict) -> None:
    """Raise ValueError naming the first setting that cannot work."""
    if config["data"]["dataset"] not in DATASETS:
        raise ValueError(f"config: data.dataset must be one of {', '.join(DATASETS)}, got {config['data']['dataset']!r}")
    if config["data"]["decode"] not in ("cpu", "gpu"):
        raise ValueError(f"config: data.decode must be cpu (PIL in the workers) or gpu (decode and augment on the "
                         f"training device), got {config['data']['decode']!r}")
    if config["data"]["decode"] == "gpu" and config["data"]["dataset"] != "imagenet":
        raise ValueError("config: data.decode=gpu applies to the imagenet dataset only (Fashion-MNIST is in memory)")
    check_method(config["sparsity"])
    if config["sparsity"]["stem"] not in ("dense", "nm", "authors"):
        raise ValueError(f"config: sparsity.stem must be dense, nm (N:M channel groups) or authors (N:M in the "
                         f"authors' flattened groups), got {config['sparsity']['stem']!r}")
    epochs = config["optim"]["epochs"]
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"config: optim.epochs must be a positive integer, got {epochs!r}")
    if config["sparsity"]["method"] == "asp":
        k = config["sparsity"]["asp_prune_epoch"]
        if not isinstance(k, int) or not 0 < k < epochs:
            raise ValueError(f"config: sparsity.asp_prune_epoch must be an integer in 1..{epochs - 1} "
                             f"(dense epochs before pruning), got {k!r}")
    if not isinstance(config["data"]["batch_size"], int) or config["data"]["batch_size"] < 1:
        raise ValueError(f"config: data.batch_size must be a positive integer, got {config['data']['batch_size']!r}")
    # data.batch_size is the GLOBAL batch: torchrun processes take batch_size / WORLD_SIZE each
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if config["data"]["batch_size"] % world:
        raise ValueError(f"config: data.batch_size {config['data']['batch_size']} is the global batch (split over "
                         f"all processes) and must be a multiple of WORLD_SIZE={world}")

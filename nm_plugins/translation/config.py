"""Translation configuration: YAML file (with ``base:``) + ``section.key=value`` overrides over defaults."""
from __future__ import annotations

import copy
from pathlib import Path

from nm_plugins.core import method_names
from nm_plugins.runtime.config import apply_override, check_method, merge_config, read_yaml

# Every key a translation config may set, with its default (Transformer-base on WMT14 En-De).
DEFAULTS = {
    "name": "run",
    "model": {"d_model": 512, "ffn": 2048, "heads": 8, "enc_layers": 6, "dec_layers": 6, "dropout": 0.1,
              "attn_dropout": 0.0, "pre_norm": False, "max_positions": 1024},
    "sparsity": {"method": "srste", "pattern": "2:4", "decay": 2.0e-4, "method_args": {}},
    "data": {"corpus": "wmt14_en_de", "root": None, "src": "en", "tgt": "de", "vocab_size": 32000,
             "max_tokens": 4096, "max_len": 250, "max_len_ratio": 1.5, "min_words": 2, "max_words": 10,
             "split_fractions": [0.02, 0.02],
             "packages": "configs/translation/catalogs_de.yaml", "catalog_root": "data/catalogs",
             "train_subset": None, "valid_subset": None, "test_subset": None, "cache_dir": "data/translation",
             "vocab_sentences": 2000000},
    "optim": {"max_steps": 100000, "lr": 7.0e-4, "warmup_steps": 4000, "betas": [0.9, 0.98], "eps": 1.0e-9,
              "weight_decay": 0.0, "label_smoothing": 0.1, "clip_norm": 0.0, "update_freq": 1},
    "train": {"seed": 0, "device": "auto", "amp": True, "out_dir": None, "log_every": 100, "eval_every": 5000,
              "ckpt_every": 1000, "keep_last": 5, "average_last": 5, "stop_after_step": None, "threads": None,
              "progress": True, "step_times": False},  # step_times: per-step seconds and loss in summary.json
    "decode": {"beam": 4, "lenpen": 0.6, "max_len_a": 1.0, "max_len_b": 50, "batch_sentences": 128,
               "examples": 5},
}
CORPORA = ("wmt14_en_de", "debian_catalogs")


def load_config(path: "str | Path | None" = None, overrides=()) -> dict:
    """Defaults, then the YAML file (its ``base:`` file underneath), then ``section.key=value`` overrides."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        config = merge_config(config, read_yaml(Path(path)))
    for item in overrides:
        config = apply_override(config, item)
    validate(config)
    return config


def validate(c: dict) -> None:
    """Raise ValueError naming the first setting that cannot work."""
    if c["data"]["corpus"] not in CORPORA:
        raise ValueError(f"config: data.corpus must be one of {', '.join(CORPORA)}, got {c['data']['corpus']!r}")
    # any registered method but asp (its prune step lives in the classification trainer only)
    check_method(c["sparsity"], allowed=[n for n in method_names() if n != "asp"])
    if {c["data"]["src"], c["data"]["tgt"]} != {"en", "de"}:
        raise ValueError(f"config: data.src/data.tgt must be en and de (either way), got {c['data']['src']!r}/{c['data']['tgt']!r}")
    for section, key in (("optim", "max_steps"), ("data", "max_tokens"), ("optim", "update_freq"), ("train", "ckpt_every"),
                         ("train", "eval_every"), ("train", "log_every"), ("decode", "beam"), ("model", "d_model")):
        v = c[section][key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config: {section}.{key} must be a positive integer, got {v!r}")
    for section, key in (("optim", "lr"), ("optim", "eps"), ("optim", "label_smoothing"), ("sparsity", "decay"),
                         ("model", "dropout"), ("decode", "lenpen")):
        v = c[section][key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"config: {section}.{key} must be a number >= 0, got {v!r} (YAML reads 3e-3 as text: write 3.0e-3)")
    if not isinstance(c["optim"]["warmup_steps"], int) or c["optim"]["warmup_steps"] < 0:
        raise ValueError(f"config: optim.warmup_steps must be an integer >= 0, got {c['optim']['warmup_steps']!r}")

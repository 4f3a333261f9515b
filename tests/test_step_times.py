"""``train.step_times``: the trainers' public per-step record (what benchmarks/gpu_smoke.py reads instead of
rebuilding their loops): one entry per optimizer step of the run with its seconds and loss, absent unless
asked for; and the runs' summaries say whether every N:M mask is valid."""
import math
import sys
from pathlib import Path

import pytest
import torch

from nm_plugins.runtime.training import StepTimes

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see tests/conftest.py


def _check(record, steps):
    assert len(record["seconds"]) == len(record["loss"]) == steps
    assert all(s > 0 for s in record["seconds"]) and all(math.isfinite(x) for x in record["loss"])


def test_disabled_record_is_none_and_enabled_one_times_each_step():
    off = StepTimes(False, "cpu")
    off.start()
    off.stop(torch.tensor(1.0))
    assert off.record() is None
    on = StepTimes(True, "cpu")
    for loss in (2.0, torch.tensor(1.5)):
        on.start()
        sum(range(10000))
        on.stop(loss)
    assert on.record()["loss"] == [2.0, 1.5] and all(s > 0 for s in on.record()["seconds"])


def test_classification_run_records_every_step(tmp_path):
    from nm_plugins.train.classify import run
    from nm_plugins.train.config import load_config
    base = [str(p) for p in ("data.train_subset=256", "data.val_subset=64", "data.batch_size=64",
                             "model.kwargs.width=8", "train.progress=false", "optim.epochs=2")]
    proxy = REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml"
    summary = run(load_config(proxy, base + [f"train.out_dir={tmp_path / 'on'}", "train.step_times=true"]))
    _check(summary["step_times"], 2 * 256 // 64)
    assert summary["masks_valid"] == 1.0 and summary["sparse_layer_count"] > 0
    plain = run(load_config(proxy, base + [f"train.out_dir={tmp_path / 'off'}"]))
    assert "step_times" not in plain and plain["top1"] == summary["top1"]  # recording changes nothing else


def test_raft_run_records_every_step(tmp_path):
    from nm_plugins.raft.train import load_config, run
    cfg = load_config(REPO / "configs" / "raft" / "proxy.yaml", overrides=[
        "optim.steps=3", "data.batch_size=2", "train.iters=2", "eval.sets=[]", "train.step_times=true",
        f"data.proxy={{count: 6, val_count: 4, size: 128, seed: 0, cache_dir: '{tmp_path / 'cache'}'}}",
        f"out_dir={tmp_path / 'runs' / '{tag}'}"])
    results = run(cfg)
    _check(results["step_times"], 3)
    assert results["masks_valid"] == 1.0


def test_translation_run_records_every_step(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_translation_data import write_wmt
    from test_translation_trainer import BASE, TINY

    from nm_plugins.translation.config import load_config
    from nm_plugins.translation.train import run
    root = write_wmt(tmp_path / "wmt14", n_train=60)
    cfg = load_config(BASE, TINY + [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                                    f"train.out_dir={tmp_path / 'out'}", "optim.max_steps=4", "train.step_times=true",
                                    "train.average_last=0"])
    summary = run(cfg)
    _check(summary["step_times"], 4)
    assert summary["masks_valid"] == 1.0 and summary["sparse_layer_count"] > 0

"""The classification trainer for real on tiny data: one-process, resume (limited and killed), ASP, torchrun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nm_plugins.train.classify import lr_factor, run
from nm_plugins.train.config import load_config
from nm_plugins.runtime.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PROXY = REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml"
TINY = ["data.train_subset=512", "data.val_subset=300", "data.batch_size=64", "model.kwargs.width=8",
        "train.threads=1", "train.progress=false", "optim.warmup_epochs=0.5", "train.eval_every=1"]


def tiny_config(tmp_path, *extra):
    return load_config(PROXY, TINY + [f"train.out_dir={tmp_path}"] + list(extra))


def test_lr_schedule_warmup_cosine_and_asp_restart():
    optim = {"epochs": 10, "warmup_epochs": 2}
    assert lr_factor(0, 10, optim) == pytest.approx(1 / 20)
    assert lr_factor(19, 10, optim) == pytest.approx(1.0)
    assert lr_factor(60, 10, optim) == pytest.approx(0.5)          # halfway through the cosine
    assert lr_factor(99, 10, optim) < 0.01
    # ASP: cosine over the dense phase (epochs 0-4), restarted for the fine-tuning phase (5-9)
    assert lr_factor(49, 10, optim, asp_prune_epoch=5) < 0.01
    assert lr_factor(50, 10, optim, asp_prune_epoch=5) == pytest.approx(1.0)


def test_one_run_logs_checkpoints_and_summary(tmp_path):
    summary = run(tiny_config(tmp_path, "optim.epochs=2"))
    assert summary["status"] == "done" and summary["method"] == "srste" and summary["pattern"] == "2:4"
    assert 20.0 < summary["top1"] <= 100.0  # 10 classes: twice chance after 16 steps
    records = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"loss", "top1", "top5", "lr", "images_per_s"} <= set(r["train"])
        assert {"top1", "top5", "loss"} <= set(r["val"])
        assert set(r["sad"]) >= {"model_init", "model_prev", "layers"} and "layer1.0.conv1" in r["sad"]["layers"]
    assert records[1]["sad"]["model_init"] > 0  # masks move during SR-STE training
    assert (tmp_path / "tb").is_dir()
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only load
    assert state["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng", "sad"} <= set(state)
    assert json.loads((tmp_path / "summary.json").read_text())["top1"] == summary["top1"]
    assert summary["params"] < 0.6 * sum(v.numel() for k, v in state["model"].items() if k.endswith("weight"))


def _final_state(out_dir: Path) -> dict:
    return load_checkpoint(out_dir / "checkpoint.pt")["model"]


@pytest.mark.parametrize("method", ["srste", "asp"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, method):
    extra = ["optim.epochs=3", f"sparsity.method={method}", "sparsity.asp_prune_epoch=2"]
    full = run(tiny_config(tmp_path / "full", *extra))
    stopped = run(tiny_config(tmp_path / "cut", *extra, "train.stop_after_epoch=1"))
    assert stopped == {"status": "stopped", "epoch": 1, "out_dir": str(tmp_path / "cut")}
    resumed = run(tiny_config(tmp_path / "cut", *extra), resume=True)
    assert resumed["top1"] == full["top1"] and resumed["masks_sha"] == full["masks_sha"]
    assert resumed["sad_curve"] == full["sad_curve"]
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    """SIGKILL a training process after its first checkpoint, resume it, compare with an uninterrupted run."""
    args = TINY + ["optim.epochs=4", "data.train_subset=1024"]
    cmd = [sys.executable, "-m", "nm_plugins.train.classify", "--config", str(PROXY)]
    subprocess.run(cmd + args + [f"train.out_dir={tmp_path / 'full'}"], check=True, cwd=REPO, capture_output=True)
    proc = subprocess.Popen(cmd + args + [f"train.out_dir={tmp_path / 'cut'}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert killed_at < 4, "the run finished before it could be killed"
    out = subprocess.run(cmd + ["--resume"] + args + [f"train.out_dir={tmp_path / 'cut'}"], check=True, cwd=REPO,
                         capture_output=True, text=True)
    resumed, full = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cut", "full"))
    assert f"resumed {ckpt} after epoch {killed_at}" in out.stderr
    assert resumed["top1"] == full["top1"] and resumed["masks_sha"] == full["masks_sha"]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nm_plugins.train.classify", "--config", str(PROXY)] + TINY + ["optim.epochs=2", f"train.out_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["top1"] > 20.0
    log = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["val"]["images"] == 300  # the two shards cover the validation subset exactly once
    assert log[0]["train"]["images_per_s"] > 0
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert not any(k.startswith("module.") for k in state["model"])  # the unwrapped model is saved


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'optim.epoch'"):
        load_config(PROXY, ["optim.epoch=3"])
    with pytest.raises(ValueError, match="sparsity.method 'magic'"):
        load_config(PROXY, ["sparsity.method=magic"])
    with pytest.raises(ValueError, match="asp_prune_epoch"):
        load_config(PROXY, ["sparsity.method=asp", "sparsity.asp_prune_epoch=4"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(PROXY, ["epochs"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")

"""End to end: one training step + evaluation of sparse RAFT, crash + --resume, and `make reproduce-raft SMOKE=1`."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import nm_plugins.raft.train as raft_train
from nm_plugins import is_valid_nm_mask, sparse_layers
from nm_plugins.raft import create
from nm_plugins.raft.train import load_config, run
from nm_plugins.runtime.training import seed_everything

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, steps=1, **extra):
    cfg = load_config(REPO / "configs" / "raft" / "proxy.yaml", overrides=[
        f"optim.steps={steps}", "data.batch_size=2", "train.iters=2", "train.ckpt_every=1", "train.log_every=1",
        "train.sad_every=1", "eval.iters={proxy: 2}", "eval.batch_size=4",
        f"data.proxy={{count: 6, val_count: 4, size: 128, seed: 0, cache_dir: '{tmp_path / 'cache'}'}}",
        f"out_dir={tmp_path / 'runs' / '{tag}'}"])
    for key, value in extra.items():
        cfg["model"][key] = value
    return cfg


def test_one_training_step_and_evaluation_end_to_end(tmp_path):
    cfg = _cfg(tmp_path, method="srste")
    results = run(cfg)
    run_dir = tmp_path / "runs" / "srste_2x4"
    assert results["steps"] == 1 and results["masks_valid"] == 1.0
    val = results["val"]["proxy"]
    assert val["images"] == 4 and 0 < val["epe"] < 100 and 0 <= val["1px"] <= val["3px"] <= val["5px"] <= 100
    assert "update_block.motion_encoder.convflow1.0" in results["dense_layers"]
    assert results["params"] > 0 and results["flops"] > 0
    for name in ("last.pth", "final.pth", "results.json", "log.jsonl", "config.yaml"):
        assert (run_dir / name).is_file(), name
    logs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert "loss" in logs[0] and "sad" in logs[0] and "model_init" in logs[0]["sad"]
    assert list((run_dir / "tb").iterdir())
    final = torch.load(run_dir / "final.pth", weights_only=True)["model"]
    seed_everything(cfg["train"]["seed"])
    initial = create("small", "2:4", "srste").state_dict()  # the run's initial weights (same seed)
    changed = [k for k in initial if k.endswith("weight") and not torch.equal(final[k], initial[k])]
    assert len(changed) > 40  # the optimizer step moved (nearly) every layer
    model = create("small", "2:4", "srste", weights=run_dir / "final.pth")
    for _, layer in sparse_layers(model):
        assert is_valid_nm_mask(layer.mask(), layer.pattern)


def test_crash_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = run(_cfg(tmp_path / "a", steps=3, method="srste"))
    real_loss = raft_train.sequence_loss
    calls = {"n": 0}

    def crash_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_loss(*args, **kwargs)

    cfg = _cfg(tmp_path / "b", steps=3, method="srste")
    monkeypatch.setattr(raft_train, "sequence_loss", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(raft_train, "sequence_loss", real_loss)
    ckpt = torch.load(tmp_path / "b" / "runs" / "srste_2x4" / "last.pth", weights_only=True)
    assert ckpt["step"] == 2
    resumed = run(cfg, resume=True)
    assert resumed["steps"] == 3
    a = torch.load(tmp_path / "a" / "runs" / "srste_2x4" / "final.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "runs" / "srste_2x4" / "final.pth", weights_only=True)["model"]
    for key in a:  # bit-identical: the resumed loader's base-seed draw does not shift the augmentation RNG
        assert torch.equal(a[key], b[key]), key
    assert resumed["val"]["proxy"]["epe"] == straight["val"]["proxy"]["epe"]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        load_config(REPO / "configs" / "raft" / "proxy.yaml", overrides=["optim.lrr=1"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    for stage in ("chairs", "things", "sintel", "kitti", "proxy"):
        cfg = load_config(REPO / "configs" / "raft" / f"{stage}.yaml")
        assert cfg["stage"] == stage


@pytest.mark.slow
def test_make_reproduce_raft_smoke_passes_its_threshold_check():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_ROOT")}
    env["SMOKE"] = "1"
    proc = subprocess.run(["make", "reproduce-raft", "SMOKE=1"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checks passed" in proc.stdout and "FELL SHORT" not in proc.stdout
    results = json.loads((REPO / "runs" / "raft-proxy-smoke" / "results.json").read_text())
    for label in ("dense", "srste_2:4", "ste_2:4"):
        assert f"{label}/epe" in results["metrics"]
    assert (REPO / "runs" / "raft-proxy-smoke" / "flow.png").stat().st_size > 10_000


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_and_resume(tmp_path):
    """torchrun with 2 processes (gloo on CPU): both ranks train on their shard of the global batch 2; --resume continues."""
    args = ["--config", str(REPO / "configs" / "raft" / "proxy.yaml"), "--set", "device=cpu",
            "--set", "data.batch_size=2", "--set", "train.iters=2", "--set", "train.ckpt_every=1",
            "--set", "eval.iters={proxy: 2}", "--set", "eval.batch_size=2",
            "--set", f"data.proxy={{count: 4, val_count: 2, size: 128, seed: 0, cache_dir: '{tmp_path / 'cache'}'}}",
            "--set", f"out_dir={tmp_path / 'runs' / '{tag}'}"]
    torchrun = [str(Path(os.sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2",
                "-m", "nm_plugins.raft.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(torchrun + args + ["--set", "optim.steps=2"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    second = subprocess.run(torchrun + args + ["--set", "optim.steps=2", "--resume"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "resumed" in second.stdout and "at step 2" in second.stdout
    results = json.loads((tmp_path / "runs" / "srste_2x4" / "results.json").read_text())
    assert results["steps"] == 2 and results["val"]["proxy"]["images"] == 2 and results["masks_valid"] == 1.0


@pytest.mark.slow
def test_reproduce_smoke_on_a_miniature_flying_chairs(tmp_path, flying_chairs):
    """The real-dataset branch: CHAIRS_ROOT in the official layout -> raft_large dense and 2:4 SR-STE, Chairs val."""
    flying_chairs(tmp_path, [1, 1, 1, 1, 2], (136, 168))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_ROOT")}
    env.update(SMOKE="1", CHAIRS_ROOT=str(tmp_path))
    proc = subprocess.run(["make", "reproduce-raft", "SMOKE=1"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Stages: chairs; evaluation: chairs." in proc.stdout and "FELL SHORT" not in proc.stdout
    metrics = json.loads((REPO / "runs" / "raft-smoke" / "results.json").read_text())["metrics"]
    assert metrics["srste_2:4/params_ratio"] < 0.6 and "dense/after_chairs/chairs/epe" in metrics

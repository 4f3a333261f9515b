"""bf16 autocast of the RAFT trainer on the CPU (`train.amp_cpu`), the precision it records, and the
`make reproduce-raft` knobs that run the proxy in bf16 (RAFT_PRECISION, RAFT_ROWS) and compare it with fp32."""
from pathlib import Path

import pytest
import torch

import nm_plugins.raft.train as raft_train
from nm_plugins.core import sparse_layers
from nm_plugins.raft import reproduce as raft_reproduce
from nm_plugins.raft.train import load_config, precision, run

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, *overrides):
    return load_config(REPO / "configs" / "raft" / "proxy.yaml", overrides=[
        "optim.steps=1", "data.batch_size=2", "train.iters=2", "train.ckpt_every=1", "train.log_every=1",
        "train.sad_every=1", "eval.iters={proxy: 2}", "eval.batch_size=4", "device=cpu",
        f"data.proxy={{count: 4, val_count: 2, size: 128, seed: 0, cache_dir: '{tmp_path / 'cache'}'}}",
        f"out_dir={tmp_path / 'runs' / '{tag}'}", *overrides])


@pytest.mark.parametrize("overrides, train_dtype, eval_dtype, corr_dtype", [
    ((), torch.float32, torch.float32, torch.float32),  # proxy.yaml says amp: true, but the CPU stays fp32
    (("train.amp_cpu=true",), torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (("train.amp_cpu=true", "train.corr_fp32=true", "eval.amp=false"), torch.bfloat16, torch.float32, torch.float32),
])
def test_amp_cpu_autocasts_training_and_evaluation(tmp_path, monkeypatch, overrides, train_dtype, eval_dtype,
                                                   corr_dtype):
    seen, phase = {"train": set(), "eval": set(), "corr": set()}, []
    real_create, real_evaluate = raft_train.create, raft_train.evaluate

    def record(module, inputs, out):  # training forwards, and forwards inside evaluate() (not the FLOP count)
        if torch.is_grad_enabled() or phase:
            seen["train" if torch.is_grad_enabled() else "eval"].add(out.dtype)

    def record_corr(raft, inputs, out):  # the correlation volume a training forward built
        if torch.is_grad_enabled():
            seen["corr"].add(raft.corr_block.corr_pyramid[0].dtype)

    def evaluate(*args, **kwargs):
        phase.append("eval")
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            phase.pop()

    def create(*args, **kwargs):  # the real model, with a hook on one N:M conv and one dense conv
        model = real_create(*args, **kwargs)
        model.register_forward_hook(record_corr)
        layers = [layer for _, layer in sparse_layers(model)][:1] + [model.feature_encoder.convnormrelu[0]]
        for layer in layers:
            layer.register_forward_hook(record)
        return model
    monkeypatch.setattr(raft_train, "create", create)
    monkeypatch.setattr(raft_train, "evaluate", evaluate)
    cfg = _cfg(tmp_path, *overrides)
    assert cfg["train"]["amp"] is True
    results = run(cfg)
    assert seen == {"train": {train_dtype}, "eval": {eval_dtype}, "corr": {corr_dtype}}
    name = {torch.bfloat16: "bf16-autocast", torch.float32: "fp32"}
    assert results["precision"]["train"] == name[train_dtype] and results["precision"]["eval"] == name[eval_dtype]
    assert torch.isfinite(torch.tensor(results["val"]["proxy"]["epe"]))


def test_recorded_precision_on_cuda_ignores_amp_cpu():
    cfg = load_config(REPO / "configs" / "raft" / "chairs.yaml")
    assert precision(cfg, "cuda") == {"train": "bf16-autocast", "eval": "bf16-autocast", "corr": "fp32"}
    assert precision(cfg, "cpu") == {"train": "fp32", "eval": "fp32", "corr": "fp32"}
    authors = load_config(REPO / "configs" / "raft" / "chairs_authors.yaml", ["train.amp_cpu=true"])
    assert precision(authors, "cuda") == precision(authors, "cpu") == {"train": "fp32", "eval": "fp32", "corr": "fp32"}


def test_reproduce_precision_and_rows_reach_every_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the run folders (and their grid records) of the fake runs go here
    monkeypatch.setenv("RAFT_ROWS", "srste_2:4,dense")
    assert raft_reproduce._rows(raft_reproduce.PROXY_RUNS) == (("dense", "2:4"), ("srste", "2:4"))  # table order
    monkeypatch.setenv("RAFT_ROWS", "srste_2x4")
    with pytest.raises(SystemExit, match="unknown row"):
        raft_reproduce._rows(raft_reproduce.PROXY_RUNS)
    monkeypatch.setenv("RAFT_PRECISION", "fp16")
    with pytest.raises(SystemExit, match="not one of"):
        raft_reproduce._precision()
    monkeypatch.setenv("RAFT_PRECISION", "bf16-corr32")
    prec = raft_reproduce._precision()
    configs = []

    def fake_run(cfg, resume, keep_samples):  # only the configs _run_all builds are inspected here
        configs.append(cfg)
        return {"val": {"proxy": {}}}
    monkeypatch.setattr(raft_reproduce, "run", fake_run)
    spec = {"runs": (("srste", "2:4"),), "stages": ["proxy"], "eval_sets": ["proxy"],
            "train": raft_reproduce.PRECISIONS[prec][0], "suffix": f"-{prec}"}
    raft_reproduce._run_all(spec, None, keep=0, seeds=(0, 2))
    assert [c["name"] for c in configs] == ["proxy-bf16-corr32", "proxy-bf16-corr32-s2"]
    assert [c["train"]["seed"] for c in configs] == [0, 2]
    assert all(c["train"]["amp"] and c["train"]["amp_cpu"] and c["train"]["corr_fp32"] for c in configs)
    assert all(precision(c, "cpu") == {"train": "bf16-autocast", "eval": "bf16-autocast", "corr": "fp32"}
               for c in configs)


def test_paired_difference_to_the_fp32_reference():
    this = {"srste_2:4": {"epe": {"0": 3.7, "1": 3.8, "2": 4.2}}, "dense": {"epe": {"0": 3.0}}}
    ref = {"srste_2:4": {"epe": {"0": 3.6, "1": 3.6, "2": 3.9}}, "ste_2:4": {"epe": {"0": 3.5}}}
    out = raft_reproduce.vs_reference(this, ref)
    assert set(out) == {"srste_2:4"}  # dense has no reference row, ste no row here
    d = out["srste_2:4"]
    assert d["diffs"] == pytest.approx([0.1, 0.2, 0.3]) and d["mean"] == pytest.approx(0.2)
    assert d["half_width"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert d["seeds"] == ["0", "1", "2"] and d["reference"] == [3.6, 3.6, 3.9]


@pytest.mark.parametrize("knob, value", [("RAFT_PRECISION", "bf16"), ("RAFT_ROWS", "dense")])
def test_proxy_knobs_refuse_the_real_datasets(tmp_path, monkeypatch, flying_chairs, knob, value):
    flying_chairs(tmp_path, [1, 2], (136, 168))
    monkeypatch.setenv("CHAIRS_ROOT", str(tmp_path))
    monkeypatch.setenv(knob, value)
    with pytest.raises(SystemExit, match="proxy only"):  # before any training
        raft_reproduce.main()

"""The translation trainer for real on a tiny generated WMT14-layout corpus: logs, checkpoints, averaging,
identical resume (stopped and SIGKILLed), the WMT reproduce path through torchrun, the SMOKE proxy."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nm_plugins.core import is_valid_nm_mask, sparse_layers
from nm_plugins.runtime.config import read_yaml
from nm_plugins.translation.catalogs import missing_packages
from nm_plugins.translation.config import load_config
from nm_plugins.translation.train import inverse_sqrt, run
from nm_plugins.runtime.training import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_translation_data import write_wmt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "translation" / "wmt14_en_de_srste_2_4.yaml"
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see tests/conftest.py


TINY = ["model.d_model=32", "model.ffn=64", "model.heads=2", "model.enc_layers=1", "model.dec_layers=1",
        "model.max_positions=64", "data.vocab_size=80", "data.max_tokens=120", "data.max_len_ratio=null",
        "optim.update_freq=1", "optim.warmup_steps=5", "optim.lr=3.0e-3", "train.log_every=4", "train.eval_every=8",
        "train.ckpt_every=4", "train.keep_last=3", "train.average_last=3", "train.threads=1", "train.progress=false",
        "decode.max_len_b=5", "decode.batch_sentences=5"]


@pytest.fixture(scope="module")
def wmt_root(tmp_path_factory):
    return write_wmt(tmp_path_factory.mktemp("wmt") / "wmt14", n_train=120)


def tiny(tmp_path, root, *extra):
    return load_config(BASE, TINY + [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                                     f"train.out_dir={tmp_path / 'out'}"] + list(extra))


def test_inverse_sqrt_schedule():
    assert inverse_sqrt(0, 4) == pytest.approx(0.25)
    assert inverse_sqrt(3, 4) == pytest.approx(1.0)
    assert inverse_sqrt(15, 4) == pytest.approx(0.5)
    assert inverse_sqrt(99, 0) == pytest.approx(0.1)


def test_run_logs_checkpoints_averages_and_scores(tmp_path, wmt_root):
    summary = run(tiny(tmp_path, wmt_root, "optim.max_steps=12"))
    out = tmp_path / "out"
    assert summary["status"] == "done" and summary["method"] == "srste" and summary["pattern"] == "2:4"
    assert summary["test_sentences"] == 12 and "tok:13a" in summary["signatures"]["bleu"]
    assert 0.0 <= summary["bleu"] <= 100.0 and summary["chrf"] >= 0.0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert "valid" in records[1] and "valid" not in records[0]
    assert {"loss", "nll", "lr", "tokens_per_s"} <= set(records[0]["train"])
    assert "encoder.0.self_attn.q" in records[-1]["sad"]["layers"] and records[-1]["sad"]["model_init"] > 0
    assert summary["averaged_checkpoints"] == ["weights_step4.pt", "weights_step8.pt", "weights_step12.pt"]
    assert sorted(p.name for p in out.glob("weights_step*.pt")) == ["weights_step12.pt", "weights_step4.pt", "weights_step8.pt"]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 12 and {"model", "optimizer", "scheduler", "rng", "sad", "pos", "epoch"} <= set(state)
    lines = gzip.decompress((out / "translations.tsv.gz").read_bytes()).decode().splitlines()
    assert summary["test_nll"] > 0 and summary["test_tokens"] > 12 and summary["config"]["optim"]["max_steps"] == 12
    assert len(lines) == 12 and lines[0].split("\t")[0] == (wmt_root / "newstest2014.en").read_text().splitlines()[0]
    assert summary["params"] < sum(v.numel() for k, v in state["model"].items() if k.endswith("weight") and k != "generator.weight")


def _run_state(out: Path) -> dict:
    return load_checkpoint(out / "checkpoint.pt")


def test_resume_reproduces_the_uninterrupted_run(tmp_path, wmt_root):
    full = run(tiny(tmp_path / "a", wmt_root, "optim.max_steps=16", "train.average_last=0", "model.dropout=0.3"))
    stopped = run(tiny(tmp_path / "b", wmt_root, "optim.max_steps=16", "train.average_last=0", "model.dropout=0.3",
                       "train.stop_after_step=8"))
    assert stopped["status"] == "stopped" and stopped["step"] == 8
    resumed = run(tiny(tmp_path / "b", wmt_root, "optim.max_steps=16", "train.average_last=0", "model.dropout=0.3"),
                  resume=True)
    assert resumed["masks_sha"] == full["masks_sha"] and resumed["bleu"] == full["bleu"]
    assert resumed["sad_curve"] == full["sad_curve"] and resumed["valid_curve"] == full["valid_curve"]
    a, b = _run_state(tmp_path / "a" / "out"), _run_state(tmp_path / "b" / "out")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_resume_after_kill(tmp_path, wmt_root):
    """SIGKILL a training process after a checkpoint, resume it, compare with an uninterrupted run."""
    def cmd(sub, *extra):
        overrides = TINY + [f"data.root={wmt_root}", f"data.cache_dir={tmp_path / 'cache'}",
                            f"train.out_dir={tmp_path / sub}", "optim.max_steps=200", "train.average_last=0",
                            "train.ckpt_every=2", "decode.batch_sentences=12"]
        return [sys.executable, "-m", "nm_plugins.translation.train", "--config", str(BASE), *extra, *overrides]
    subprocess.run(cmd("full"), check=True, cwd=REPO, capture_output=True)
    proc = subprocess.Popen(cmd("cut"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["step"]
    assert killed_at < 200, "the run finished before it could be killed"
    out = subprocess.run(cmd("cut", "--resume"), check=True, cwd=REPO, capture_output=True, text=True)
    assert f"resumed {ckpt} after step {killed_at}" in out.stderr
    resumed, full = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cut", "full"))
    assert resumed["masks_sha"] == full["masks_sha"] and resumed["bleu"] == full["bleu"]
    assert resumed["sad_curve"] == full["sad_curve"]
    a, b = _run_state(tmp_path / "full"), _run_state(tmp_path / "cut")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_trained_masks_are_valid(tmp_path, wmt_root):
    from nm_plugins.translation.model import build_model
    cfg = tiny(tmp_path, wmt_root, "optim.max_steps=4", "sparsity.pattern='4:8'", "train.average_last=0")
    run(cfg)
    state = load_checkpoint(tmp_path / "out" / "checkpoint.pt")["model"]
    vocab = state["embed.weight"].shape[0]
    model = build_model(cfg, vocab)
    model.load_state_dict(state)
    layers = list(sparse_layers(model))
    assert len(layers) == 16  # 1 encoder layer (4 projections + 2 FFN), 1 decoder layer (8 + 2)
    for name, layer in layers:
        assert is_valid_nm_mask(layer.mask(), "4:8"), name


def test_config_errors_name_the_setting(tmp_path, wmt_root):
    with pytest.raises(ValueError, match="unknown key 'optim.max_step'"):
        load_config(BASE, ["optim.max_step=3"])
    with pytest.raises(ValueError, match="sparsity.method 'asp'"):
        load_config(BASE, ["sparsity.method=asp"])
    with pytest.raises(ValueError, match="optim.lr must be a number"):
        load_config(BASE, ["optim.lr=3e-3"])
    with pytest.raises(ValueError, match="data.root"):
        run(load_config(BASE, ["train.threads=1", f"train.out_dir={tmp_path}"]))


def _reproduce(env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("WMT_ROOT", "SMOKE", "NPROC_PER_NODE", "WMT_ROWS")}
    return subprocess.run([sys.executable, "-m", "nm_plugins.translation.reproduce"], cwd=REPO, capture_output=True,
                          text=True, env={**clean, "RESULTS_DIR": str(tmp_path / "results"),
                                          "RUNS_DIR": str(tmp_path / "runs"), **env}, timeout=600)


@pytest.mark.slow
def test_wmt_path_smoke_through_torchrun(tmp_path, wmt_root):
    overrides = " ".join(o for o in TINY if not o.startswith("train.log_every")) + f" data.cache_dir={tmp_path / 'cache'}"
    out = _reproduce({"WMT_ROOT": str(wmt_root), "SMOKE": "1", "NPROC_PER_NODE": "1", "OMP_NUM_THREADS": "1",
                      "WMT_ROWS": "wmt14_en_de_dense,wmt14_en_de_srste_2_4", "WMT_OVERRIDES": overrides}, tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node=1" in out.stdout
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    assert [r["key"] for r in res["rows"]] == ["dense", "srste_2:4"]
    assert res["metrics"]["srste_2:4/params_m"] < res["metrics"]["dense/params_m"]
    bad = _reproduce({"WMT_ROOT": str(tmp_path / "empty"), "SMOKE": "1"}, tmp_path)
    assert bad.returncode == 2 and "is not a directory" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_packages(read_yaml(REPO / "configs/translation/catalogs_de.yaml")["packages"],
                                          REPO / "data/catalogs")), reason="German catalogs missing (make install)")
def test_reproduce_translation_smoke(tmp_path):
    """`SMOKE=1 make reproduce-translation`: the four proxy rows, results, plot, examples, threshold check."""
    out = _reproduce({"SMOKE": "1"}, tmp_path)
    assert "Threshold check:" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    assert [r["key"] for r in res["rows"]] == ["dense", "srste_2:4", "ste_2:4", "srste_4:8"]
    assert (tmp_path / "results" / "plot.png").stat().st_size > 1000
    assert "## srste_2:4" in (tmp_path / "results" / "examples.md").read_text()


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, wmt_root):
    """Two processes with gradient accumulation (DDP no_sync): the validation split is covered exactly once."""
    overrides = TINY + [f"data.root={wmt_root}", f"data.cache_dir={tmp_path / 'cache'}", f"train.out_dir={tmp_path / 'ddp'}",
                        "optim.max_steps=8", "optim.update_freq=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nm_plugins.translation.train", "--config", str(BASE), *overrides]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["test_sentences"] == 12
    single = run(tiny(tmp_path / "one", wmt_root, "optim.max_steps=4", "train.average_last=0"))
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    single_log = [json.loads(line) for line in (tmp_path / "one" / "out" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["valid"]["tokens"] == single_log[-1]["valid"]["tokens"]
    state = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert not any(k.startswith("module.") for k in state["model"])  # the unwrapped model is saved

"""`make reproduce-imagenet`: the torchrun command it builds, data-root errors, the ImageNet path on a tiny
folder, and the SMOKE proxy grid with its threshold check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nm_plugins.train import reproduce
from nm_plugins.train.report import aggregate, markdown_table

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "imagenet" / "resnet50_srste_2_4.yaml"


def test_torchrun_command_single_and_multi_node(tmp_path):
    cmd = reproduce.torchrun_command(CONFIG, "/data/in1k", 8, 1, tmp_path, env={})
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc_per_node=8" in cmd and "--nnodes=1" in cmd and "--standalone" in cmd
    assert cmd[cmd.index("-m", 3):cmd.index("-m", 3) + 4] == ["-m", "nm_plugins.train.classify", "--config", str(CONFIG)]
    assert "data.root=/data/in1k" in cmd and f"train.out_dir={tmp_path}" in cmd and "--resume" not in cmd
    assert reproduce.torchrun_command(CONFIG, "/r", 1, 1, tmp_path, env={"IMAGENET_OVERRIDES": "data.workers=2 a.b=1"})[-2:] \
        == ["data.workers=2", "a.b=1"]
    multi = reproduce.torchrun_command(CONFIG, "/r", 4, 2, tmp_path, resume=True,
                                       env={"MASTER_ADDR": "node0", "MASTER_PORT": "1234", "NODE_RANK": "1"})
    assert "--nnodes=2" in multi and "--node_rank=1" in multi
    assert "--master_addr=node0" in multi and "--master_port=1234" in multi
    assert "--standalone" not in multi and "--resume" in multi
    with pytest.raises(SystemExit, match="MASTER_ADDR.*NODE_RANK"):
        reproduce.torchrun_command(CONFIG, "/r", 4, 2, tmp_path, env={"MASTER_ADDR": "node0"})


def test_every_paper_row_has_a_config():
    names = {p.stem for p in (REPO / "configs" / "imagenet").glob("*.yaml")}
    assert {"resnet50_dense", "resnet50_srste_2_4", "resnet50_srste_4_8", "resnet50_srste_1_4", "resnet50_srste_2_8",
            "resnet50x1_25_srste_2_8", "resnet18_dense", "resnet18_srste_2_4"} <= names


def _make(env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGENET_ROOT", "SMOKE", "NPROC_PER_NODE", "NNODES")}
    env.update(env_extra)
    env["RESULTS_DIR"], env["RUNS_DIR"] = str(tmp_path / "results"), str(tmp_path / "runs")
    return subprocess.run(["make", "-s", "reproduce-imagenet"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_bad_imagenet_root_is_a_clear_error(tmp_path):
    out = _make({"IMAGENET_ROOT": str(tmp_path / "missing")}, tmp_path)
    assert out.returncode != 0
    assert f"ImageNet root {tmp_path / 'missing'} does not exist" in out.stderr and "train/<class>" in out.stderr


def test_aggregate_means_and_metrics():
    runs = [{"method": "srste", "pattern": "2:4", "model": "m", "seed": s, "top1": t, "top5": 99.0, "params": 2e6,
             "flops": 3e9, "sad_final": 0.1 * s, "sad_curve": [0.0, 0.1 * s], "seconds": 1.0} for s, t in ((0, 80.0), (1, 82.0))]
    res = aggregate(runs, "x")
    assert res["metrics"]["srste_2:4/top1_mean"] == pytest.approx(81.0)
    assert res["metrics"]["srste_2:4/top1_std"] == pytest.approx(2 ** 0.5)
    assert res["rows"][0]["density"] == 0.5 and res["rows"][0]["sad_curve_mean"] == [0.0, 0.05]
    assert "| m | SR-STE | 2:4 | 81.00 ± 1.41 | 2 | 2 | 3 |" in markdown_table(res)


@pytest.mark.slow
def test_imagenet_path_smoke_through_torchrun(tmp_path):
    from imagenet_tree import write_imagenet
    root = write_imagenet(tmp_path / "imagenet", per_class=(4, 2))
    out = _make({"IMAGENET_ROOT": str(root), "SMOKE": "1", "NPROC_PER_NODE": "1", "IMAGENET_ROWS": "resnet18_srste_2_4",
                 "IMAGENET_OVERRIDES": "data.batch_size=6 data.img_size=32 data.workers=0 train.device=cpu",
                 "OMP_NUM_THREADS": "1"}, tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "torch.distributed.run --nproc_per_node=1 --nnodes=1 --standalone" in out.stdout
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    assert list(res["metrics"]) and res["rows"][0]["key"] == "resnet18/srste_2:4"


@pytest.mark.slow
def test_make_reproduce_imagenet_smoke(tmp_path):
    out = _make({"SMOKE": "1"}, tmp_path)
    assert "Threshold check:" in out.stdout and "| cifar_resnet8 | SR-STE | 2:4 |" in out.stdout
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    assert len(res["rows"]) == len(reproduce.PROXY_GRID) and all(len(r["seeds"]) == len(reproduce.SMOKE_SEEDS) for r in res["rows"])
    assert (tmp_path / "results" / "sad_over_training.png").stat().st_size > 1000
    assert (tmp_path / "results" / "accuracy_vs_density.png").stat().st_size > 1000

"""``make gpu-smoke`` on the CPU: a clear skip without CUDA, the generated data in the real layouts read by the
real readers, and the whole run (classification, mmdet Faster R-CNN, RAFT through their entry points; dense and
SR-STE runs alternating) at toy size, its JSON holding every metric the GPU threshold files check."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks import gpu_smoke
from nm_plugins.verdicts.check import evaluate

REPO = Path(__file__).resolve().parents[1]
GPUS = ("a100", "h100", "h200")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_without_cuda_a_clear_skip_and_exit_0(capsys, tmp_path):
    assert gpu_smoke.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().out and not list(tmp_path.iterdir())
    assert gpu_smoke.main(["--device", "cpu", "--toy", "--trainers", "classify,detectron"]) == 2


def test_generated_chairs_are_read_by_torchvision_with_the_flow_that_moves_image1_onto_image2(tmp_path):
    from torchvision.datasets import FlyingChairs
    gpu_smoke.write_chairs(tmp_path, 5, (48, 64))
    train, val = FlyingChairs(str(tmp_path), split="train"), FlyingChairs(str(tmp_path), split="val")
    assert len(train) == 3 and len(val) == 2
    img1, img2, flow = train[0]
    a, b = np.asarray(img1), np.asarray(img2)
    dx, dy = int(flow[0, 0, 0]), int(flow[1, 0, 0])
    assert (flow[0] == dx).all() and (flow[1] == dy).all()
    # img2 at x + flow equals img1 at x (away from the wrapped border)
    assert np.array_equal(b[10 + dy:30 + dy, 10 + dx:40 + dx], a[10:30, 10:40])


def test_generated_coco_layout_loads_with_pycocotools(tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO
    gpu_smoke.write_coco(tmp_path, 3, 64)
    coco = COCO(str(tmp_path / "annotations" / "instances_train2017.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) >= 3 and len(coco.getCatIds()) == 10
    info = coco.loadImgs(1)[0]
    with Image.open(tmp_path / "train2017" / info["file_name"]) as img:
        assert img.format == "JPEG" and img.size == (64, 64)


def test_thresholds_hold_each_trainer_to_1_05_and_name_only_written_metrics():
    results = {"world_size": 2, "trainers": {t: {"srste_over_dense": 1.0, "loader": {"cpu": {"images_per_s": 1.0},
                                                                                      "gpu": {"images_per_s": 1.0}},
                                                 **{m: {"images_per_s": 1.0, "peak_mem_gib": 1.0, "loss_first": 2.0,
                                                        "loss_last": 1.0, "loss_finite": True, "loss_fell": True,
                                                        "masks_valid": True, "sparse_layers": 3} for m in gpu_smoke.METHODS}}
                                             for t in gpu_smoke.TRAINERS}}
    names = set(gpu_smoke.flatten(results))
    for gpu in GPUS:
        spec = yaml.safe_load((REPO / "ci" / "thresholds" / f"gpu_smoke_{gpu}.yaml").read_text())
        limits = {c["metric"]: c.get("max") for c in spec["checks"]}
        assert all(limits[f"{t}/srste_over_dense"] == 1.05 for t in gpu_smoke.TRAINERS), gpu
        for c in spec["checks"]:
            assert c["metric"] in names and c.get("ge", c["metric"]) in names, (gpu, c)


@pytest.mark.slow
def test_toy_run_on_cpu_writes_every_checked_figure(tmp_path, capsys):
    assert gpu_smoke.main(["--toy", "--device", "cpu", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "cpu_toy.json").read_text())
    md = (tmp_path / "cpu_toy.md").read_text()
    assert set(results["trainers"]) == set(gpu_smoke.TRAINERS)
    for trainer, r in results["trainers"].items():
        assert "error" not in r, (trainer, r.get("error"))
        assert r["srste"]["sparse_layers"] > 0 and r["dense"]["sparse_layers"] == 0, trainer
        assert len(r["paired_ratios"]) == results["rounds"] == 2  # one dense and one SR-STE run per round
        assert f"| {trainer} |" in md
    m = results["metrics"]
    for gpu in GPUS:  # everything but the speed targets holds at toy size on the CPU too
        spec = yaml.safe_load((REPO / "ci" / "thresholds" / f"gpu_smoke_{gpu}.yaml").read_text())
        for claim, value, need, ok in evaluate(m, spec["checks"]):
            assert value is not None, claim
            if "step" not in claim and "feeds a GPU" not in claim:
                assert ok, (claim, value, need)
    assert m["classify/loader_cpu_decode/images_per_s"] > 0 and m["classify/loader_gpu_decode/images_per_s"] > 0
    assert "ImageNet loader alone" in md


@pytest.mark.slow
def test_toy_run_through_torchrun_on_two_cpu_processes(tmp_path):
    """The launch path the GPUs take (torchrun, a process group, DDP-wrapped models), here with gloo."""
    assert gpu_smoke.main(["--toy", "--device", "cpu", "--nproc", "2", "--trainers", "classify", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "cpu_toy.json").read_text())
    assert results["world_size"] == 2 and set(results["trainers"]) == {"classify"}
    r = results["trainers"]["classify"]
    assert "error" not in r and r["srste"]["masks_valid"] and r["dense"]["loss_finite"]
    assert results["metrics"]["classify/dense/images_per_s_per_gpu"] == pytest.approx(r["dense"]["images_per_s"] / 2)

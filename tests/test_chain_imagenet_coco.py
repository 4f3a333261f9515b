"""The ImageNet -> COCO chain on generated data, through the real (IMAGENET_ROOT / COCO_ROOT) code paths:
`make reproduce-imagenet` trains the ResNet-50 SR-STE 2:4 row (torchrun) and writes its best and last checkpoints
where `make reproduce-coco-det` reads them; the Faster R-CNN row then starts from that backbone, its masks equal
to the classifier's. Shrunk through the targets' own override variables (tiny images, 2 epochs, lr 0 on COCO so
the saved detector still holds the loaded backbone)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmdet")

import nm_plugins.mmdet  # noqa: E402,F401  (mmengine checkpoints load under torch's weights_only default)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def coco_categories() -> list:
    """(id, name) of COCO's 80 categories (mmdetection's CocoDataset selects them by name)."""
    from mmdet.datasets import CocoDataset
    return list(enumerate(CocoDataset.METAINFO["classes"], start=1))


def make_coco(root: Path, per_split=(4, 3), size=(64, 80)) -> Path:
    """A COCO-2017-layout folder: annotations/instances_{train,val}2017.json and JPEGs in train2017/, val2017/;
    each image holds two coloured rectangles annotated as boxes (with polygon segmentations)."""
    rng = np.random.default_rng(0)
    categories = coco_categories()
    (root / "annotations").mkdir(parents=True)
    ann_id = 1
    for split, count in zip(("train2017", "val2017"), per_split):
        (root / split).mkdir()
        images, anns = [], []
        for i in range(count):
            h, w = size
            pixels = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
            for k in range(2):
                bw, bh = int(rng.integers(12, 30)), int(rng.integers(12, 30))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                pixels[y:y + bh, x:x + bw] = rng.integers(120, 255, 3)
                cat = categories[(3 * i + k) % 5][0]
                poly = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
                anns.append({"id": ann_id, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                             "area": bw * bh, "iscrowd": 0, "segmentation": [poly]})
                ann_id += 1
            name = f"{i + 1:012d}.jpg"
            Image.fromarray(pixels).save(root / split / name, format="JPEG")
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        data = {"images": images, "annotations": anns,
                "categories": [{"id": c, "name": n, "supercategory": n} for c, n in categories]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _make(target: str, env_extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("IMAGENET_ROOT", "COCO_ROOT", "SMOKE", "NPROC_PER_NODE", "NNODES", "IMAGENET_CKPT_DIR",
                        "COCO_ROWS", "COCO_CFG_OPTIONS", "IMAGENET_ROWS", "IMAGENET_OVERRIDES")}
    env.update({"RUNS_DIR": str(tmp_path / "runs"), "WORK_DIRS": str(tmp_path / "work_dirs"),
                "OMP_NUM_THREADS": "2", **env_extra})
    return subprocess.run(["make", "-s", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_imagenet_to_coco_chain(tmp_path):
    from imagenet_tree import write_imagenet

    # 1. reproduce-imagenet, IMAGENET_ROOT path: the R50 SR-STE 2:4 row for 2 epochs on 32x32 crops
    imagenet = write_imagenet(tmp_path / "imagenet", per_class=(4, 2))
    out = _make("reproduce-imagenet", {
        "IMAGENET_ROOT": str(imagenet), "SMOKE": "1", "NPROC_PER_NODE": "1", "IMAGENET_ROWS": "resnet50_srste_2_4",
        "RESULTS_DIR": str(tmp_path / "results_imagenet"),
        "IMAGENET_OVERRIDES": "optim.epochs=2 data.batch_size=6 data.img_size=32 data.workers=0 train.device=cpu "
                              "train.amp=false"}, tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    row_dir = tmp_path / "runs" / "imagenet-smoke" / "resnet50_srste_2_4"
    summary = json.loads((row_dir / "summary.json").read_text())
    log = [json.loads(line) for line in (row_dir / "log.jsonl").read_text().splitlines()]
    best = torch.load(row_dir / "model_best.pth", map_location="cpu", weights_only=True)
    last = torch.load(row_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    top1 = [entry["val"]["top1"] for entry in log]
    assert last["epoch"] == 2 and len(top1) == 2
    assert best["epoch"] == summary["best_epoch"] == 1 + top1.index(max(top1))  # the first epoch with the best top-1
    assert best["top1"] == summary["best_top1"] == max(top1)
    classifier = best["model"]
    masks = {k: v for k, v in classifier.items() if k.endswith(".nm_mask")}
    assert len(masks) == 52  # every ResNet-50 conv but the RGB stem (the fc classifier stays dense)

    # 2. reproduce-coco-det, COCO_ROOT path, from that checkpoint (found through RUNS_DIR, nothing pointed at it)
    coco = make_coco(tmp_path / "coco")
    options = ("train_dataloader.dataset.pipeline.2.scale=(80,64) val_dataloader.dataset.pipeline.1.scale=(80,64) "
               "test_dataloader.dataset.pipeline.1.scale=(80,64) train_dataloader.num_workers=0 "
               "train_dataloader.persistent_workers=False val_dataloader.num_workers=0 "
               "val_dataloader.persistent_workers=False test_dataloader.num_workers=0 "
               "test_dataloader.persistent_workers=False optim_wrapper.optimizer.lr=0.0 "
               "default_hooks.logger.interval=1 "
               "model.train_cfg.rpn_proposal.max_per_img=64 model.train_cfg.rcnn.sampler.num=32 "
               "model.test_cfg.rpn.nms_pre=128 model.test_cfg.rpn.max_per_img=32")
    out = _make("reproduce-coco-det", {"COCO_ROOT": str(coco), "SMOKE": "1", "COCO_ROWS": "srste_2:4",
                                       "COCO_CFG_OPTIONS": options, "RESULTS_DIR": str(tmp_path / "results_coco")},
                tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"srste_2:4: backbone {row_dir / 'model_best.pth'}" in out.stdout
    result = json.loads((tmp_path / "results_coco" / "results.json").read_text())
    assert result["proxy"] is False and result["metrics"]["srste_2:4/masks_valid"] == 1.0
    assert result["metrics"]["srste_2:4/kept_share"] == pytest.approx(0.5)
    ckpt = torch.load(tmp_path / "work_dirs" / "coco-det-smoke" / "srste_2-4" / "s0" / "epoch_1.pth", map_location="cpu")
    detector = ckpt["state_dict"]
    for key, mask in masks.items():  # lr 0: the saved detector holds the backbone as loaded
        assert torch.equal(detector[f"backbone.{key}"], mask), key
        weight = key[: -len("nm_mask")] + "weight"
        assert torch.equal(detector[f"backbone.{weight}"], classifier[weight]), weight


def test_missing_backbone_names_the_file_and_the_command(tmp_path):
    coco = make_coco(tmp_path / "coco", per_split=(1, 1))
    out = _make("reproduce-coco-det", {"COCO_ROOT": str(coco), "COCO_ROWS": "dense,srste_4:8"}, tmp_path)
    assert out.returncode == 2
    assert f"{tmp_path / 'runs' / 'imagenet' / 'resnet50_dense' / 'model_best.pth'} does not exist" in out.stderr
    assert "IMAGENET_ROWS=resnet50_dense make reproduce-imagenet" in out.stderr


def test_best_checkpoint_of_asp_is_a_sparse_epoch(tmp_path):
    """ASP trains dense before its pruning epoch: model_best.pth only ever holds a pruned (fine-tuned) epoch."""
    from imagenet_tree import write_imagenet
    from test_classify_imagenet_data import tiny

    from nm_plugins.train.classify import run
    root = write_imagenet(tmp_path / "imagenet", per_class=(4, 2))
    summary = run(tiny(root, tmp_path / "asp", "sparsity.method=asp", "sparsity.asp_prune_epoch=2", "optim.epochs=3"))
    best = torch.load(tmp_path / "asp" / "model_best.pth", map_location="cpu", weights_only=True)
    assert best["epoch"] == summary["best_epoch"] >= 3

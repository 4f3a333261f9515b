"""mmdetection plugin: configs build with N:M backbones, clear errors, checkpoint loading, proxy data.

Real mmdetection / mmengine / mmcv; no training here (see test_mmdet_train.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402

import nm_plugins.mmdet  # noqa: E402,F401
from nm_plugins.core import NMPattern, SparseConv2d, SparseLinear, is_valid_nm_mask, sparse_layers  # noqa: E402
from nm_plugins.mmdet import proxy_data  # noqa: E402
from nm_plugins.mmdet.reproduce import GRID, check_coco_root, config_path, imagenet_row  # noqa: E402
from nm_plugins.mmdet.train import check_datasets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "mmdet").glob("*.py"))


def _build(cfg_model) -> torch.nn.Module:
    init_default_scope("mmdet")
    return MODELS.build(cfg_model)


def _expected(cfg: Config) -> tuple[str, str]:
    conv = cfg.model.backbone.conv_cfg
    return conv["pattern"], conv["method"]


def test_every_grid_config_exists():
    for task, grid in GRID.items():
        for method, pattern in grid:
            for proxy in (False, True):
                assert (ROOT / config_path(task, method, pattern, proxy)).is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_backbone_convs_are_nm(path):
    """Every backbone conv is N:M with the config's pattern and method, except the RGB stem (3 channels)."""
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == "mmdet" and "nm_plugins.mmdet" in cfg.custom_imports["imports"]
    model = _build(cfg.model)
    pattern, method = _expected(cfg)
    convs = {n: m for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}
    dense = sorted(n for n, m in convs.items() if not isinstance(m, SparseConv2d))
    assert dense == ["conv1"], dense
    assert convs["conv1"].in_channels == 3
    for name, conv in convs.items():
        if name != "conv1":
            assert conv.pattern == NMPattern.parse(pattern) and conv.method == method, name
            assert is_valid_nm_mask(conv.mask(), conv.pattern)
    # downsample convs of the residual stages are N:M too
    assert any(n.endswith("downsample.0") for n in convs if n != "conv1")
    # heads stay dense unless asked
    assert all(not n.startswith(("neck", "rpn_head", "roi_head")) for n, _ in sparse_layers(model))
    if "_1x_coco" in path.name:  # the full configs: ResNet-50, backbone from our classification trainer
        assert cfg.model.backbone.depth == 50
        init = cfg.model.backbone.init_cfg
        # exactly where `IMAGENET_ROOT=... make reproduce-imagenet` writes the best epoch of the matching row
        from nm_plugins.train.classify import BEST_NAME
        row = imagenet_row(method, None if method == "dense" else pattern)
        assert (ROOT / "configs" / "imagenet" / f"{row}.yaml").is_file()
        if "IMAGENET_CKPT_DIR" not in os.environ:
            assert init["type"] == "Pretrained" and init["checkpoint"] == f"runs/imagenet/{row}/{BEST_NAME}"


@pytest.mark.parametrize("bad, message", [("3:2", "3:2"), ("2-4", "2-4"), ("0:4", "0:4")])
def test_bad_pattern_in_config_fails_clearly(bad, message):
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py"))
    cfg.merge_from_dict({"model.backbone.conv_cfg.pattern": bad})
    with pytest.raises(ValueError, match=f"N:M pattern.*{message}|{message}.*N:M"):
        _build(cfg.model)


def test_bad_method_in_config_fails_clearly():
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py"))
    cfg.merge_from_dict({"model.backbone.conv_cfg.method": "magic"})
    with pytest.raises(ValueError, match="unknown sparsity method 'magic'"):
        _build(cfg.model)


def test_srste_conv_builder():
    from mmcv.cnn import build_conv_layer
    init_default_scope("mmdet")
    conv = build_conv_layer(dict(type="SRSTEConv2d", pattern="4:8", method="ste"), 16, 8, 3, padding=1)
    assert isinstance(conv, SparseConv2d) and str(conv.pattern) == "4:8" and conv.method == "ste"
    out = conv(torch.randn(2, 16, 5, 5))
    assert out.shape == (2, 8, 5, 5)
    stem = build_conv_layer(dict(type="SRSTEConv2d", pattern="2:4"), 3, 8, 3)
    assert type(stem) is torch.nn.Conv2d
    with pytest.raises(ValueError, match="3 input channels not divisible by M=4"):
        build_conv_layer(dict(type="SRSTEConv2d", pattern="2:4", strict=True), 3, 8, 3)


def test_shared_fc_bbox_head_is_nm_on_request():
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py"))
    cfg.merge_from_dict({"model.roi_head.bbox_head.type": "NMShared2FCBBoxHead",
                         "model.roi_head.bbox_head.fc_sparsity": dict(pattern="2:8", method="srste")})
    model = _build(cfg.model)
    model.init_weights()
    fcs = model.roi_head.bbox_head.shared_fcs
    assert len(fcs) == 2 and all(isinstance(fc, SparseLinear) and str(fc.pattern) == "2:8" for fc in fcs)
    assert type(model.roi_head.bbox_head.fc_cls) is torch.nn.Linear  # the classifier stays dense
    cfg.merge_from_dict({"model.roi_head.bbox_head.fc_sparsity": dict(patern="2:4")})
    with pytest.raises(ValueError, match="unknown keys.*patern"):
        _build(cfg.model)


@pytest.mark.parametrize("wrap", ["plain", "model"])
def test_backbone_init_from_classification_checkpoint(tmp_path, wrap):
    """init_cfg=Pretrained loads a torchvision-style sparse ResNet-50 written by our trainers (weights_only)."""
    import torchvision
    from nm_plugins.core import sparsify
    from nm_plugins.runtime.training import save_checkpoint

    src = torchvision.models.resnet50()
    sparsify(src, "2:4", "srste", exclude=("conv1",))  # the RGB stem stays dense, as in our trainer and SRSTEConv2d
    with torch.no_grad():
        for _, layer in sparse_layers(src):
            layer.weight.normal_()
            layer.refresh_mask()
    state = src.state_dict()
    path = save_checkpoint(tmp_path / "model_best.pth", state if wrap == "plain" else {"model": state, "epoch": 3})
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/faster-rcnn_r50_fpn_srste-2-4_1x_coco.py"))
    cfg.model.backbone.init_cfg.checkpoint = str(path)
    backbone = _build(cfg.model.backbone)
    backbone.init_weights()
    got = dict(backbone.named_modules())
    for name, layer in sparse_layers(src):
        assert torch.equal(got[name].weight, layer.weight), name
        assert torch.equal(got[name].mask(), layer.mask()), name
    assert torch.equal(backbone.conv1.weight, src.conv1.weight)


def test_missing_checkpoint_names_the_path(tmp_path):
    from nm_plugins.mmdet.compat import load_local_checkpoint
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_local_checkpoint(str(tmp_path / "nope.pth"))


def test_missing_dataset_names_path_and_layout(tmp_path):
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/faster-rcnn_r50_fpn_dense_1x_coco.py"))
    cfg.merge_from_dict({"train_dataloader.dataset.data_root": str(tmp_path / "coco") + "/"})
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json.*annotations/instances_\{train,val\}2017"):
        check_datasets(cfg)
    with pytest.raises(FileNotFoundError, match=r"COCO_ROOT=.*coco.*instances_train2017\.json"):
        check_coco_root(str(tmp_path / "coco"))


def test_proxy_data_is_deterministic_coco(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    a = proxy_data.generate(tmp_path / "a", num_train=6, num_val=4, size=64, seed=3)
    b = proxy_data.generate(tmp_path / "b", num_train=6, num_val=4, size=64, seed=3)
    for split in ("train", "val"):
        ja = (a / "annotations" / f"instances_{split}.json").read_text()
        assert ja == (b / "annotations" / f"instances_{split}.json").read_text()
        coco = COCO(str(a / "annotations" / f"instances_{split}.json"))
        assert len(coco.getCatIds()) == 10 and len(coco.getImgIds()) == (6 if split == "train" else 4)
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= 2 * len(coco.getImgIds())  # several objects per image
        for ann in anns:
            m = mask_utils.decode(ann["segmentation"])
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == ann["bbox"]
            assert m.sum() == ann["area"]
        assert (a / split / "000000.png").is_file()
    stamp = a / "proxy_spec.json"
    before = stamp.stat().st_mtime_ns
    proxy_data.generate(tmp_path / "a", num_train=6, num_val=4, size=64, seed=3)  # cached: nothing rewritten
    assert stamp.stat().st_mtime_ns == before
    assert json.loads(stamp.read_text())["train"] == 6

"""Run with TRITON_INTERPRET=1 (the layers' CUDA path, Triton's interpreter on CPU tensors): builds each trainer's
model the way the trainer does — classification (timm adapter), the mmdetection plugin (a config using
SRSTEConv2d and the N:M bbox head), RAFT — runs one training step and prints, per model, the number of N:M
layers, the Triton launches the step made and whether every mask is valid N:M."""
import json
import os
import sys
from pathlib import Path

import torch

import nm_plugins as nm
from nm_plugins.core import mask_triton

ROOT = Path(__file__).resolve().parents[1]


def step(model, loss_fn):
    """Two optimizer steps; the launches counted are the second step's (every weight changed at the first)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(2):
        before = mask_triton.LAUNCHES[0]
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    layers = list(nm.sparse_layers(model))
    return {"layers": len(layers), "launches": mask_triton.LAUNCHES[0] - before,
            "implementations": sorted({nm.mask_implementation(layer.weight, layer.pattern) for _, layer in layers}),
            "valid": all(nm.is_valid_nm_mask(layer.mask(), layer.pattern) for _, layer in layers)}


def classification():
    from nm_plugins.train.classify import build_model
    from nm_plugins.train.config import load_config

    model = build_model(load_config(ROOT / "configs/imagenet_proxy/fashion_mnist.yaml"), num_classes=10, in_chans=1)
    return step(model, lambda m: m(torch.randn(2, 1, 28, 28)).logsumexp(1).mean())


def detection():
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import nm_plugins.mmdet  # noqa: F401

    register_all_modules()
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py"))
    model = MODELS.build(cfg.model)
    model.train()

    def loss(m):
        feats = m.extract_feat(torch.randn(1, 3, 64, 64))
        rois = torch.tensor([[0.0, 4.0, 4.0, 40.0, 40.0]])
        bbox = m.roi_head._bbox_forward(feats, rois)
        return sum(f.mean() for f in feats) + bbox["cls_score"].mean() + bbox["bbox_pred"].mean()

    return step(model, loss)


def optical_flow():
    from nm_plugins.raft import create

    model = create("small", pattern="2:4", method="srste")
    return step(model, lambda m: m(torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128), num_flow_updates=2)[-1].abs().mean())


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.manual_seed(0)
    print(json.dumps({name: fn() for name, fn in
                      [("classification", classification), ("mmdet", detection), ("raft", optical_flow)]}))
    sys.stdout.flush()

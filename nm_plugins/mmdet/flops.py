"""N:M-aware Params and FLOPs of whole mmdetection detectors (backbone, neck, RPN and RoI heads).

    python -m nm_plugins.mmdet.flops CONFIG [--shape 800 1333] [--cfg-options k=v ...]

mmdetection's ``tools/analysis_tools/get_flops.py`` counts every conv as dense (mmengine's counter sees
tensor shapes, not masks), so it reports the same FLOPs for dense, 2:4 and 1:4; use this instead. Counts
follow :func:`nm_plugins.core.count_params_flops`: one FLOP = one multiply-accumulate of a kept conv/linear
weight, pruned N:M weights left out of Params. The image is a zero tensor of ``(1, 3, H, W)``; two-stage RoI
heads run on ``test_cfg.rpn.max_per_img`` fixed proposals (the mask head on the first 100, as mmdet's tensor
mode does), so the count does not depend on what the RPN proposes for that image.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn

from nm_plugins.core import count_params_flops, sparse_layers


def _proposals(num: int, h: int, w: int, device) -> torch.Tensor:
    """``num`` fixed boxes tiling the image (x1, y1, x2, y2), of several sizes."""
    i = torch.arange(num, dtype=torch.float32, device=device)
    side = torch.tensor([16.0, 32.0, 64.0, 128.0], device=device)[(i % 4).long()]
    cx, cy = (i * 37.0) % w, (i * 53.0) % h
    return torch.stack([(cx - side / 2).clamp(0, w - 1), (cy - side / 2).clamp(0, h - 1),
                        (cx + side / 2).clamp(1, w), (cy + side / 2).clamp(1, h)], dim=1)


def num_proposals(model: nn.Module, default: int = 1000) -> int:
    """The RPN's test-time proposal count (``test_cfg.rpn.max_per_img``) of a two-stage detector."""
    cfg = getattr(getattr(model, "test_cfg", None), "get", lambda *_: None)("rpn")
    return int(cfg.get("max_per_img", default)) if cfg else default


def detector_forward(proposals: int | None = None):
    """A ``forward(model, x)`` for :func:`count_params_flops` running a detector's layers without
    post-processing: features, then the RPN head and the RoI heads on fixed proposals (two-stage), or the
    dense head (single-stage)."""
    from mmengine.structures import InstanceData

    def forward(model, x):
        feats = model.extract_feat(x)
        if getattr(model, "roi_head", None) is not None:
            if getattr(model, "rpn_head", None) is not None:
                model.rpn_head(feats)
            n = proposals if proposals is not None else num_proposals(model)
            boxes = [InstanceData(bboxes=_proposals(n, x.shape[-2], x.shape[-1], x.device)) for _ in range(len(x))]
            model.roi_head.forward(feats, boxes)
        elif getattr(model, "bbox_head", None) is not None:
            model.bbox_head(feats)
        return feats

    return forward


def count_detector(model: nn.Module, input_hw=(800, 1333), proposals: int | None = None) -> dict:
    """N:M-aware Params/FLOPs of a whole detector and of its backbone: ``{"params", "flops",
    "backbone_params", "backbone_flops", "proposals"}`` (see the module doc for the convention)."""
    n = proposals if proposals is not None else num_proposals(model)
    per_module: dict = {}
    params, flops = count_params_flops(model, (1, 3, *input_hw), forward=detector_forward(n), by_module=per_module)
    b_flops = sum(v for k, v in per_module.items() if k.startswith("backbone."))
    pruned = params - sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    b_total = sum(p.numel() for p in model.backbone.parameters())
    b_pruned = sum(l.weight.numel() - int(l.mask().sum()) for _, l in sparse_layers(model.backbone)
                   if l.nm_method.applies_mask)
    return {"params": params, "flops": flops, "backbone_params": b_total - b_pruned, "backbone_flops": b_flops,
            "pruned_params": -pruned, "proposals": n if getattr(model, "roi_head", None) is not None else 0}


def main(argv=None) -> int:
    """Command line: build the detector of CONFIG (no weights needed: counts depend on shapes and masks;
    ``--checkpoint`` loads trained ones) and print its counts as JSON."""
    from mmengine.config import DictAction

    from .export import build_detector, load_detector_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--shape", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--checkpoint", default=None, help="load these weights and masks first")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None)
    args = parser.parse_args(argv)
    _, model = build_detector(args.config, args.cfg_options)
    if args.checkpoint:
        load_detector_checkpoint(model, args.checkpoint)
    counts = count_detector(model.eval(), tuple(args.shape))
    print(json.dumps({"config": args.config, "shape": args.shape, **counts,
                      "params_m": counts["params"] / 1e6, "gflops": counts["flops"] / 1e9}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluate a checkpoint (ours, a timm/torchvision one, or the authors' released ones) on an ImageNet val folder.

    python -m nm_plugins.train.evaluate --model nm_resnet50_srste_2_4 --checkpoint FILE --imagenet-root DIR
        [--out result.json] [--batch-size 100] [--workers 8 (at most the CPU count)] [--device auto] [--amp] [--val-subset N]

Loads FILE into the timm model (the authors' layout is detected and converted by
``nm_plugins.timm.authors.convert_if_authors``), checks that every N:M mask is a valid N:M mask and equals the
mask of the loaded weights, then measures top-1/top-5 on ``DIR/val/<class>/`` (resize 256, center crop 224, as in
training). Prints one JSON object (also written to ``--out``); exit status 1 when a mask is not valid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from nm_plugins.core import nm_mask, sparse_layers
from nm_plugins.train.data import IMAGENET_LAYOUT, ImageNetLoader
from nm_plugins.runtime.training import init_distributed


def load_file(path: "str | Path", trust: bool = False):
    """torch.load of a local checkpoint file (weights_only unless ``trust``), with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (only local files are evaluated)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # unpickling errors come in several types
        if trust:
            raise
        raise ValueError(f"checkpoint {path} cannot be loaded with weights_only=True ({type(e).__name__}: {e}); "
                         "if you trust the file, pass --trust-checkpoint") from e


def model_state_dict(obj, model: torch.nn.Module) -> "tuple[dict, bool]":
    """(state dict for ``model``, authors' layout?) of a loaded file: the authors' files converted, else
    ``{"model"|"state_dict": ...}`` unwrapped and a ``module.`` prefix removed."""
    from nm_plugins.timm.authors import convert_if_authors, is_authors_checkpoint
    if is_authors_checkpoint(obj):
        return dict(convert_if_authors(obj, pattern=model.nm_config["pattern"], model=model)), True
    sd = obj
    for key in ("model", "state_dict"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError("checkpoint holds no state dict (a mapping of tensors, or one under 'model'/'state_dict')")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd), False


def _peek_state_dict(obj) -> Mapping:
    """The state dict inside a loaded file, unconverted (to read shapes), ``module.`` prefix removed."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        return {}
    return {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in obj.items()}


def mask_report(model: torch.nn.Module) -> dict:
    """Per model: N:M layer count, masks valid for their pattern, masks equal to the loaded weights' masks,
    kept share of N:M weights, share of the weights' squared magnitude that the masks prune."""
    layers = valid = follow = 0
    kept = total = 0
    pruned_sq = all_sq = 0.0
    bad = []
    with torch.no_grad():
        for name, layer in sparse_layers(model):
            m = layer.mask()
            layers += 1
            ok = layer.mask_is_valid(m)
            same = torch.equal(m.cpu(), nm_mask(layer.weight.detach().cpu(), layer.pattern, grouping=layer.grouping))
            valid += ok
            follow += same
            if not (ok and same):
                bad.append(name)
            kept += int(m.sum())
            total += m.numel()
            w2 = layer.weight.detach().float().pow(2)
            pruned_sq += float(w2[~m].sum())
            all_sq += float(w2.sum())
    return {"nm_layers": layers, "masks_valid": valid == layers, "masks_follow_weights": follow == layers,
            "bad_layers": bad, "kept_share": kept / max(total, 1),
            "pruned_weight_energy_share": pruned_sq / max(all_sq, 1e-30)}


def val_classes(root: "str | Path") -> list:
    """Class folder names of ``root/val`` (sorted, as ImageFolder numbers them); errors name the path."""
    val = Path(root) / "val"
    if not val.is_dir():
        raise FileNotFoundError(f"ImageNet root {root} has no val/ folder; expected {IMAGENET_LAYOUT}")
    classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{val} holds no class folders; expected {IMAGENET_LAYOUT}")
    return classes


def evaluate_checkpoint(model_name: str, checkpoint: "str | Path", root: "str | Path", batch_size: int = 100,
                        workers: int = 8, device: str = "auto", amp: bool = False, img_size: int = 224,
                        val_subset: "int | None" = None, trust: bool = False) -> dict:
    """Load ``checkpoint`` into timm model ``model_name``, check its masks, measure top-1/5 on ``root/val``."""
    import timm

    import nm_plugins.timm  # noqa: F401  (registers the nm_* names)
    from nm_plugins.train.classify import evaluate

    classes = val_classes(root)
    obj = load_file(checkpoint, trust)
    model = timm.create_model(model_name)
    clf = model.pretrained_cfg.get("classifier", "fc")
    peek = _peek_state_dict(obj)
    n_out = peek[f"{clf}.weight"].shape[0] if f"{clf}.weight" in peek else model.num_classes
    if n_out != len(classes):
        raise ValueError(f"the checkpoint's classifier {clf} has {n_out} outputs but {Path(root) / 'val'} has "
                         f"{len(classes)} class folders")
    if n_out != model.num_classes:
        model.reset_classifier(n_out)  # the classifier is a dense Linear in every nm_* model
    sd, authors = model_state_dict(obj, model)
    try:  # the core's sparse-into-dense guard (newer cores)
        from nm_plugins.core import check_sparse_state_dict
    except ImportError:
        check_sparse_state_dict = None
    if check_sparse_state_dict is not None:
        check_sparse_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    masks = mask_report(model)
    info = init_distributed(device)
    model.to(info.device)
    data = {"root": str(root), "img_size": img_size, "augment": False, "skip_bad_images": False, "train_subset": None,
            "val_subset": val_subset, "batch_size": batch_size, "workers": workers}
    loader = ImageNetLoader(data, "val", 0, 1, 0, pin_memory=info.device.type == "cuda")
    t0 = time.time()
    metrics = evaluate(model, loader, info, amp, channels_last=False)
    base = "resnet50" if "resnet50" in model_name and "x1_25" not in model_name else \
        ("resnet18" if "resnet18" in model_name else None)
    from nm_plugins.timm.authors import AUTHORS_ZOO_TOP1
    return {"model": model_name, "checkpoint": str(checkpoint), "authors_layout": authors,
            "pattern": model.nm_config["pattern"], "method": model.nm_config["method"], **metrics,
            "authors_zoo_top1": AUTHORS_ZOO_TOP1.get((base, model.nm_config["pattern"])) if authors else None,
            **masks, "device": str(info.device), "amp_bf16": amp and info.device.type == "cuda",
            "seconds": time.time() - t0}


def main(argv=None) -> int:
    """Command line; prints the JSON result, exit status 1 when a mask is invalid or stale, 2 on bad input."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="timm name, e.g. nm_resnet50_srste_2_4 or nm_resnet18_srste_2_4")
    p.add_argument("--checkpoint", required=True, help="local checkpoint file (ours, timm, or the authors' .pth/.tar)")
    p.add_argument("--imagenet-root", required=True, help=f"folder laid out as {IMAGENET_LAYOUT} (val/ is used)")
    p.add_argument("--out", default=None, help="write the JSON result here too")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader processes")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (default: fp32, as the authors evaluated)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--val-subset", type=int, default=None, help="evaluate the first N val images only")
    p.add_argument("--trust-checkpoint", action="store_true", help="torch.load without weights_only (runs pickled code)")
    args = p.parse_args(argv)
    try:
        result = evaluate_checkpoint(args.model, args.checkpoint, args.imagenet_root, args.batch_size, args.workers,
                                     args.device, args.amp, args.img_size, args.val_subset, args.trust_checkpoint)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    if args.out:
        from nm_plugins.runtime.results import write_results_json
        write_results_json(args.out, result, ensure_ascii=True)
    return 0 if result["masks_valid"] and result["masks_follow_weights"] else 1


if __name__ == "__main__":
    sys.exit(main())

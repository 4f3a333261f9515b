"""The Triton path equals the CPU path on every N:M layer shape of the four trainers' models.

    python -m benchmarks.gpu_equality --out DIR [--budget-s 150]                # on CUDA: the full set
    TRITON_INTERPRET=1 python -m benchmarks.gpu_equality --tiny --out DIR       # CPU: Triton's interpreter, a few shapes

The shapes come from the real models, built on the CPU through each trainer's own builder and config, once per
N:M pattern of that trainer's grid: ResNet-50 (configs/imagenet/resnet50_srste_*.yaml), the mmdet Faster R-CNN
R50-FPN (configs/mmdet/faster-rcnn_r50_fpn_srste-*_1x_coco.py), raft_large (2:4) and the translation
Transformer (configs/translation/wmt14_en_de_srste_*.yaml). Every distinct (weight shape, pattern) is one layer
case, run in fp32 and bf16, contiguous and (convolutions) channels_last, through a real SparseConv2d /
SparseLinear (SR-STE, decay 0.1 so the decay term is visible), once on the device under test (the Triton kernel)
and once on the CPU (the compiled C kernel or PyTorch), from the same weight and gradient:
  * mask and masked weight of the weight: bit for bit;
  * the weight after one SGD step (lr 1) with the SR-STE decay added at ``optimizer.step()``: bit for bit,
    else within torch.testing's tolerance for the dtype (the max difference is recorded);
  * the mask of the device's updated weight: bit for bit.
``--tiny``: the small configs of the same trainers (ResNet-18, the R18-w16 detector proxy, raft_small, the
translation proxy), two shapes per model with the output dimension cut to 3, so a CPU test can run it under
TRITON_INTERPRET=1 (the reference then runs with the variable off: the CPU path).

Writes ``<out>/<gpu>.json`` (``<out>/interpret.json`` under the interpreter) after every model, so a run stopped by
its budget keeps what it did; exit status 1 when any case differs, 0 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DECAY, LR = 0.1, 1.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _configs(folder: str, stem: str, patterns) -> list:
    return [(p, REPO / "configs" / folder / stem.format(p.replace(":", "_" if folder != "mmdet" else "-")))
            for p in patterns]


def model_specs(tiny: bool) -> dict:
    """Per model: [(pattern, builder argument)] — one build per N:M pattern of the trainer's grid."""
    if tiny:
        return {"resnet": [("2:4", REPO / "configs/imagenet/resnet18_srste_2_4.yaml")],
                "mmdet": [("2:4", REPO / "configs/mmdet/faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py")],
                "raft": [("2:4", "small")],
                "translation": [("2:4", REPO / "configs/translation/proxy_catalogs_en_de.yaml")]}
    return {"resnet": _configs("imagenet", "resnet50_srste_{}.yaml", ("2:4", "4:8", "2:8", "1:4")),
            "mmdet": _configs("mmdet", "faster-rcnn_r50_fpn_srste-{}_1x_coco.py", ("2:4", "4:8", "2:8", "1:4")),
            "raft": [("2:4", "large")],
            "translation": _configs("translation", "wmt14_en_de_srste_{}.yaml", ("2:4", "4:8"))}


def build(model: str, arg, pattern: str) -> torch.nn.Module:
    """The trainer's own model (CPU, fp32) for one spec."""
    if model == "resnet":
        from nm_plugins.train.classify import build_model
        from nm_plugins.train.config import load_config
        return build_model(load_config(arg), num_classes=1000, in_chans=3)
    if model == "mmdet":
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config

        import nm_plugins.mmdet  # noqa: F401  (registers the N:M layers)
        register_all_modules()
        return MODELS.build(Config.fromfile(str(arg)).model)
    if model == "raft":
        from nm_plugins.raft import create
        return create(arg, pattern=pattern, method="srste")
    if model == "translation":
        from nm_plugins.translation.config import load_config
        from nm_plugins.translation.model import build_model
        cfg = load_config(arg, [f"sparsity.pattern='{pattern}'"])
        return build_model(cfg, vocab_size=cfg["data"]["vocab_size"])
    raise ValueError(f"unknown model {model!r}")


def layer_shapes(model: str, tiny: bool) -> list:
    """Sorted distinct [shape, pattern] of the N:M layers of ``model`` over its patterns (tiny: two shapes, the
    smallest with kernel positions and the smallest without, output dimension cut to 3)."""
    from nm_plugins.core import sparse_layers
    found = set()
    for pattern, arg in model_specs(tiny)[model]:
        with cpu_path(os.environ.get("TRITON_INTERPRET") == "1"):  # the build computes every mask once
            net = build(model, arg, pattern)
        found |= {(tuple(layer.weight.shape), str(layer.pattern)) for _, layer in sparse_layers(net)
                  if layer.method != "dense"}
        del net
    shapes = sorted(found, key=lambda s: (len(s[0]), s[0], s[1]))
    if tiny:
        def size(case):
            return torch.Size(case[0]).numel()
        spatial = sorted((c for c in shapes if len(c[0]) == 4 and c[0][2] * c[0][3] > 1), key=size)[:1]
        flat = sorted((c for c in shapes if len(c[0]) == 2 or c[0][2] * c[0][3] == 1), key=size)[:1]
        shapes = [((min(s[0], 3), *s[1:]), p) for s, p in spatial + flat]
    return [[list(s), p] for s, p in shapes]


@contextlib.contextmanager
def cpu_path(interpret: bool):
    """The CPU implementation for CPU tensors (under the interpreter, Triton is what CPU tensors would take)."""
    if not interpret:
        yield
        return
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield
    finally:
        os.environ["TRITON_INTERPRET"] = "1"


def _layer(shape, pattern, dtype, channels_last, device, weight):
    from nm_plugins.core import SparseConv2d, SparseLinear
    if len(shape) == 2:
        layer = SparseLinear(shape[1], shape[0], bias=False, pattern=pattern, method="srste", decay=DECAY)
    else:
        layer = SparseConv2d(shape[1], shape[0], tuple(shape[2:]), bias=False, pattern=pattern, method="srste",
                             decay=DECAY)
    layer = layer.to(device=device, dtype=dtype)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _run(shape, pattern, dtype, channels_last, device, weight, grad) -> dict:
    """Mask, masked weight, the SR-STE-updated weight and its mask, through a real N:M layer on ``device``."""
    from nm_plugins.core import mask_implementation
    from nm_plugins.core.mask_triton import LAUNCHES
    launches = LAUNCHES[0]
    layer = _layer(shape, pattern, dtype, channels_last, device, weight)
    mask = layer.refresh_mask().clone()
    masked = layer.masked_weight().detach().clone()
    opt = torch.optim.SGD([layer.weight], lr=LR)
    (layer.masked_weight() * grad.to(device)).sum().backward()
    opt.step()
    updated = layer.weight.detach().clone()
    return {"mask": mask.cpu(), "masked": masked.cpu(), "updated": updated.cpu(), "layer": layer,
            "implementation": mask_implementation(layer.weight, pattern), "launches": LAUNCHES[0] - launches}


def run_case(shape, pattern, dtype_name, channels_last, device, interpret) -> dict:
    """One case: the device's Triton path against the CPU path (see the module doc); what differs, if anything."""
    from nm_plugins.core import nm_mask
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(zlib.crc32(repr((list(shape), pattern)).encode()))  # same data every run
    weight = torch.randn(shape, generator=gen).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    dev = _run(shape, pattern, dtype, channels_last, device, weight, grad)
    with cpu_path(interpret):
        ref = _run(shape, pattern, dtype, channels_last, "cpu", weight, grad)
        ref_mask_after = nm_mask(dev["updated"], pattern)
    mask_after = dev["layer"].mask().cpu()
    diff = (dev["updated"].float() - ref["updated"].float()).abs().max().item()
    problems = []
    if dev["implementation"] != "triton" or dev["launches"] == 0:
        problems.append(f"device path took {dev['implementation']} ({dev['launches']} Triton launches)")
    if ref["implementation"] == "triton":
        problems.append("reference took the Triton path")
    for key, a, b in (("mask", dev["mask"], ref["mask"]), ("masked weight", dev["masked"], ref["masked"]),
                      ("mask after the step", mask_after, ref_mask_after)):
        if not torch.equal(a, b):
            problems.append(f"{key}: {int((a != b).sum())} entries differ")
    try:
        torch.testing.assert_close(dev["updated"], ref["updated"], rtol=None, atol=None)
    except AssertionError:
        problems.append(f"SR-STE update: max difference {diff:.3g} over the {dtype_name} tolerance")
    return {"shape": list(shape), "pattern": pattern, "dtype": dtype_name,
            "layout": "channels_last" if channels_last else "contiguous",
            "update_bitwise": bool(torch.equal(dev["updated"], ref["updated"])), "update_max_diff": diff,
            "ok": not problems, "problems": problems}


def cases(shapes: list) -> list:
    """(shape, pattern, dtype, channels_last) of every case of the shapes."""
    return [(s, p, d, cl) for s, p in shapes for d in DTYPES for cl in ((False, True) if len(s) == 4 else (False,))]


def _env(device) -> dict:
    env = {"torch": torch.__version__, "device": str(device)}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["gpu"], env["cuda"] = torch.cuda.get_device_name(0), torch.version.cuda
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "results" / "gpu-equality"))
    ap.add_argument("--tiny", action="store_true", help="two shapes per model from the small configs (CPU tests)")
    ap.add_argument("--models", default="resnet,mmdet,raft,translation", help="comma-separated subset")
    ap.add_argument("--budget-s", type=float, default=None, help="start no case after this many seconds")
    args = ap.parse_args(argv)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if torch.cuda.is_available() and not interpret:
        device = torch.device("cuda")
    elif interpret:
        device = torch.device("cpu")
    else:
        print("gpu-equality: no CUDA GPU and TRITON_INTERPRET is not 1: nothing to compare. Skipped.")
        return 0
    from benchmarks.gpu_env import gpu_slug
    name = "interpret" if interpret else gpu_slug(torch.cuda.get_device_name(0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    record = {"env": _env(device), "tiny": args.tiny, "interpret": interpret, "decay": DECAY, "lr": LR,
              "models": {}, "cases": 0, "failed": 0, "skipped": 0}
    for model in [m for m in args.models.split(",") if m]:
        if args.budget_s is not None and time.time() - t0 > args.budget_s:
            record["models"][model] = {"not_run": "budget spent before its models were built"}
            record.setdefault("models_not_run", []).append(model)
            (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"[gpu-equality] {model}: not run (budget)", flush=True)
            continue
        shapes = layer_shapes(model, args.tiny)
        results, todo = [], cases(shapes)
        for shape, pattern, dtype, cl in todo:
            if args.budget_s is not None and time.time() - t0 > args.budget_s:
                break
            results.append(run_case(shape, pattern, dtype, cl, device, interpret))
        bad = [r for r in results if not r["ok"]]
        record["models"][model] = {"shapes": shapes, "cases": len(results), "not_run": len(todo) - len(results),
                                   "failed": len(bad), "update_bitwise": sum(r["update_bitwise"] for r in results),
                                   "update_max_diff": max((r["update_max_diff"] for r in results), default=0.0),
                                   "failures": bad[:20], "seconds": time.time() - t0}
        record["cases"] += len(results)
        record["failed"] += len(bad)
        record["skipped"] += len(todo) - len(results)
        record["seconds"] = time.time() - t0
        (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        m = record["models"][model]
        print(f"[gpu-equality] {model}: {len(shapes)} layer shapes, {m['cases']} cases, {m['failed']} differ, "
              f"{m['not_run']} not run (budget); SR-STE updates bit for bit in {m['update_bitwise']}, max difference "
              f"{m['update_max_diff']:.3g} ({time.time() - t0:.0f} s)", flush=True)
        for r in bad[:5]:
            print(f"   {r['shape']} {r['pattern']} {r['dtype']} {r['layout']}: {'; '.join(r['problems'])}")
    print(f"wrote {out / (name + '.json')}: {record['cases']} cases, {record['failed']} differ, {record['skipped']} not run"
          + (f"; models not run (budget): {', '.join(record['models_not_run'])}" if record.get("models_not_run") else ""))
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

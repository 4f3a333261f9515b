"""``make gpu-smoke``: every reproduction's real-data code path on the GPUs for a few dozen steps, dense and
SR-STE 2:4 interleaved in one run, with the figures checked.

    python -m benchmarks.gpu_smoke [--trainers classify,mmdet,raft] [--out results/gpu-smoke] [--nproc N]
    python -m benchmarks.gpu_smoke --toy --device cpu      # the same code at toy size on the CPU (tests)

On CUDA it writes generated data in the real layouts into a temporary folder (an ImageNet class-folder tree
of JPEGs; a COCO 2017 layout, ``annotations/instances_train2017.json`` + JPEGs; FlyingChairs ``.ppm``/``.flo``
with ``FlyingChairs_train_val.txt``), then starts itself under torchrun over all visible GPUs (NCCL). Each
process builds, per trainer, the dense and the SR-STE 2:4 model through the trainer's own builders and data
code, wraps them in DDP and alternates chunks of steps on the same batches, dense then SR-STE, so that both
see the same machine state:
  * classify: ``configs/imagenet/resnet50_srste_2_4.yaml`` (paper recipe: global batch 256, SGD, bf16 autocast,
    channels_last), batches from ``build_loaders`` with ``data.decode: gpu``, steps by ``classify.train_one_epoch``;
    the ImageNet loader's own images/s (PIL workers and device decoding) measured alone next to the model's;
  * mmdet: Faster R-CNN R50-FPN 1x configs (dense / SR-STE 2:4 backbone) through an mmengine Runner built by
    ``nm_plugins.mmdet.train.build_runner``: mmdetection's COCO dataset and pipeline, ``model.train_step`` with
    ``AmpOptimWrapper`` (bf16), 2 images per GPU;
  * raft: ``configs/raft/chairs.yaml`` (raft_large, crop 368x496, bf16 autocast, correlation in fp32, AdamW,
    one-cycle, clipping), torchvision's FlyingChairs reader with the RAFT augmentation, 2 pairs per GPU.
Rank 0 writes ``<out>/<gpu>.json`` (flat ``metrics`` for ``ci.check`` and ``benchmarks.compare``) and ``.md``:
images/s per trainer and method, the SR-STE/dense step-time ratio (median of the paired chunks), peak memory,
first/last loss, mask validity; then the run is checked against ``ci/thresholds/gpu_smoke_<gpu>.yaml``.
Without CUDA (and without ``--device cpu``) it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from nm_plugins.runtime.results import write_results_json, write_text

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("classify", "mmdet", "raft")
METHODS = ("dense", "srste")


def sizes(toy: bool) -> dict:
    """Per trainer: data size, batches per chunk (``k``) and rounds (the first is a warm-up, not timed)."""
    if toy:
        return {"classify": dict(config="resnet18_srste_2_4.yaml", img=32, batch=4, k=2, rounds=3, jpeg=(40, 48), workers=0),
                "mmdet": dict(config="faster-rcnn_r18-w16_fpn_{}_proxy.py", size=96, per_gpu=2, k=2, rounds=3),
                "raft": dict(size="small", crop=[128, 128], image=(144, 176), per_gpu=2, k=2, rounds=3, workers=0)}
    return {"classify": dict(config="resnet50_srste_2_4.yaml", img=224, batch=256, k=3, rounds=11, jpeg=(375, 500), workers=8),
            "mmdet": dict(config="faster-rcnn_r50_fpn_{}_1x_coco.py", size=640, per_gpu=2, k=4, rounds=9),
            "raft": dict(size="large", crop=[368, 496], image=(384, 512), per_gpu=2, k=4, rounds=9, workers=4)}


# ------------------------------------------------------------------------------------------- data
def write_coco(root: Path, images: int, size: int, seed: int = 0) -> Path:
    """A COCO 2017 layout of generated scenes (Fashion-MNIST objects on textures) as JPEGs:
    ``annotations/instances_{train,val}2017.json``, ``train2017/``, ``val2017/``."""
    from PIL import Image

    from nm_plugins.data import FASHION_MNIST_CLASSES, load_fashion_mnist
    from nm_plugins.mmdet.proxy_data import compose_split
    cats = [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    fm_images, fm_labels = load_fashion_mnist("test")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train2017", images), ("val2017", 2)):
        imgs, anns = compose_split(fm_images, fm_labels, count, size, seed + len(split))
        (root / split).mkdir(exist_ok=True)
        coco = {"info": {"description": "gpu-smoke COCO layout"}, "licenses": [], "categories": cats, "images": [],
                "annotations": []}
        for i, (img, img_anns) in enumerate(zip(imgs, anns)):
            name = f"{i:012d}.jpg"
            Image.fromarray(img).save(root / split / name, format="JPEG", quality=90)
            coco["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for a in img_anns:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "iscrowd": 0, **a})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def write_chairs(root: Path, pairs: int, hw: tuple, seed: int = 0) -> Path:
    """FlyingChairs layout: ``FlyingChairs/data/NNNNN_img1.ppm``, ``_img2.ppm``, ``_flow.flo`` and the split
    file (all train but the last 2). The second image is the first shifted by a whole-pixel (dx, dy) and the
    flow is that shift, so the loss can fall within a few dozen steps."""
    from PIL import Image
    data = root / "FlyingChairs" / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = hw
    for i in range(1, pairs + 1):
        coarse = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
        img1 = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
        dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
        img2 = np.roll(img1, (dy, dx), axis=(0, 1))
        Image.fromarray(img1).save(data / f"{i:05d}_img1.ppm")
        Image.fromarray(np.ascontiguousarray(img2)).save(data / f"{i:05d}_img2.ppm")
        flow = np.empty((h, w, 2), np.float32)
        flow[..., 0], flow[..., 1] = dx, dy
        with open(data / f"{i:05d}_flow.flo", "wb") as f:  # Middlebury .flo
            np.array([202021.25], np.float32).tofile(f)
            np.array([w, h], np.int32).tofile(f)
            flow.tofile(f)
    (root / "FlyingChairs" / "FlyingChairs_train_val.txt").write_text("".join("1\n" if i < pairs - 2 else "2\n" for i in range(pairs)))
    return root


def write_data(root: Path, toy: bool, world: int, trainers) -> Path:
    """Every trainer's generated data under ``root`` (enough for ``k`` batches per process)."""
    s = sizes(toy)
    if "classify" in trainers:
        from benchmarks.loader import write_imagenet_jpegs
        c = s["classify"]
        write_imagenet_jpegs(root / "imagenet", c["k"] * c["batch"], classes=8, sizes=(c["jpeg"], c["jpeg"][::-1]), val=1)
    if "mmdet" in trainers:
        m = s["mmdet"]
        write_coco(root / "coco", m["k"] * m["per_gpu"] * world, m["size"])
    if "raft" in trainers:
        r = s["raft"]
        write_chairs(root / "chairs", r["k"] * r["per_gpu"] * world + 2, r["image"])
    return root


# ------------------------------------------------------------------------------------ the trainers
class Pair:
    """The dense and the SR-STE variant of one trainer: ``step(method)`` runs one chunk (``k`` steps on the
    prefetched batches) and returns (images, mean loss); ``models[method]`` is the unwrapped model."""

    images_per_chunk = 0

    def __init__(self):
        self.models, self.steps = {}, {}

    def step(self, method):
        return self.steps[method]()


def _ddp(model, info):
    if info.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


def classify_pair(data: Path, toy: bool, info) -> tuple[Pair, dict]:
    """ResNet-50 (toy: ResNet-18) dense / SR-STE 2:4 through the classification trainer's code."""
    from benchmarks.loader import images_per_s
    from nm_plugins.train.classify import build_model, lr_factor, train_one_epoch
    from nm_plugins.train.config import load_config
    from nm_plugins.train.data import build_loaders
    c = sizes(toy)["classify"]
    cuda = info.device.type == "cuda"
    workers = min(c["workers"], max((os.cpu_count() or 1) // info.world_size - 1, 0))
    world = info.world_size  # data.batch_size is the global batch: a multiple of the processes
    batch, loader_batch = max(c["batch"] // world, 1) * world, max(c["batch"] // 4 // world, 1) * world
    base = [f"data.root={data / 'imagenet'}", f"data.img_size={c['img']}", f"data.batch_size={batch}",
            f"data.workers={workers}", "optim.warmup_epochs=0", "train.progress=false", f"train.device={info.device.type}"]
    cfgs = {m: load_config(REPO / "configs" / "imagenet" / c["config"], base + [f"sparsity.method={m}", "data.decode=gpu"])
            for m in METHODS}
    cfg = cfgs["srste"]
    loader, _, classes, chans, _ = build_loaders(cfg, info.rank, info.world_size, 0, pin_memory=cuda, device=info.device)
    batches = [b for _, b in zip(range(c["k"]), loader)]
    extra = {"loader": {}}
    for decode in ("cpu", "gpu"):  # the loader alone, per process, over its whole shard
        lcfg = load_config(REPO / "configs" / "imagenet" / c["config"],
                           base + [f"data.decode={decode}", f"data.batch_size={loader_batch}"])
        lo, _, _, _, _ = build_loaders(lcfg, info.rank, info.world_size, 0, pin_memory=cuda, device=info.device)
        extra["loader"][decode] = images_per_s(lo, 64 if toy else 4096, device=info.device)
        extra["loader"][decode]["workers"] = workers
    pair = Pair()
    pair.images_per_chunk = sum(len(b[1]) for b in batches) * info.world_size
    for m in METHODS:
        model = build_model(cfgs[m], classes, chans).to(info.device)
        if cuda and cfg["train"]["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=cfg["optim"]["lr"], momentum=cfg["optim"]["momentum"],
                              nesterov=cfg["optim"]["nesterov"], weight_decay=cfg["optim"]["weight_decay"])
        total = c["k"] * c["rounds"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, o=cfg["optim"]: lr_factor(s, total, {**o, "epochs": 1}))
        net = _ddp(model, info)
        pair.models[m] = model

        def step(net=net, opt=opt, sched=sched, cfg=cfgs[m]):
            stats = train_one_epoch(net, batches, opt, sched, info, cfg, 0, "")
            return stats["loss"]
        pair.steps[m] = step
    return pair, extra


def mmdet_pair(data: Path, toy: bool, info, work: Path) -> tuple[Pair, dict]:
    """Faster R-CNN (toy: the R18-w16 proxy config) dense / SR-STE 2:4 through an mmengine Runner."""
    from nm_plugins.mmdet.train import build_runner
    m = sizes(toy)["mmdet"]
    root = f"{data / 'coco'}/"
    pair = Pair()
    pair.images_per_chunk = m["k"] * m["per_gpu"] * info.world_size
    for method, name in (("dense", "dense"), ("srste", "srste-2-4")):
        opts = {"train_dataloader.batch_size": m["per_gpu"], "train_dataloader.num_workers": 2,
                "train_dataloader.persistent_workers": False, "default_hooks.logger.interval": 10**6,
                "custom_hooks": [], "default_hooks.checkpoint.interval": 10**6, "log_level": "WARNING"}
        for key in ("train", "val", "test"):
            split = "val2017" if key != "train" else "train2017"
            opts.update({f"{key}_dataloader.dataset.data_root": root,
                         f"{key}_dataloader.dataset.ann_file": f"annotations/instances_{split}.json",
                         f"{key}_dataloader.dataset.data_prefix": {"img": f"{split}/"}})
        if toy:
            opts["train_dataloader.num_workers"] = 0
        else:
            opts.update({"model.backbone.init_cfg": None, "optim_wrapper.type": "AmpOptimWrapper",
                         "optim_wrapper.dtype": "bfloat16"})
        if info.device.type != "cuda":
            opts["optim_wrapper.type"] = "OptimWrapper"
            opts.pop("optim_wrapper.dtype", None)
        runner = build_runner(str(REPO / "configs" / "mmdet" / m["config"].format(name)), opts, str(work / f"mmdet_{method}"),
                              launcher="pytorch" if info.world_size > 1 else "none")
        runner._train_loop = runner.build_train_loop(runner._train_loop)
        runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
        runner._init_model_weights()
        batches = [b for _, b in zip(range(m["k"]), runner.train_loop.dataloader)]
        pair.models[method] = getattr(runner.model, "module", runner.model)

        def step(runner=runner, batches=batches):
            runner.model.train()
            losses = [runner.model.train_step(b, optim_wrapper=runner.optim_wrapper)["loss"] for b in batches]
            return float(torch.stack([loss.detach().float() for loss in losses]).mean())
        pair.steps[method] = step
    return pair, {}


def raft_pair(data: Path, toy: bool, info) -> tuple[Pair, dict]:
    """raft_large (toy: raft_small) dense / SR-STE 2:4 through the RAFT trainer's data, model and loss."""
    import contextlib

    from torch.utils.data import DataLoader

    from nm_plugins.raft.datasets import train_set
    from nm_plugins.raft.evaluate import _collate
    from nm_plugins.raft.metrics import sequence_loss
    from nm_plugins.raft.model import create
    from nm_plugins.raft.train import _epoch_indices, correlation_in_fp32, load_config, set_decay_mode
    r = sizes(toy)["raft"]
    cfg = load_config(REPO / "configs" / "raft" / "chairs.yaml")
    before = os.environ.get("CHAIRS_ROOT")
    os.environ["CHAIRS_ROOT"] = str(data / "chairs")
    try:
        dataset = train_set("chairs", r["crop"])  # the file list is read here
    finally:
        if before is None:
            del os.environ["CHAIRS_ROOT"]
        else:
            os.environ["CHAIRS_ROOT"] = before
    indices = _epoch_indices(len(dataset), r["per_gpu"], 0, 0, info.rank, info.world_size)
    loader = DataLoader(dataset, batch_size=r["per_gpu"], sampler=indices, drop_last=True, num_workers=r["workers"],
                        collate_fn=_collate, pin_memory=info.device.type == "cuda")
    batches = [tuple(x.to(info.device) for x in b) for _, b in zip(range(r["k"]), loader)]
    amp = cfg["train"]["amp"] and info.device.type == "cuda"
    pair = Pair()
    pair.images_per_chunk = r["k"] * r["per_gpu"] * info.world_size  # image pairs
    ocfg, total = cfg["optim"], r["k"] * r["rounds"]
    for method in METHODS:
        model = create(r["size"], cfg["model"]["pattern"], method, cfg["model"]["decay"]).to(info.device)
        set_decay_mode(model, cfg["model"]["decay_mode"])
        if cfg["train"]["corr_fp32"]:
            correlation_in_fp32(model)
        net = _ddp(model, info)
        opt = torch.optim.AdamW(model.parameters(), lr=ocfg["lr"], weight_decay=ocfg["weight_decay"], eps=ocfg["eps"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=ocfg["lr"], total_steps=total + 1, pct_start=ocfg["pct_start"],
                                                    cycle_momentum=False, anneal_strategy="linear")
        pair.models[method] = model

        def step(net=net, model=model, opt=opt, sched=sched):
            net.train()
            losses = []
            for img1, img2, flow, valid in batches:
                with (torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()):
                    preds = net(img1, img2, num_flow_updates=cfg["train"]["iters"])
                loss, _ = sequence_loss(preds, flow, valid, cfg["loss"]["gamma"], cfg["loss"]["max_flow"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg["clip"])
                opt.step()
                sched.step()
                losses.append(loss.detach())
            return float(torch.stack(losses).mean())
        pair.steps[method] = step
    return pair, {}


# ------------------------------------------------------------------------------------- measuring
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(pair: Pair, rounds: int, device) -> dict:
    """Alternate one chunk of each method per round; round 0 is a warm-up. Per method: chunk seconds,
    losses, images/s (median chunk), peak memory; the SR-STE/dense ratio of paired chunks."""
    out = {m: {"seconds": [], "losses": [], "peak_mem_gib": 0.0} for m in METHODS}
    for r in range(rounds):
        for m in METHODS:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            loss = pair.step(m)
            _sync(device)
            seconds = time.perf_counter() - t0
            out[m]["losses"].append(loss)
            if r > 0 or rounds == 1:
                out[m]["seconds"].append(seconds)
            if device.type == "cuda":
                out[m]["peak_mem_gib"] = max(out[m]["peak_mem_gib"], torch.cuda.max_memory_allocated(device) / 2**30)
    from nm_plugins.core import sparse_layers
    for m in METHODS:
        o = out[m]
        o["images_per_s"] = pair.images_per_chunk / statistics.median(o["seconds"])
        o["loss_first"], o["loss_last"] = o["losses"][0], o["losses"][-1]
        o["loss_finite"] = all(math.isfinite(x) for x in o["losses"])
        o["loss_fell"] = o["loss_finite"] and o["loss_last"] < o["loss_first"]
        layers = list(sparse_layers(pair.models[m]))
        o["sparse_layers"] = sum(1 for _, layer in layers if layer.method != "dense")
        o["masks_valid"] = all(layer.mask_is_valid(layer.mask()) for _, layer in layers if layer.method != "dense")
    paired = [s / d for s, d in zip(out["srste"]["seconds"], out["dense"]["seconds"])]
    out["srste_over_dense"] = statistics.median(paired)
    out["paired_ratios"] = paired
    out["images_per_chunk"] = pair.images_per_chunk
    return out


def flatten(results: dict) -> dict:
    """The flat ``metrics`` of a run (what ci.check and benchmarks.compare read)."""
    m = {}
    for trainer, r in results["trainers"].items():
        if "error" in r:
            continue
        m[f"{trainer}/srste_over_dense"] = r["srste_over_dense"]
        for method in METHODS:
            o = r[method]
            for k in ("images_per_s", "peak_mem_gib", "loss_first", "loss_last"):
                m[f"{trainer}/{method}/{k}"] = o[k]
            m[f"{trainer}/{method}/images_per_s_per_gpu"] = o["images_per_s"] / results["world_size"]
            m[f"{trainer}/{method}/loss_finite"] = float(o["loss_finite"])
            m[f"{trainer}/{method}/loss_fell"] = float(o["loss_fell"])
        m[f"{trainer}/srste/masks_valid"] = float(r["srste"]["masks_valid"] and r["srste"]["sparse_layers"] > 0)
        for decode, lo in r.get("loader", {}).items():  # per process, i.e. per GPU
            m[f"{trainer}/loader_{decode}_decode/images_per_s"] = lo["images_per_s"]
    return m


def markdown(results: dict) -> str:
    """Readable tables of a run."""
    env = results["env"]
    lines = [f"# GPU smoke run on {env['gpu']} x {results['world_size']}" + (" (TOY sizes)" if results["toy"] else ""),
             f"torch {env['torch']}, CUDA {env.get('cuda')}, Triton {env.get('triton')}; dense and SR-STE 2:4 interleaved "
             f"chunk by chunk on the same batches (first round a warm-up); images/s over all processes", "",
             "| trainer | dense images/s | SR-STE images/s | SR-STE/dense step | peak GiB dense / SR-STE | loss dense first→last | loss SR-STE first→last | masks valid |",
             "|---|---|---|---|---|---|---|---|"]
    for t, r in results["trainers"].items():
        if "error" in r:
            lines.append(f"| {t} | failed: {r['error'][:120]} | | | | | | |")
            continue
        d, s = r["dense"], r["srste"]
        lines.append(f"| {t} | {d['images_per_s']:.1f} | {s['images_per_s']:.1f} | {r['srste_over_dense']:.3f} | "
                     f"{d['peak_mem_gib']:.1f} / {s['peak_mem_gib']:.1f} | {d['loss_first']:.3f}→{d['loss_last']:.3f} | "
                     f"{s['loss_first']:.3f}→{s['loss_last']:.3f} | {s['masks_valid']} ({s['sparse_layers']} layers) |")
    loader = results["trainers"].get("classify", {}).get("loader")
    if loader:
        model = results["trainers"]["classify"]["dense"]["images_per_s"] / results["world_size"]
        lines += ["", f"ImageNet loader alone, per process (per GPU): PIL in {loader['cpu']['workers']} workers "
                      f"{loader['cpu']['images_per_s']:.0f} images/s, device decoding {loader['gpu']['images_per_s']:.0f} "
                      f"images/s; the dense model trains {model:.0f} images/s per GPU."]
    return "\n".join(lines) + "\n"


def worker(args) -> int:
    """One torchrun process (or the only one): build, interleave, write (rank 0)."""
    threads = torch.get_num_threads()
    try:
        return _worker(args)
    finally:
        torch.set_num_threads(threads)


def _worker(args) -> int:
    from benchmarks.throughput import environment, gpu_slug
    from nm_plugins.runtime.training import init_distributed
    info = init_distributed(args.device)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:  # toy runs on shared CPU cores: one thread is far faster than oversubscribed ones
        torch.set_num_threads(1)
    torch.manual_seed(0)
    data, toy = Path(args.data), args.toy
    results = {"env": environment(info.device), "toy": toy, "world_size": info.world_size, "trainers": {}}
    with tempfile.TemporaryDirectory() as work:
        for trainer in args.trainers.split(","):
            t0 = time.time()
            try:
                if trainer == "classify":
                    pair, extra = classify_pair(data, toy, info)
                elif trainer == "mmdet":
                    pair, extra = mmdet_pair(data, toy, info, Path(work))
                elif trainer == "raft":
                    pair, extra = raft_pair(data, toy, info)
                else:
                    raise ValueError(f"unknown trainer {trainer!r}: expected some of {', '.join(TRAINERS)}")
                res = interleave(pair, sizes(toy)[trainer]["rounds"], info.device)
                res.update(extra)
                del pair
            except ValueError as exc:
                if "unknown trainer" in str(exc):
                    raise
                res = {"error": f"{type(exc).__name__}: {exc}"}
            except Exception as exc:  # one trainer failing still leaves the others' figures
                import traceback
                traceback.print_exc()
                res = {"error": f"{type(exc).__name__}: {exc}"}
            res["seconds_total"] = time.time() - t0
            results["trainers"][trainer] = res
            if info.rank == 0:
                print(f"[gpu-smoke] {trainer}: " + (res.get("error") or f"SR-STE/dense {res['srste_over_dense']:.3f}, "
                      f"images/s dense {res['dense']['images_per_s']:.1f} / SR-STE {res['srste']['images_per_s']:.1f}"),
                      flush=True)
            if info.device.type == "cuda":
                torch.cuda.empty_cache()
    if info.rank == 0:
        results["metrics"] = flatten(results)
        slug = gpu_slug(results["env"]["gpu"]) + ("_toy" if toy else "")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_results_json(out / f"{slug}.json", results, default=str, ensure_ascii=True)
        write_text(out / f"{slug}.md", markdown(results))
        print(markdown(results))
        print(f"wrote {out / (slug + '.json')} and {out / (slug + '.md')}")
    if info.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def check(out: Path) -> int:
    """ci.check of the run against ci/thresholds/gpu_smoke_<gpu>.yaml (0 when no thresholds file fits)."""
    from benchmarks.throughput import gpu_slug
    slug = gpu_slug(torch.cuda.get_device_name(0))
    thresholds = REPO / "ci" / "thresholds" / f"gpu_smoke_{slug}.yaml"
    if not thresholds.is_file():
        print(f"no thresholds file {thresholds.relative_to(REPO)} for this GPU: figures not checked")
        return 0
    from nm_plugins.verdicts.check import main as check_main
    return check_main([str(out / f"{slug}.json"), str(thresholds)])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated subset of classify,mmdet,raft")
    ap.add_argument("--out", default=str(REPO / "results" / "gpu-smoke"))
    ap.add_argument("--device", default="auto", help="auto (CUDA, else skip) or cpu (runs on the CPU: toy checks)")
    ap.add_argument("--toy", action="store_true", help="toy sizes (what the CPU tests run)")
    ap.add_argument("--nproc", type=int, default=None, help="processes (default: every visible GPU; 1 on the CPU)")
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)      # set for the torchrun children
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    if not cuda and args.device != "cpu":
        print("gpu-smoke: no CUDA GPU here, nothing to run (the trainers' GPU paths are only smoke-tested on CUDA; "
              "tests/test_gpu_smoke.py runs this code at toy size on the CPU). Skipped.")
        return 0
    device = "cuda" if cuda else "cpu"
    nproc = args.nproc or (torch.cuda.device_count() if cuda else 1)
    trainers = [t for t in args.trainers.split(",") if t]
    unknown = [t for t in trainers if t not in TRAINERS]
    if unknown:
        print(f"gpu-smoke: unknown trainer(s) {unknown}: expected some of {', '.join(TRAINERS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        t0 = time.time()
        write_data(Path(tmp), args.toy, nproc, trainers)
        print(f"[gpu-smoke] generated data in {time.time() - t0:.0f}s; {nproc} process(es) on {device}", flush=True)
        child = ["--worker", "--data", tmp, "--device", device, "--trainers", ",".join(trainers), "--out", args.out] + \
                (["--toy"] if args.toy else [])
        if cuda or nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "benchmarks.gpu_smoke"] + child
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
            rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        else:
            rc = main(child)
    if rc:
        print(f"gpu-smoke: the run exited with {rc}", file=sys.stderr)
        return rc
    return check(Path(args.out)) if cuda and not args.toy else 0


if __name__ == "__main__":
    sys.exit(main())

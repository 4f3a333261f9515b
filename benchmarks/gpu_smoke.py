"""``make gpu-smoke``: every reproduction's trainer, through its public entry point and config, on real-layout
data on the GPUs for a few dozen steps, dense and SR-STE 2:4 alternating, with the figures checked.

    python -m benchmarks.gpu_smoke [--trainers classify,mmdet,raft,translation] [--out results/gpu-smoke] [--nproc N]
    python -m benchmarks.gpu_smoke --toy --device cpu      # the same code at toy size on the CPU (tests)

On CUDA it writes generated data in the real layouts into a temporary folder (an ImageNet class-folder tree
of JPEGs; a COCO 2017 layout, ``annotations/instances_train2017.json`` + JPEGs; FlyingChairs ``.ppm``/``.flo``
with ``FlyingChairs_train_val.txt``; WMT14 ``train.{en,de}`` and ``newstest201{3,4}.{en,de}``), then starts
itself under torchrun over all visible GPUs (NCCL). Each process trains, per trainer and round, one dense run
then one SR-STE 2:4 run (same config, seed and data but the method) through the trainer's entry point, which
records each step's seconds (device synchronised) and loss (``train.step_times``; mmdet: mmengine's
per-iteration times):
  * classify: ``nm_plugins.train.classify.run`` on ``configs/imagenet/resnet50_srste_2_4.yaml`` (paper recipe:
    global batch 256, SGD, bf16 autocast, channels_last) with ``data.decode: gpu``; the ImageNet loader's own
    images/s (PIL workers and device decoding, ``build_loaders``) measured alone next to the model's;
  * mmdet: ``Runner.from_cfg(cfg).train()`` (``nm_plugins.mmdet.train.build_runner``) on the Faster R-CNN
    R50-FPN 1x configs (dense / SR-STE 2:4 backbone): mmdetection's COCO dataset and pipeline, the configs'
    hooks, ``AmpOptimWrapper`` (bf16), 2 images per GPU;
  * raft: ``nm_plugins.raft.train.run`` on ``configs/raft/chairs.yaml`` (raft_large, crop 368x496, bf16 autocast,
    correlation in fp32, AdamW, one-cycle, clipping), torchvision's FlyingChairs reader with the RAFT
    augmentation, 2 pairs per GPU;
  * translation: ``nm_plugins.translation.train.run`` on ``configs/translation/wmt14_en_de_srste_2_4.yaml``
    (Transformer-base, bf16 autocast, Adam), one batch of ``data.max_tokens`` per GPU and step.
Rank 0 writes, after every trainer, ``<out>/<gpu>.json`` (flat ``metrics`` for ``ci.check`` and
``benchmarks.compare``) and ``.md``: images/s per trainer and method, the SR-STE/dense step-time ratio (median
over rounds of the two runs' median step times after the warm-up steps), peak memory, first/last loss of a run,
mask validity; then the run is checked against ``ci/thresholds/gpu_smoke_<gpu>.yaml``. Without CUDA (and
without ``--device cpu``) it says so and exits 0.
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

from nm_plugins.runtime.results import write_results_json, write_text

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("classify", "mmdet", "raft", "translation")
METHODS = ("dense", "srste")


def sizes(toy: bool) -> dict:
    """Per trainer: data size, steps per run (``steps``; classify and mmdet: ``epochs`` x ``k`` batches per
    epoch and process) and the first ``warmup`` steps of each run left out of its timing."""
    if toy:
        return {"classify": dict(config="resnet18_srste_2_4.yaml", img=32, batch=4, k=2, epochs=4, warmup=1,
                                 jpeg=(40, 48), workers=0),
                "mmdet": dict(config="faster-rcnn_r18-w16_fpn_{}_proxy.py", size=96, per_gpu=2, k=2, epochs=3, warmup=1),
                "raft": dict(size="small", crop=[128, 128], image=(144, 176), per_gpu=2, k=2, steps=6, warmup=1,
                             workers=0),
                "translation": dict(model=["model.d_model=32", "model.ffn=64", "model.heads=2", "model.enc_layers=1",
                                           "model.dec_layers=1", "data.max_tokens=200"], sentences=60, words=300,
                                    steps=8, warmup=1)}
    return {"classify": dict(config="resnet50_srste_2_4.yaml", img=224, batch=256, k=3, epochs=4, warmup=3,
                             jpeg=(375, 500), workers=8),
            "mmdet": dict(config="faster-rcnn_r50_fpn_{}_1x_coco.py", size=640, per_gpu=2, k=4, epochs=3, warmup=3),
            "raft": dict(size="large", crop=[368, 496], image=(384, 512), per_gpu=2, k=4, steps=12, warmup=3,
                         workers=4),
            "translation": dict(model=[], sentences=800, words=20000, steps=12, warmup=3)}


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
    """Every trainer's generated data under ``root`` (``k`` batches per process: one epoch)."""
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
        write_chairs(root / "chairs", r["k"] * r["per_gpu"] * world + 2, r["image"])  # the runs cycle over them
    if "translation" in trainers:
        t = s["translation"]
        write_wmt(root / "wmt14", t["sentences"] * world, t["words"])
    return root


def write_wmt(root: Path, sentences: int, words: int, seed: int = 0) -> Path:
    """A WMT14 En-De layout (``train.{en,de}``, ``newstest2013.*``, ``newstest2014.*``; 8 sentences each for
    the last two) of generated sentences: 5 to 30 pseudo-words from a vocabulary of ``words`` per language,
    the German side a word-by-word image of the English one, so there is something to learn."""
    rng = np.random.default_rng(seed)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ei", "au", "en", "er")]

    def lexicon():
        return ["".join(rng.choice(syllables, rng.integers(1, 4))) + str(i % 7 if i % 11 == 0 else "")
                for i in range(words)]
    en, de = lexicon(), lexicon()
    rank = rng.zipf(1.3, size=sentences * 40) % words  # word frequencies roughly as in text
    pairs, pos = [], 0
    for _ in range(sentences + 16):
        n = int(rng.integers(5, 31))
        ids, pos = rank[pos:pos + n], pos + n
        pairs.append((" ".join(en[i] for i in ids), " ".join(de[i] for i in ids)))
    root.mkdir(parents=True, exist_ok=True)
    for name, chunk in (("train", pairs[16:]), ("newstest2013", pairs[:8]), ("newstest2014", pairs[8:16])):
        for lang, side in (("en", 0), ("de", 1)):
            (root / f"{name}.{lang}").write_text("".join(p[side] + "\n" for p in chunk), encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------ the trainers
# Each ``*_trainer`` returns (run, images per step over all processes, extra figures): ``run(method)`` trains one
# run of that trainer for ``method`` (dense / srste) through its public entry point and config, with the
# trainer's ``train.step_times`` record on (mmdet: mmengine's per-iteration times), and returns
# {"seconds": [per step], "loss": [per step], "nm_layers" (N:M layers of the model, whatever their method),
# "masks_valid" (fraction of the masking layers with a valid N:M mask)}.
def classify_trainer(data: Path, toy: bool, info, work: Path, loader_images: int | None = None):
    """ResNet-50 (toy: ResNet-18) through ``nm_plugins.train.classify.run`` with the paper recipe's config, one
    epoch = ``k`` steps of the global batch; the ImageNet loader's images/s alone (``build_loaders``, PIL and
    device decoding) over ``loader_images`` images per process (default 64 toy, 4096 real)."""
    from benchmarks.loader import images_per_s
    from nm_plugins.train.classify import run
    from nm_plugins.train.config import load_config
    from nm_plugins.train.data import build_loaders
    c = sizes(toy)["classify"]
    cuda = info.device.type == "cuda"
    workers = min(c["workers"], max((os.cpu_count() or 1) // info.world_size - 1, 0))
    world = info.world_size  # data.batch_size is the global batch: a multiple of the processes
    batch, loader_batch = max(c["batch"] // world, 1) * world, max(c["batch"] // 4 // world, 1) * world
    config = REPO / "configs" / "imagenet" / c["config"]
    base = [f"data.root={data / 'imagenet'}", f"data.img_size={c['img']}", f"data.batch_size={batch}",
            f"data.workers={workers}", "optim.warmup_epochs=0", "train.progress=false", f"train.device={info.device.type}"]
    # the same images every epoch (no augmentation: it runs in the loader, outside the timed steps), so the loss
    # falls within a few epochs when the path trains
    run_opts = ["data.decode=gpu", "data.augment=false", f"optim.epochs={c['epochs']}", "train.eval_every=1000000",
                "train.checkpoint=false", "train.step_times=true"]
    cfgs = {m: load_config(config, base + run_opts + [f"sparsity.method={m}", f"train.out_dir={work / 'classify' / m}"])
            for m in METHODS}
    extra = {"loader": {}}
    for decode in ("cpu", "gpu"):  # the loader alone, per process, over its whole shard
        lcfg = load_config(config, base + [f"data.decode={decode}", f"data.batch_size={loader_batch}"])
        lo, _, _, _, _ = build_loaders(lcfg, info.rank, info.world_size, 0, pin_memory=cuda, device=info.device)
        extra["loader"][decode] = images_per_s(lo, loader_images or (64 if toy else 4096), device=info.device)
        extra["loader"][decode]["workers"] = workers

    def run_method(method):
        summary = run(cfgs[method])
        return dict(summary["step_times"], nm_layers=summary["sparse_layer_count"], masks_valid=summary["masks_valid"])
    return run_method, batch, extra


def mmdet_trainer(data: Path, toy: bool, info, work: Path):
    """Faster R-CNN R50-FPN 1x (toy: the R18-w16 proxy) from our configs through an mmengine Runner
    (``nm_plugins.mmdet.train.build_runner``, i.e. ``Runner.from_cfg``) and ``runner.train()``: mmdetection's
    COCO dataset and pipeline, the configs' hooks, ``AmpOptimWrapper`` bf16 on CUDA, ``per_gpu`` images per GPU,
    ``epochs`` x ``k`` iterations, no validation and no checkpoint. Step seconds: mmengine's per-iteration
    ``train/time`` less ``train/data_time`` (the loss is read back, a device synchronisation, before the time
    is taken)."""
    from nm_plugins.core import sparse_layers
    from nm_plugins.mmdet.train import build_runner
    from nm_plugins.runtime.training import masks_valid
    m = sizes(toy)["mmdet"]
    root = f"{data / 'coco'}/"
    opts = {"train_dataloader.batch_size": m["per_gpu"], "train_dataloader.num_workers": 0 if toy else 2,
            "train_dataloader.persistent_workers": False, "train_cfg.max_epochs": m["epochs"],
            "val_cfg": None, "val_dataloader": None, "val_evaluator": None, "default_hooks.logger.interval": 10**6,
            "default_hooks.checkpoint.interval": 10**6, "default_hooks.checkpoint.save_last": False,
            "randomness": {"seed": 0}, "log_level": "WARNING"}
    for key, split in (("train", "train2017"), ("test", "val2017")):
        opts.update({f"{key}_dataloader.dataset.data_root": root,
                     f"{key}_dataloader.dataset.ann_file": f"annotations/instances_{split}.json",
                     f"{key}_dataloader.dataset.data_prefix": {"img": f"{split}/"}})
    opts["test_evaluator.ann_file"] = f"{root}annotations/instances_val2017.json"
    if not toy:
        opts["model.backbone.init_cfg"] = None  # no ImageNet backbone on the lent GPU: random init
    if info.device.type == "cuda":
        opts.update({"optim_wrapper.type": "AmpOptimWrapper", "optim_wrapper.dtype": "bfloat16"})

    def run_method(method):
        name = "dense" if method == "dense" else "srste-2-4"
        runner = build_runner(str(REPO / "configs" / "mmdet" / m["config"].format(name)), opts,
                              str(work / "mmdet" / method), launcher="pytorch" if info.world_size > 1 else "none")
        runner.train()
        hub, n = runner.message_hub, runner.iter  # this run's iterations: the last n of each history

        def history(key):
            return np.asarray(hub.get_scalar(key).data[0][-n:], dtype=float)
        model = getattr(runner.model, "module", runner.model)
        return {"seconds": (history("train/time") - history("train/data_time")).tolist(),
                "loss": history("train/loss").tolist(), "nm_layers": len(list(sparse_layers(model))),
                "masks_valid": masks_valid(model)}
    return run_method, m["per_gpu"] * info.world_size, {}


def raft_trainer(data: Path, toy: bool, info, work: Path):
    """raft_large (toy: raft_small) through ``nm_plugins.raft.train.run`` with ``configs/raft/chairs.yaml``
    (crop 368x496, bf16 autocast with the correlation in fp32, AdamW, one-cycle, clipping) on the generated
    FlyingChairs (``CHAIRS_ROOT`` set for the run), ``per_gpu`` pairs per GPU, ``steps`` steps, no validation."""
    from nm_plugins.raft.train import load_config, run
    r = sizes(toy)["raft"]
    extra = {"out_dir": str(work / "raft" / "{tag}"), "device": info.device.type,
             "model": {"size": r["size"]}, "data": {"crop": r["crop"], "batch_size": r["per_gpu"] * info.world_size,
                                                    "workers": r["workers"]},
             "optim": {"steps": r["steps"]}, "eval": {"sets": []},
             "train": {"log_every": 10**6, "val_every": 10**6, "ckpt_every": 10**6, "sad_every": 10**6,
                       "step_times": True}}

    def run_method(method):
        cfg = load_config(REPO / "configs" / "raft" / "chairs.yaml", [f"model.method={method}"], extra=extra)
        before = os.environ.get("CHAIRS_ROOT")
        os.environ["CHAIRS_ROOT"] = str(data / "chairs")
        try:
            res = run(cfg)
        finally:
            if before is None:
                del os.environ["CHAIRS_ROOT"]
            else:
                os.environ["CHAIRS_ROOT"] = before
        return dict(res["step_times"], nm_layers=res["sparse_layer_count"], masks_valid=res["masks_valid"])
    return run_method, r["per_gpu"] * info.world_size, {}


def translation_trainer(data: Path, toy: bool, info, work: Path):
    """Transformer-base (toy: a 1+1-layer width-32 one) through ``nm_plugins.translation.train.run`` with
    ``configs/translation/wmt14_en_de_srste_2_4.yaml`` (bf16 autocast on CUDA, Adam, label smoothing) on the
    generated WMT14 layout: one batch of ``data.max_tokens`` per step and process (``optim.update_freq=1``),
    warm-up 4 steps (the recipe's 4000 would keep the lr near 0), ``steps`` steps, the test set decoded at the end
    as in every run. Its BPE vocabulary is what the generated text supports (fewer pieces than WMT's 32k, so the
    dense tied output layer is a smaller share of a step than on WMT)."""
    from nm_plugins.translation.config import load_config
    from nm_plugins.translation.train import run
    t = sizes(toy)["translation"]
    config = REPO / "configs" / "translation" / "wmt14_en_de_srste_2_4.yaml"
    base = t["model"] + [f"data.root={data / 'wmt14'}", f"data.cache_dir={work / 'translation' / 'cache'}",
                         "optim.update_freq=1", "optim.warmup_steps=4", f"optim.max_steps={t['steps']}",
                         f"train.device={info.device.type}", "train.progress=false", "train.log_every=1000000",
                         "train.eval_every=1000000", "train.ckpt_every=1000000", "train.keep_last=0",
                         "train.average_last=0", "train.step_times=true", "decode.examples=0"]
    cfgs = {m: load_config(config, base + [f"sparsity.method={m}", f"train.out_dir={work / 'translation' / m}"])
            for m in METHODS}

    def run_method(method):
        summary = run(cfgs[method])
        if info.world_size > 1:  # only rank 0 finishes a run (test decoding) and has its summary
            torch.distributed.barrier()
        if not info.is_main:
            return None
        return dict(summary["step_times"], nm_layers=summary["sparse_layer_count"], masks_valid=summary["masks_valid"])
    # tokens per step vary with the batch: images/s here is sentence batches (steps) per second
    return run_method, info.world_size, {"unit": "steps (one batch of data.max_tokens per process)"}


# ------------------------------------------------------------------------------------- measuring
def measure(run_method, rounds: int, warmup: int, images_per_step: int, device) -> dict:
    """``rounds`` rounds of one dense run then one SR-STE run (same seed, data and config but the method; a run
    that returns None, on a process other than rank 0, is not counted). Per
    run: the median step seconds after the first ``warmup`` steps. Per method: images/s (median run), peak
    memory, the losses of the last run (first / last quarter of its steps), mask validity; the SR-STE/dense ratio:
    the median over rounds of the two runs' median step times."""
    out = {m: {"step_seconds": [], "peak_mem_gib": 0.0} for m in METHODS}
    for _ in range(rounds):
        for m in METHODS:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rec = run_method(m)
            if rec is None:  # a process without the run's summary (the trainer finishes on rank 0)
                continue
            timed = rec["seconds"][warmup:]
            if not timed:
                raise ValueError(f"{len(rec['seconds'])} steps, none after the {warmup} warm-up steps")
            out[m]["step_seconds"].append(statistics.median(timed))
            out[m].update(losses=rec["loss"], sparse_layers=rec["nm_layers"] if m != "dense" else 0,  # layers masking
                          masks_valid=rec["masks_valid"] == 1.0)
            if device.type == "cuda":
                out[m]["peak_mem_gib"] = max(out[m]["peak_mem_gib"], torch.cuda.max_memory_allocated(device) / 2**30)
    if not out["dense"]["step_seconds"]:
        return {"on_rank_0_only": True}
    for m in METHODS:
        o = out[m]
        o["images_per_s"] = images_per_step / statistics.median(o["step_seconds"])
        quarter = max(len(o["losses"]) // 4, 1)
        o["loss_first"], o["loss_last"] = statistics.fmean(o["losses"][:quarter]), statistics.fmean(o["losses"][-quarter:])
        o["loss_finite"] = all(math.isfinite(x) for x in o["losses"])
        o["loss_fell"] = o["loss_finite"] and o["loss_last"] < o["loss_first"]
    paired = [s / d for s, d in zip(out["srste"]["step_seconds"], out["dense"]["step_seconds"])]
    out["srste_over_dense"] = statistics.median(paired)
    out["paired_ratios"] = paired
    out["images_per_step"] = images_per_step
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
             f"torch {env['torch']}, CUDA {env.get('cuda')}, Triton {env.get('triton')}; dense and SR-STE 2:4 runs "
             f"alternating ({results['rounds']} round(s)), each through the trainer's entry point; step = median "
             f"step time after the warm-up steps; images/s over all processes", "",
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
    if "unit" in results["trainers"].get("translation", {}):
        lines += ["", f"translation: the images/s columns count {results['trainers']['translation']['unit']} per second."]
    loader = results["trainers"].get("classify", {}).get("loader")
    if loader:
        model = results["trainers"]["classify"]["dense"]["images_per_s"] / results["world_size"]
        lines += ["", f"ImageNet loader alone, per process (per GPU): PIL in {loader['cpu']['workers']} workers "
                      f"{loader['cpu']['images_per_s']:.0f} images/s, device decoding {loader['gpu']['images_per_s']:.0f} "
                      f"images/s; the dense model trains {model:.0f} images/s per GPU."]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> None:
    """``<out>/<gpu>.json`` (with the flat ``metrics``) and ``.md`` of the trainers run so far."""
    from benchmarks.gpu_env import gpu_slug
    results["metrics"] = flatten(results)
    slug = gpu_slug(results["env"]["gpu"]) + ("_toy" if results["toy"] else "")
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(out / f"{slug}.json", results, default=str, ensure_ascii=True)
    write_text(out / f"{slug}.md", markdown(results))
    print(f"wrote {out / (slug + '.json')} and {out / (slug + '.md')}", flush=True)


def worker(args) -> int:
    """One torchrun process (or the only one): run every trainer's rounds, write (rank 0)."""
    threads = torch.get_num_threads()
    try:
        return _worker(args)
    finally:
        torch.set_num_threads(threads)


def _worker(args) -> int:
    from benchmarks.gpu_env import environment
    from nm_plugins.runtime.training import init_distributed
    info = init_distributed(args.device)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:  # toy runs on shared CPU cores: one thread is far faster than oversubscribed ones
        torch.set_num_threads(1)
    torch.manual_seed(0)
    data, toy = Path(args.data), args.toy
    rounds = args.rounds or (2 if toy else 3)
    results = {"env": environment(info.device), "toy": toy, "world_size": info.world_size, "rounds": rounds,
               "trainers": {}}
    with tempfile.TemporaryDirectory() as work:
        for trainer in args.trainers.split(","):
            t0 = time.time()
            try:
                if trainer == "classify":
                    run_method, images, extra = classify_trainer(data, toy, info, Path(work), args.loader_images)
                elif trainer == "mmdet":
                    run_method, images, extra = mmdet_trainer(data, toy, info, Path(work))
                elif trainer == "raft":
                    run_method, images, extra = raft_trainer(data, toy, info, Path(work))
                elif trainer == "translation":
                    run_method, images, extra = translation_trainer(data, toy, info, Path(work))
                else:
                    raise ValueError(f"unknown trainer {trainer!r}: expected some of {', '.join(TRAINERS)}")
                res = measure(run_method, rounds, sizes(toy)[trainer]["warmup"], images, info.device)
                res.update(extra)
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
                write(results, Path(args.out))  # after every trainer: a run stopped later keeps these figures
            if info.device.type == "cuda":
                torch.cuda.empty_cache()
    if info.rank == 0:
        print(markdown(results))
    if info.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def check(out: Path) -> int:
    """ci.check of the run against ci/thresholds/gpu_smoke_<gpu>.yaml (0 when no thresholds file fits)."""
    from benchmarks.gpu_env import gpu_slug
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
    ap.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated subset of {','.join(TRAINERS)}")
    ap.add_argument("--out", default=str(REPO / "results" / "gpu-smoke"))
    ap.add_argument("--device", default="auto", help="auto (CUDA, else skip) or cpu (runs on the CPU: toy checks)")
    ap.add_argument("--toy", action="store_true", help="toy sizes (what the CPU tests run)")
    ap.add_argument("--nproc", type=int, default=None, help="processes (default: every visible GPU; 1 on the CPU)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per trainer, each one dense run then one SR-STE run (default 3; toy 2)")
    ap.add_argument("--loader-images", type=int, default=None, help="images per process for the loader-alone figure")
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)      # set for the torchrun children
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be >= 1")
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
                (["--toy"] if args.toy else []) + (["--rounds", str(args.rounds)] if args.rounds else []) + \
                (["--loader-images", str(args.loader_images)] if args.loader_images else [])
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

"""N:M classification trainer (SR-STE / STE / ASP / dense) for timm models on ImageNet or Fashion-MNIST.

    python -m nm_plugins.train.classify --config configs/imagenet/resnet50_srste_2_4.yaml [section.key=value ...]
    torchrun --nproc_per_node 8 -m nm_plugins.train.classify --config ... data.root=/data/imagenet
    python -m nm_plugins.train.classify --config ... --resume      # continue from OUT_DIR/checkpoint.pt
    python -m nm_plugins.train.classify --config ... --resume-from PATH

Writes to ``train.out_dir`` (default runs/NAME): checkpoint.pt (the LAST epoch: full resume state, atomic, every
epoch), model_best.pth (the weights and masks of the epoch with the best val top-1, ``{"model": state_dict, "epoch",
"top1", "config"}``; what the mmdet R50 configs load as backbone: runs/imagenet/<row>/model_best.pth), log.jsonl and
tb/ (loss, top-1/5, lr, SAD per layer and model, throughput) and summary.json (final accuracy, Params, FLOPs, SAD).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nm_plugins.core import SADTracker, count_params_flops, sparse_layers
from nm_plugins.timm import asp_prune, create_model
from nm_plugins.train.config import load_config
from nm_plugins.train.data import build_loaders
from nm_plugins.runtime.cli import trainer_parser
from nm_plugins.runtime.results import write_json
from nm_plugins.runtime.training import (RunLogger, StepTimes, init_distributed, load_checkpoint, masks_digest,
                                      masks_valid, rng_state, sad_log_entry, save_checkpoint, seed_everything,
                                      set_rng_state, shutdown_distributed)

LAST_NAME = "checkpoint.pt"  # last epoch, full resume state (--resume)
BEST_NAME = "model_best.pth"  # best val top-1: weights + masks (backbone of the mmdet R50 configs)


def lr_factor(step: int, steps_per_epoch: int, optim: dict, asp_prune_epoch=None) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up from 0, then cosine to 0 at the end. With ASP
    the cosine restarts (without warm-up) at the pruning epoch for the fine-tuning phase."""
    epochs = optim["epochs"]
    end = epochs * steps_per_epoch
    start, warmup = 0, optim["warmup_epochs"] * steps_per_epoch
    if asp_prune_epoch is not None:
        cut = asp_prune_epoch * steps_per_epoch
        if step >= cut:
            start, warmup = cut, 0
        else:
            end = cut
    t = step - start
    if t < warmup:
        return (t + 1) / warmup
    span = max(end - start - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(t - warmup, span) / span))


def _model_name(cfg: dict) -> str:
    return cfg["model"]["name"]


def build_model(cfg: dict, num_classes: int, in_chans: int) -> nn.Module:
    """The N:M timm model of a config (ASP models start with method ``dense``)."""
    sp = cfg["sparsity"]
    return create_model(_model_name(cfg), pattern=sp["pattern"], method=sp["method"], decay=sp["decay"],
                        exclude=tuple(sp["exclude"]), keep_classifier_dense=sp["keep_classifier_dense"],
                        stem=sp["stem"], checkpoint_path=cfg["model"]["checkpoint"], num_classes=num_classes,
                        method_args=sp.get("method_args") or None,
                        in_chans=in_chans, **cfg["model"]["kwargs"])


def _prune_for_asp(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """ASP's pruning step; momentum of pruned weights is cleared so that they stay exactly 0."""
    asp_prune(model)
    if optimizer is None:
        return
    for _, layer in sparse_layers(model):
        buf = optimizer.state.get(layer.weight, {}).get("momentum_buffer")
        if buf is not None:
            buf.mul_(layer.mask())


def _reduce(values: list, info) -> list:
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    if info.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model: nn.Module, loader, info, amp: bool, channels_last: bool) -> dict:
    """Top-1 / top-5 accuracy (%) and loss over the whole split, summed over processes."""
    model.eval()
    loss = correct1 = correct5 = count = 0.0
    with torch.no_grad():
        for x, y, _ in loader:
            if y.numel() == 0:
                continue
            x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(info.device, amp):
                out = model(x)
            loss += float(F.cross_entropy(out.float(), y, reduction="sum"))
            top5 = out.topk(min(5, out.shape[1]), dim=1).indices
            correct1 += float((top5[:, 0] == y).sum())
            correct5 += float((top5 == y[:, None]).any(1).sum())
            count += y.numel()
    loss, correct1, correct5, count = _reduce([loss, correct1, correct5, count], info)
    n = max(count, 1)
    return {"loss": loss / n, "top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "images": int(count)}


def train_one_epoch(model, loader, optimizer, scheduler, info, cfg, epoch: int, bar_desc: str,
                    step_times: "StepTimes | None" = None) -> dict:
    """One pass over the training shard; returns loss, top-1/5 (%), lr, skipped images and throughput (each
    step's seconds and loss also go to ``step_times`` when given)."""
    model.train()
    t0 = time.time()
    amp, channels_last = cfg["train"]["amp"], cfg["train"]["channels_last"] and info.device.type == "cuda"
    smoothing = cfg["optim"]["label_smoothing"]
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, correct1, correct5, count
    skipped = 0
    bar = tqdm(total=len(loader), desc=bar_desc, leave=False, dynamic_ncols=True,
               disable=not (info.is_main and cfg["train"]["progress"]))
    for x, y, n_skipped in loader:
        skipped += n_skipped
        if y.numel() == 0:
            bar.update(1)
            continue
        if step_times is not None:
            step_times.start()
        x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(info.device, amp):
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step_times is not None:
            step_times.stop(loss.detach())
        with torch.no_grad():
            top5 = out.topk(min(5, out.shape[1]), dim=1).indices
            sums += torch.stack([loss.detach().double() * y.numel(), (top5[:, 0] == y).sum().double(),
                                 (top5 == y[:, None]).any(1).sum().double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=info.device)])
        bar.update(1)
        if bar.n % 10 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    loss_sum, c1, c5, count = _reduce(sums.tolist(), info)
    skipped = int(_reduce([skipped], info)[0])
    seconds = time.time() - t0
    n = max(count, 1)
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "lr": optimizer.param_groups[0]["lr"],
            "skipped_images": skipped, "images_per_s": count / max(seconds, 1e-9), "seconds": seconds}


def run(cfg: dict, resume: "str | Path | bool | None" = None) -> dict:
    """Train and evaluate one configuration; returns (and on rank 0 writes) the run summary."""
    info = init_distributed(cfg["train"]["device"])
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    seed = int(cfg["train"]["seed"])
    seed_everything(seed)
    out_dir = Path(cfg["train"]["out_dir"] or Path("runs") / cfg["name"])
    sp, optim = cfg["sparsity"], cfg["optim"]
    asp_epoch = sp["asp_prune_epoch"] if sp["method"] == "asp" else None

    train_loader, val_loader, num_classes, in_chans, input_size = build_loaders(
        cfg, info.rank, info.world_size, seed, pin_memory=info.device.type == "cuda", device=info.device)
    model = build_model(cfg, num_classes, in_chans)
    if info.is_main and cfg["train"]["progress"]:
        print(model.nm_report, file=sys.stderr)
    model.to(info.device)
    channels_last = cfg["train"]["channels_last"] and info.device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                                nesterov=optim["nesterov"], weight_decay=optim["weight_decay"])
    steps = len(train_loader)
    if steps == 0:
        raise ValueError(f"data.batch_size {cfg['data']['batch_size']} is larger than the training set of this process")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, optim, asp_epoch))
    tracker = SADTracker(model)
    history, start_epoch = [], 0
    step_times = StepTimes(cfg["train"]["step_times"], info.device)

    ckpt_path, best_path = out_dir / LAST_NAME, out_dir / BEST_NAME
    if resume:
        path = ckpt_path if resume is True else Path(resume)
        state = load_checkpoint(path, map_location=info.device)
        start_epoch = int(state["epoch"])
        if asp_epoch is not None and start_epoch >= asp_epoch:
            _prune_for_asp(model, None)  # the fixed masks themselves come from the checkpoint
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        tracker.load_state_dict(state["sad"])
        history = list(state["history"])
        set_rng_state(state["rng"])
        if info.is_main:
            print(f"resumed {path} after epoch {start_epoch}", file=sys.stderr)

    net = model
    if info.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    logger = RunLogger(out_dir, enabled=info.is_main)
    epochs, stop_after = optim["epochs"], cfg["train"]["stop_after_epoch"]
    t_start = time.time()
    for epoch in range(start_epoch, epochs):
        if asp_epoch is not None and epoch == asp_epoch:
            _prune_for_asp(model, optimizer)
        train_loader.set_epoch(epoch)
        stats = {"epoch": epoch + 1, "train": train_one_epoch(net, train_loader, optimizer, scheduler, info, cfg, epoch,
                                                              f"{cfg['name']} {epoch + 1}/{epochs}", step_times)}
        if (epoch + 1) % cfg["train"]["eval_every"] == 0 or epoch + 1 == epochs:
            stats["val"] = evaluate(net, val_loader, info, cfg["train"]["amp"], channels_last)
        sad_record = tracker.record()
        stats.update(sad_log_entry(sad_record))
        stats["method"] = model.nm_config["method"]
        history.append({"epoch": epoch + 1, "train": stats["train"], "val": stats.get("val"),
                        "sad_init": sad_record["model"]["sad_init_norm"], "sad_prev": sad_record["model"]["sad_prev_norm"]})
        logger.log((epoch + 1) * steps, stats)
        if info.is_main and cfg["train"]["checkpoint"] and _is_best(history, asp_epoch or 0):
            save_checkpoint(best_path, {"model": model.state_dict(), "epoch": epoch + 1, "top1": stats["val"]["top1"],
                                        "config": cfg})
        if info.is_main and cfg["train"]["checkpoint"]:
            save_checkpoint(ckpt_path, {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "sad": tracker.state_dict(),
                                        "rng": rng_state(), "history": history, "config": cfg})
        if info.world_size > 1:
            dist.barrier()
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < epochs:
            logger.close()
            return {"status": "stopped", "epoch": epoch + 1, "out_dir": str(out_dir)}
    logger.close()

    params, flops = count_params_flops(model, input_size)
    last_val = next((h["val"] for h in reversed(history) if h["val"] is not None), None)
    summary = {"status": "done", "name": cfg["name"], "model": _model_name(cfg), "method": sp["method"],
               "method_args": dict(sp.get("method_args") or {}), "pattern": None if sp["method"] == "dense" else sp["pattern"], "stem": sp["stem"], "seed": seed,
               "top1": last_val["top1"], "top5": last_val["top5"], "params": params, "flops": flops,
               "sad_final": history[-1]["sad_init"], "sad_curve": [h["sad_init"] for h in history],
               "sad_prev_curve": [h["sad_prev"] for h in history], "epochs": epochs, "world_size": info.world_size,
               "seconds": time.time() - t_start, "masks_sha": masks_digest(model), "masks_valid": masks_valid(model),
               "sparse_layer_count": len(list(sparse_layers(model))),
               "out_dir": str(out_dir)}
    if step_times.enabled:  # train.step_times: this process's steps (resumed runs: the steps after the resume)
        summary["step_times"] = step_times.record()
    best = _best_entry(history, asp_epoch or 0)
    if best is not None:  # the first epoch reaching the best top-1 (what model_best.pth holds)
        summary.update(best_top1=best["val"]["top1"], best_epoch=best["epoch"],
                       best_checkpoint=str(best_path) if cfg["train"]["checkpoint"] else None)
    if info.is_main:
        write_json(out_dir / "summary.json", summary, ensure_ascii=True)
    return summary


def _best_entry(history: list, first_sparse_epoch: int = 0):
    """The history entry with the best val top-1 among epochs after ``first_sparse_epoch`` (ASP: its dense
    epochs never count as the best sparse model); ties keep the earlier epoch. None when none was evaluated."""
    evaluated = [h for h in history if h["val"] is not None and h["epoch"] > first_sparse_epoch]
    return max(evaluated, key=lambda h: h["val"]["top1"], default=None)


def _is_best(history: list, first_sparse_epoch: int = 0) -> bool:
    """Whether the last epoch of ``history`` is the best one so far (see :func:`_best_entry`)."""
    return _best_entry(history, first_sparse_epoch) is history[-1]


def main(argv=None) -> int:
    """Command line: parse --config/--resume/overrides, train, print the summary (rank 0)."""
    parser = trainer_parser(__doc__, "configs/imagenet/ and configs/imagenet_proxy/",
                            "optim.epochs=2 data.root=/data/imagenet")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    summary = run(cfg, resume=args.resume_from or args.resume)
    if summary["status"] == "done" and int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_curve")}), flush=True)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())

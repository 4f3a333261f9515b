"""Train (and evaluate) a sparse RAFT stage from a YAML config.

    python -m nm_plugins.raft.train --config configs/raft/chairs.yaml [--resume] [--set model.method=ste ...]
    torchrun --nproc_per_node=2 -m nm_plugins.raft.train --config configs/raft/chairs.yaml

RAFT recipe: sequence loss (gamma, max-flow), AdamW, one-cycle LR (linear, pct_start; like RAFT the schedule
spans steps + ``schedule_extra_steps`` = 100, so it ends just above 0), gradient clipping, 12 flow updates.
Writes ``last.pth`` (atomic, every ``ckpt_every`` steps, for ``--resume``), ``final.pth`` (model weights),
``log.jsonl`` + TensorBoard (loss, EPE, LR, SAD) and ``results.json`` to ``out_dir``.

``data.batch_size`` is the GLOBAL batch (over all torchrun processes; each takes batch_size / world_size, which
must divide), as in the authors' recipe (batch 4 over 2 GPUs). Precision: ``train.amp`` = bf16 autocast of the
training forward on CUDA (fp32 when false, as the authors trained); ``train.amp_cpu`` (default false) applies
it on the CPU too (else a CPU run is fp32 whatever ``amp`` says); ``train.corr_fp32`` keeps the correlation
volume and its lookups in fp32 under autocast (RAFT's own mixed-precision mode); ``eval.amp`` (null: as
``train.amp``) sets the evaluation precision. ``results.json`` records the precision used (``precision``). ``model.decay_mode``: when the SR-STE decay is added, ``step``
(once per optimizer step, default) or ``call`` (the authors': every time a layer is called, 12x per step for
RAFT's update block).
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader

from nm_plugins.core import SADTracker, apply_srste_decay, count_params_flops, sparse_layers
from nm_plugins.runtime.cli import trainer_parser
from nm_plugins.runtime.config import apply_override, check_method, load_yaml, merge_config
from nm_plugins.runtime.results import write_json
from nm_plugins.runtime.training import (RunLogger, StepTimes, init_distributed, load_checkpoint, masks_digest,
                                      masks_valid, rng_state, sad_log_entry, save_checkpoint, seed_everything,
                                      set_rng_state, shutdown_distributed)

from .datasets import train_set, val_set
from .evaluate import EVAL_ITERS, autocast, collate, evaluate
from .metrics import sequence_loss
from .model import create

DEFAULTS = {
    "name": "raft", "stage": "chairs", "out_dir": "runs/raft/{name}/{tag}", "device": "auto", "threads": None,
    "model": {"size": "large", "pattern": "2:4", "method": "srste", "decay": 2.0e-4, "decay_mode": "step",
              "weights": None, "method_args": {}},
    "data": {"crop": [368, 496], "batch_size": 4, "workers": 4, "proxy": {}},
    "optim": {"lr": 4.0e-4, "weight_decay": 1.0e-4, "eps": 1.0e-8, "steps": 200000, "pct_start": 0.05, "clip": 1.0,
              "schedule_extra_steps": 100},
    "loss": {"gamma": 0.8, "max_flow": 400.0},
    "train": {"iters": 12, "seed": 0, "amp": True, "amp_cpu": False, "corr_fp32": False, "freeze_bn": False, "log_every": 100,
              "val_every": 5000, "ckpt_every": 5000, "sad_every": 1000, "step_times": False},
    "eval": {"sets": ["chairs"], "iters": {}, "max_samples": None, "batch_size": 1, "keep": 0, "amp": None},
}


OPEN_KEYS = ("data.proxy", "eval.iters", "model.method_args")  # free-form mappings: any key, merged key by key


def load_config(path=None, overrides=(), extra: dict | None = None) -> dict:
    """DEFAULTS updated by the YAML file at ``path``, then ``extra`` (a dict), then ``key.sub=value`` strings."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"RAFT config {path} does not exist")
        cfg = merge_config(cfg, load_yaml(path.read_text()) or {}, open_keys=OPEN_KEYS)
    if extra:
        cfg = merge_config(cfg, extra, open_keys=OPEN_KEYS)
    for item in overrides:
        cfg = apply_override(cfg, item, OPEN_KEYS)
    m = cfg["model"]
    check_method(m, where="model")  # a registered method with its own settings
    return cfg


def run_tag(cfg: dict) -> str:
    """Short name of the sparsity setting: ``dense`` or e.g. ``srste_2x4``."""
    m = cfg["model"]
    return "dense" if m["method"] == "dense" else f"{m['method']}_{str(m['pattern']).replace(':', 'x')}"


def out_dir(cfg: dict) -> Path:
    """The run folder: ``cfg['out_dir']`` with {name} and {tag} filled in."""
    return Path(cfg["out_dir"].format(name=cfg["name"], tag=run_tag(cfg)))


class _PairInput(nn.Module):
    """RAFT seen as a one-input module (the same image twice) for :func:`count_params_flops`."""

    def __init__(self, raft, iters):
        super().__init__()
        self.raft, self.iters = raft, iters

    def forward(self, x):
        return self.raft(x, x, num_flow_updates=self.iters)


def params_flops(model, size, iters: int) -> tuple[int, int]:
    """(params, MAC-FLOPs per image pair at ``size`` (H, W) with ``iters`` updates), pruned weights left out."""
    return count_params_flops(_PairInput(getattr(model, "module", model), iters), (1, 3, *size))


def per_process_batch(global_batch: int, world: int) -> int:
    """Each process's share of the global ``data.batch_size``; ValueError when it does not divide."""
    global_batch = int(global_batch)
    if global_batch < 1 or global_batch % world:
        raise ValueError(f"data.batch_size {global_batch} is the global batch and must be a positive multiple of "
                         f"the number of processes ({world})")
    return global_batch // world


def correlation_in_fp32(model: nn.Module) -> nn.Module:
    """Make RAFT build its correlation pyramid and look it up in fp32 even under autocast (RAFT's own
    mixed-precision mode: features cast to float, autocast off for the correlation); returns ``model``."""
    raft = getattr(model, "module", model)
    corr = raft.corr_block
    build, index = corr.build_pyramid, corr.index_pyramid

    def build_pyramid(fmap1, fmap2):
        with torch.autocast(fmap1.device.type, enabled=False):
            return build(fmap1.float(), fmap2.float())

    def index_pyramid(centroids_coords):
        with torch.autocast(centroids_coords.device.type, enabled=False):
            return index(centroids_coords.float())

    corr.build_pyramid, corr.index_pyramid = build_pyramid, index_pyramid
    return model


def set_decay_mode(model: nn.Module, mode: str) -> None:
    """Set when every N:M layer adds its SR-STE decay: ``step`` (default) or ``call`` (the authors')."""
    if mode not in ("step", "call"):
        raise ValueError(f"model.decay_mode must be 'step' or 'call', got {mode!r}")
    for name, layer in sparse_layers(getattr(model, "module", model)):
        if mode != "step" and not hasattr(layer, "decay_mode"):
            raise ValueError(f"model.decay_mode={mode!r} needs the core's decay_mode option (layer {name} has none)")
        if hasattr(layer, "decay_mode"):
            layer.decay_mode = mode


def eval_amp(cfg: dict) -> bool:
    """Evaluation precision: ``eval.amp``, or ``train.amp`` when that is null."""
    return bool(cfg["train"]["amp"] if cfg["eval"]["amp"] is None else cfg["eval"]["amp"])


def precision(cfg: dict, device) -> dict:
    """What the run computes in on ``device``: {"train", "eval"}: "bf16-autocast" or "fp32"; "corr": the
    correlation volume's precision under training autocast ("fp32" with ``train.corr_fp32``, else "autocast")."""
    device = torch.device(device)
    on = device.type == "cuda" or (device.type == "cpu" and bool(cfg["train"]["amp_cpu"]))
    name = lambda amp: "bf16-autocast" if amp and on else "fp32"  # noqa: E731
    train = name(bool(cfg["train"]["amp"]))
    return {"train": train, "eval": name(eval_amp(cfg)),
            "corr": "fp32" if cfg["train"]["corr_fp32"] or train == "fp32" else "autocast"}


def epoch_indices(n: int, batch: int, seed: int, epoch: int, rank: int, world: int) -> list:
    """This process's sample order for one epoch: a (seed, epoch) permutation, sharded, whole batches only."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = (n // world) // batch * batch
    if per_rank == 0:
        raise ValueError(f"training set of {n} samples is too small for batch {batch} on {world} processes")
    return perm[rank::world][:per_rank]


def epoch_loader(dataset, batch: int, seed: int, epoch: int, dist_info, workers: int, offset: int = 0) -> DataLoader:
    """The training DataLoader of one epoch for this process (see :func:`epoch_indices`), from batch ``offset`` on."""
    indices = epoch_indices(len(dataset), batch, seed, epoch, dist_info.rank, dist_info.world_size)
    return DataLoader(dataset, batch_size=batch, sampler=indices[offset * batch:], drop_last=True, num_workers=workers,
                      collate_fn=collate, pin_memory=dist_info.device.type == "cuda", persistent_workers=False)


def validate(model, cfg: dict, device, keep: int = 0) -> dict:
    """Metrics on every set in ``cfg['eval']['sets']`` with that set's number of flow updates."""
    ev = cfg["eval"]
    out = {}
    for name in ev["sets"]:
        iters = ev["iters"].get(name, EVAL_ITERS.get(name, 24))
        ds = val_set(name, cfg["data"]["proxy"])
        out[name] = evaluate(model, ds, iters=iters, device=device, batch_size=ev["batch_size"],
                             pad_mode="kitti" if name == "kitti" else "sintel", max_samples=ev["max_samples"],
                             amp=eval_amp(cfg), keep=keep, amp_cpu=bool(cfg["train"]["amp_cpu"]))
    return out


def run(cfg: dict, resume: bool = False, keep_samples: int = 0) -> dict:
    """Train one stage as configured, evaluate, write the run folder; returns the results dict
    (``samples``: the first ``keep_samples`` validation predictions per set, for pictures)."""
    threads = torch.get_num_threads()
    if cfg["threads"]:  # CPU threads; 1 is far faster than 2 when other processes share the cores
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return _run(cfg, resume, keep_samples)
    finally:
        torch.set_num_threads(threads)


def _train_mode(model, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:  # later RAFT stages keep the BatchNorm statistics of the previous stage
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def _run(cfg: dict, resume: bool, keep_samples: int) -> dict:
    dist_info = init_distributed(cfg["device"])
    device, main = dist_info.device, dist_info.is_main
    tcfg, ocfg, dcfg, mcfg = cfg["train"], cfg["optim"], cfg["data"], cfg["model"]
    run_dir = out_dir(cfg)
    seed_everything(tcfg["seed"] + dist_info.rank)
    model = create(mcfg["size"], mcfg["pattern"], mcfg["method"], mcfg["decay"], weights=mcfg["weights"],
                   method_args=mcfg["method_args"] or None).to(device)
    set_decay_mode(model, mcfg["decay_mode"])
    if tcfg["corr_fp32"]:
        correlation_in_fp32(model)
    report = model.sparsity_report
    raw = model
    if dist_info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(raw.parameters(), lr=ocfg["lr"], weight_decay=ocfg["weight_decay"], eps=ocfg["eps"])
    steps = int(ocfg["steps"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=ocfg["lr"], total_steps=steps + int(ocfg["schedule_extra_steps"]),
                                                    pct_start=ocfg["pct_start"], cycle_momentum=False,
                                                    anneal_strategy="linear")
    tracker = SADTracker(raw)
    dataset = train_set(cfg["stage"], dcfg["crop"], dcfg["proxy"])
    batch = per_process_batch(dcfg["batch_size"], dist_info.world_size)
    step, epoch, offset, train_time = 0, 0, 0, 0.0
    ckpt_path = run_dir / "last.pth"
    state = load_checkpoint(ckpt_path, map_location=device) if resume and ckpt_path.is_file() else None
    pending_rng = None
    if state is not None and state["config"] != cfg:
        if main:
            print(f"--resume: {ckpt_path} was written with another config; starting from scratch")
        state = None
    if state is not None:
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        tracker.load_state_dict(state["sad"])
        step, epoch, offset, train_time = state["step"], state["epoch"], state["offset"], state["train_time"]
        pending_rng = state["rng"]  # rank 0's RNG (augmentation draws) on every rank, set once the loader is made
        if main:
            print(f"resumed {ckpt_path} at step {step}")
    elif resume and main and not ckpt_path.is_file():
        print(f"--resume: no checkpoint at {ckpt_path}, starting from scratch")
    logger = RunLogger(run_dir, enabled=main)
    if main:
        print(report)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    amp = autocast(bool(tcfg["amp"]), device, cpu=bool(tcfg["amp_cpu"]))
    step_times = StepTimes(tcfg["step_times"], device)

    def checkpoint(path):
        save_checkpoint(path, {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "sad": tracker.state_dict(), "step": step,
                               "epoch": epoch, "offset": offset, "train_time": train_time, "rng": rng_state(),
                               "config": cfg})

    from tqdm import tqdm
    bar = tqdm(total=steps, initial=step, desc=f"raft {cfg['name']} {run_tag(cfg)}", disable=not main, mininterval=5)
    _train_mode(model, tcfg["freeze_bn"])
    while step < steps:
        loader = epoch_loader(dataset, batch, tcfg["seed"], epoch, dist_info, dcfg["workers"], offset)
        batches = iter(loader)  # draws the loader's base seed from torch's RNG, a draw the checkpoint's state has seen
        if pending_rng is not None:
            set_rng_state(pending_rng)
            pending_rng = None
        for img1, img2, flow, valid in batches:
            t0 = time.time()
            step_times.start()
            img1, img2, flow, valid = (x.to(device, non_blocking=True) for x in (img1, img2, flow, valid))
            with amp:
                preds = model(img1, img2, num_flow_updates=tcfg["iters"])
            loss, stats = sequence_loss(preds, flow, valid, cfg["loss"]["gamma"], cfg["loss"]["max_flow"])
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"RAFT loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            apply_srste_decay(raw.parameters())  # the decay is part of the clipped gradient, as in the authors' code
            torch.nn.utils.clip_grad_norm_(raw.parameters(), ocfg["clip"])
            optimizer.step()
            scheduler.step()
            step_times.stop(loss.detach())
            step, offset = step + 1, offset + 1
            train_time += time.time() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epe=f"{stats['epe']:.2f}")
            record = {}
            if step % tcfg["log_every"] == 0 or step == steps:
                record.update({"loss": loss.item(), **{f"train/{k}": v for k, v in stats.items()},
                               "lr": scheduler.get_last_lr()[0], "train_time_s": train_time})
            if step % tcfg["sad_every"] == 0 or step == steps:
                record.update(sad_log_entry(tracker.record()))
            if step % tcfg["val_every"] == 0 and step != steps:
                record["val"] = validate(model, cfg, device)
                _train_mode(model, tcfg["freeze_bn"])
            if record:
                logger.log(step, record)
            if step % tcfg["ckpt_every"] == 0 and step != steps and main:
                checkpoint(ckpt_path)
            if step >= steps:
                break
        else:
            epoch, offset = epoch + 1, 0
    bar.close()
    val = validate(model, cfg, device, keep=keep_samples)
    samples = {k: v.pop("samples", []) for k, v in val.items()}
    params, flops = params_flops(raw, tuple(dcfg["crop"]), tcfg["iters"])
    sad_last = tracker.history[-1]["model"] if tracker.history else tracker.record()["model"]
    results = {"name": cfg["name"], "tag": run_tag(cfg), "size": mcfg["size"], "pattern": str(mcfg["pattern"]),
               "method": mcfg["method"], "method_args": dict(mcfg["method_args"] or {}), "steps": step, "train_time_s": train_time, "val": val,
               "params": params, "flops": flops, "flops_input": list(dcfg["crop"]), "flops_iters": tcfg["iters"],
               "sad_init_norm": sad_last["sad_init_norm"], "masks_valid": masks_valid(raw),
               "dense_layers": report.dense_layers, "sparse_layer_count": len(report.sparse_layers),
               "precision": precision(cfg, device), "masks_sha": masks_digest(raw)}
    if step_times.enabled:  # train.step_times: this process's steps (a resumed run: those after the resume)
        results["step_times"] = step_times.record()
    if main:
        logger.log(step, {"final_val": val})
        checkpoint(ckpt_path)
        save_checkpoint(run_dir / "final.pth", {"model": raw.state_dict(), "config": cfg})
        write_json(run_dir / "results.json", results, indent=2, ensure_ascii=True)
    logger.close()
    results["samples"] = samples
    return results


def main(argv=None) -> int:
    """Command line: parse --config/--resume/overrides (``--set KEY=VALUE`` is one too), train, print the results."""
    parser = trainer_parser(__doc__, "configs/raft/", "model.method=ste optim.steps=100", resume_from=False)
    parser.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override given as an option, e.g. --set model.method=ste (repeatable)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides + args.set_overrides)
    results = run(cfg, resume=args.resume)
    if init_distributed(cfg["device"]).is_main:
        print(json.dumps({k: results[k] for k in ("tag", "steps", "train_time_s", "val", "params", "flops")}, indent=2))
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

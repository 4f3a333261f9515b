"""Evaluate a RAFT model on a flow dataset: padding to a multiple of 8, N flow updates, FlowMetrics."""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .metrics import FlowMetrics

EVAL_ITERS = {"chairs": 24, "sintel_clean": 32, "sintel_final": 32, "kitti": 24, "proxy": 24}


def pad_to_multiple(img1, img2, multiple: int = 8, mode: str = "sintel"):
    """Replicate-pad a batch of image pairs to H, W divisible by ``multiple`` (centred; KITTI pads the top);
    returns the padded pair and the (left, right, top, bottom) padding for :func:`unpad`."""
    h, w = img1.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if mode == "kitti":
        pad = (pw // 2, pw - pw // 2, ph, 0)
    else:
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(img1, pad, mode="replicate"), F.pad(img2, pad, mode="replicate"), pad


def unpad(flow: torch.Tensor, pad) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a flow [B, 2, H, W]."""
    left, right, top, bottom = pad
    h, w = flow.shape[-2:]
    return flow[..., top:h - bottom, left:w - right]


def autocast(amp: bool, device, cpu: bool = False):
    """The precision context of a RAFT forward: bf16 autocast on ``device`` when ``amp`` is on and the device is
    CUDA, or the CPU with ``cpu=True`` (``train.amp_cpu``); otherwise a no-op (fp32)."""
    device = torch.device(device)
    if amp and (device.type == "cuda" or (cpu and device.type == "cpu")):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def collate(batch):
    """(img1, img2, flow, valid or None) batch tensors of RAFT samples."""
    img1, img2, flow, valid = zip(*[(s[0], s[1], s[2], s[3] if len(s) > 3 else None) for s in batch])
    valid = None if valid[0] is None else torch.stack([torch.as_tensor(v).bool() for v in valid])
    return torch.stack(img1), torch.stack(img2), torch.stack(flow), valid


@torch.no_grad()
def evaluate(model, dataset, iters: int = 24, device="cpu", batch_size: int = 1, pad_mode: str = "sintel",
             max_samples: int | None = None, amp: bool = False, keep: int = 0, amp_cpu: bool = False) -> dict:
    """Metrics of ``model`` on ``dataset`` (samples (img1, img2, flow[, valid]) with images in [-1, 1]).

    ``amp``: bf16 autocast on CUDA (on the CPU too with ``amp_cpu``). Under torchrun every rank evaluates a shard
    and the counts are summed. ``keep`` > 0 also returns the first ``keep`` predictions as ``result["samples"]``
    (list of dicts of CPU tensors) for visualisation.
    """
    device = torch.device(device)
    if max_samples is not None:
        dataset = Subset(dataset, range(min(max_samples, len(dataset))))
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    was_training = model.training
    model.eval()
    metrics, samples = FlowMetrics(), []
    precision = autocast(amp, device, cpu=amp_cpu)
    try:
        for img1, img2, flow, valid in loader:
            img1, img2 = img1.to(device), img2.to(device)
            p1, p2, pad = pad_to_multiple(img1, img2, 8, pad_mode)
            with precision:
                pred = model(p1, p2, num_flow_updates=iters)[-1]
            pred = unpad(pred.float(), pad).cpu()
            metrics.update(pred, flow, valid)
            for b in range(pred.shape[0]):
                if len(samples) < keep:
                    samples.append({"img1": img1[b].cpu(), "flow": flow[b], "pred": pred[b],
                                    "valid": None if valid is None else valid[b]})
    finally:
        model.train(was_training)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, metrics.__dict__)
        metrics = FlowMetrics()
        for state in gathered:
            part = FlowMetrics()
            part.__dict__.update(state)
            metrics.merge(part)
    result = metrics.compute()
    if keep:
        result["samples"] = samples
    return result


def zero_flow_metrics(dataset, max_samples: int | None = None) -> dict:
    """Metrics of predicting zero flow everywhere: the floor any trained model must beat."""
    if max_samples is not None:
        dataset = Subset(dataset, range(min(max_samples, len(dataset))))
    metrics = FlowMetrics()
    for img1, img2, flow, valid in DataLoader(dataset, batch_size=8, collate_fn=collate):
        metrics.update(torch.zeros_like(flow), flow, valid)
    return metrics.compute()

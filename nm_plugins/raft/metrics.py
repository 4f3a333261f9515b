"""RAFT's training loss and the optical-flow metrics: EPE, 1px/3px/5px accuracy, KITTI Fl-all."""
from __future__ import annotations

import torch


def sequence_loss(predictions, flow_gt, valid, gamma: float = 0.8, max_flow: float = 400.0):
    """RAFT's sequence loss: L1 of every update's flow, weighted gamma^(N-i-1), on valid pixels whose true
    flow is below ``max_flow``; returns (loss, {epe, 1px, 3px, 5px} of the last update on those pixels)."""
    if not predictions:
        raise ValueError("sequence_loss needs at least one flow prediction")
    mag = flow_gt.square().sum(dim=1).sqrt()
    valid = (valid >= 0.5) & (mag < max_flow)
    n = len(predictions)
    loss = flow_gt.new_zeros(())
    for i, pred in enumerate(predictions):
        weight = gamma ** (n - i - 1)
        loss = loss + weight * (valid[:, None] * (pred.float() - flow_gt).abs()).mean()
    with torch.no_grad():
        epe = (predictions[-1].float() - flow_gt).square().sum(dim=1).sqrt()[valid]
        stats = {"epe": epe.mean().item() if epe.numel() else float("nan")}
        for px in (1, 3, 5):
            stats[f"{px}px"] = 100.0 * (epe < px).float().mean().item() if epe.numel() else float("nan")
    return loss, stats


class FlowMetrics:
    """Accumulates EPE over the valid pixels of many flow fields: ``epe`` (mean over all pixels, Chairs /
    Sintel convention), ``per_image_epe`` (mean of per-image means, KITTI's EPE), ``1px``/``3px``/``5px``
    (% of pixels with EPE below 1/3/5 px) and ``fl_all`` (% of KITTI outliers: EPE > 3 px and > 5% of |flow|)."""

    def __init__(self):
        self.pixels = 0
        self.epe_sum = 0.0
        self.below = {1: 0, 3: 0, 5: 0}
        self.outliers = 0
        self.image_epes: list = []

    def update(self, pred: torch.Tensor, flow_gt: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add a batch [B, 2, H, W] of predictions against true flows (valid [B, H, W], default all pixels)."""
        if pred.shape != flow_gt.shape or pred.dim() != 4 or pred.shape[1] != 2:
            raise ValueError(f"flow metrics need pred and flow_gt of one shape [B, 2, H, W], got "
                             f"{tuple(pred.shape)} and {tuple(flow_gt.shape)}")
        if valid is None:
            valid = torch.ones(pred.shape[0], *pred.shape[2:], dtype=torch.bool, device=pred.device)
        valid = valid.bool()
        epe = (pred.float() - flow_gt.float()).square().sum(dim=1).sqrt()
        mag = flow_gt.float().square().sum(dim=1).sqrt()
        for b in range(pred.shape[0]):
            e, m = epe[b][valid[b]], mag[b][valid[b]]
            if e.numel() == 0:
                continue
            self.pixels += e.numel()
            self.epe_sum += e.double().sum().item()
            for px in self.below:
                self.below[px] += int((e < px).sum())
            self.outliers += int(((e > 3.0) & (e / m.clamp_min(1e-12) > 0.05)).sum())
            self.image_epes.append(e.double().mean().item())

    def merge(self, other: "FlowMetrics") -> None:
        """Add another accumulator's counts (e.g. gathered from other ranks)."""
        self.pixels += other.pixels
        self.epe_sum += other.epe_sum
        for px in self.below:
            self.below[px] += other.below[px]
        self.outliers += other.outliers
        self.image_epes += other.image_epes

    def compute(self) -> dict:
        """The metrics so far; raises when no valid pixel was seen."""
        if self.pixels == 0:
            raise ValueError("no valid pixels were evaluated: the flow metrics are undefined")
        out = {"epe": self.epe_sum / self.pixels,
               "per_image_epe": sum(self.image_epes) / len(self.image_epes)}
        for px, count in self.below.items():
            out[f"{px}px"] = 100.0 * count / self.pixels
        out["fl_all"] = 100.0 * self.outliers / self.pixels
        out["images"] = len(self.image_epes)
        return out

"""RAFT's training augmentations on tensors: colour jitter (symmetric / asymmetric), occlusion eraser,
random scale + stretch, flips and crop; a sparse variant for KITTI/HD1K's sparse ground truth."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

MAX_VALID_FLOW = 1000.0


def to_tensors(img1, img2, flow, valid):
    """PIL / numpy / tensor inputs -> uint8 images [3, H, W], float32 flow [2, H, W], bool valid [H, W]."""
    imgs = []
    for img in (img1, img2):
        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.array(img.convert("RGB") if hasattr(img, "convert") else img)).permute(2, 0, 1)
        imgs.append(img.to(torch.uint8).contiguous())
    if flow is not None:
        flow = torch.as_tensor(np.asarray(flow) if not isinstance(flow, torch.Tensor) else flow, dtype=torch.float32)
        if valid is None:
            valid = (flow[0].abs() < MAX_VALID_FLOW) & (flow[1].abs() < MAX_VALID_FLOW)
        valid = torch.as_tensor(np.asarray(valid) if not isinstance(valid, torch.Tensor) else valid).bool()
    return imgs[0], imgs[1], flow, valid


def normalise(img: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the input range of torchvision's RAFT."""
    return img.float() / 127.5 - 1.0


class EvalTransform:
    """No augmentation: tensors with images in [-1, 1] (for validation sets)."""

    def __call__(self, img1, img2, flow, valid):
        img1, img2, flow, valid = to_tensors(img1, img2, flow, valid)
        return normalise(img1), normalise(img2), flow, valid


class FlowAugment:
    """RAFT's FlowAugmentor (dense ground truth) or SparseFlowAugmentor (``sparse=True``) on tensors.

    ``crop`` (H, W) is the output size; ``min_scale``/``max_scale`` are log2 bounds of the random resize;
    ``spatial=False`` disables resizing (and then the crop only needs the input to be large enough).
    """

    def __init__(self, crop, min_scale=-0.2, max_scale=0.5, do_flip=True, sparse=False, spatial=True,
                 eraser=True, spatial_prob=0.8, stretch_prob=0.8, max_stretch=0.2, asymmetric_color_prob=0.2):
        self.crop = tuple(int(c) for c in crop)
        if len(self.crop) != 2 or min(self.crop) < 8:
            raise ValueError(f"augmentation crop must be (H, W) with both >= 8, got {crop!r}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.do_flip, self.sparse, self.spatial, self.eraser = do_flip, sparse, spatial, eraser
        self.spatial_prob, self.stretch_prob, self.max_stretch = spatial_prob, stretch_prob, max_stretch
        self.asymmetric_color_prob = 0.0 if sparse else asymmetric_color_prob
        self.jitter = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=(0.3 if sparse else 0.5) / 3.14)

    def __call__(self, img1, img2, flow, valid):
        img1, img2, flow, valid = to_tensors(img1, img2, flow, valid)
        img1, img2 = self._color(img1, img2)
        if self.eraser and torch.rand(()) < 0.5:
            img2 = self._erase(img2)
        img1, img2, flow, valid = self._spatial(img1, img2, flow, valid)
        return normalise(img1), normalise(img2), flow, valid

    def _color(self, img1, img2):
        if torch.rand(()) < self.asymmetric_color_prob:
            return self.jitter(img1), self.jitter(img2)
        both = self.jitter(torch.cat([img1, img2], dim=-1))  # one draw of the jitter parameters for both
        return both.split(img1.shape[-1], dim=-1)

    @staticmethod
    def _erase(img):
        """Occlusion augmentation: 1-2 boxes of img2 filled with its mean colour."""
        h, w = img.shape[-2:]
        img = img.clone()
        mean = img.float().mean(dim=(1, 2), keepdim=True).round().to(img.dtype)
        for _ in range(int(torch.randint(1, 3, ()))):
            bw, bh = (int(torch.randint(max(1, w // 10), max(2, w // 5), ())), int(torch.randint(max(1, h // 10), max(2, h // 5), ())))
            x0, y0 = int(torch.randint(0, max(1, w - bw), ())), int(torch.randint(0, max(1, h - bh), ()))
            img[:, y0:y0 + bh, x0:x0 + bw] = mean
        return img

    def _spatial(self, img1, img2, flow, valid):
        ch, cw = self.crop
        h, w = img1.shape[-2:]
        if self.spatial:
            min_scale = max((ch + 8) / h, (cw + 8) / w)
            scale = 2.0 ** float(torch.empty(()).uniform_(self.min_scale, self.max_scale))
            sx = sy = scale
            if not self.sparse and torch.rand(()) < self.stretch_prob:
                sx *= 2.0 ** float(torch.empty(()).uniform_(-self.max_stretch, self.max_stretch))
                sy *= 2.0 ** float(torch.empty(()).uniform_(-self.max_stretch, self.max_stretch))
            sx, sy = max(sx, min_scale), max(sy, min_scale)
            if torch.rand(()) < self.spatial_prob or min_scale > 1:
                img1, img2, flow, valid = self._resize(img1, img2, flow, valid, sx, sy)
        if self.do_flip:
            if torch.rand(()) < 0.5:  # horizontal
                img1, img2, flow, valid = img1.flip(-1), img2.flip(-1), flow.flip(-1) * flow.new_tensor([-1.0, 1.0])[:, None, None], valid.flip(-1)
            if not self.sparse and torch.rand(()) < 0.1:  # vertical
                img1, img2, flow, valid = img1.flip(-2), img2.flip(-2), flow.flip(-2) * flow.new_tensor([1.0, -1.0])[:, None, None], valid.flip(-2)
        h, w = img1.shape[-2:]
        if h < ch or w < cw:
            raise ValueError(f"image of {h}x{w} is smaller than the augmentation crop {ch}x{cw}")
        y0, x0 = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
        sl = (..., slice(y0, y0 + ch), slice(x0, x0 + cw))
        return img1[sl], img2[sl], flow[sl], valid[sl]

    def _resize(self, img1, img2, flow, valid, sx, sy):
        h, w = img1.shape[-2:]
        nh, nw = int(round(h * sy)), int(round(w * sx))
        imgs = F.interpolate(torch.stack([img1, img2]).float(), size=(nh, nw), mode="bilinear", align_corners=False)
        img1, img2 = imgs.round().clamp(0, 255).to(torch.uint8)
        factor = flow.new_tensor([nw / w, nh / h])[:, None, None]
        if not self.sparse:
            flow = F.interpolate(flow[None], size=(nh, nw), mode="bilinear", align_corners=False)[0] * factor
            valid = F.interpolate(valid[None, None].float(), size=(nh, nw), mode="nearest")[0, 0] > 0.5
            return img1, img2, flow, valid
        # Sparse ground truth: move every valid sample to its scaled position (no interpolation across holes).
        ys, xs = torch.nonzero(valid, as_tuple=True)
        new_x = torch.round(xs.float() * nw / w).long()
        new_y = torch.round(ys.float() * nh / h).long()
        keep = (new_x >= 0) & (new_x < nw) & (new_y >= 0) & (new_y < nh)
        new_flow = flow.new_zeros(2, nh, nw)
        new_valid = torch.zeros(nh, nw, dtype=torch.bool)
        new_flow[:, new_y[keep], new_x[keep]] = flow[:, ys[keep], xs[keep]] * factor[:, 0]
        new_valid[new_y[keep], new_x[keep]] = True
        return img1, img2, new_flow, new_valid

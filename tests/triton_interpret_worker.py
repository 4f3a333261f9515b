"""Run as a subprocess with TRITON_INTERPRET=1: the layers then take their CUDA path (the Triton mask kernel, run
by Triton's interpreter on CPU tensors). Trains the model of ``training_case()`` and saves its parameters and
masks to argv[1]; without the variable the same code runs the CPU path, for comparison."""
import os
import sys

import torch
import torch.nn as nn

import nm_plugins as nm
from nm_plugins.core.mask import nm_mask


def model():
    """Convs (NCHW and channels_last), a partial group (C=10), a frozen layer and a linear; SR-STE 2:4."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 10, 1), nn.ReLU(),
                        nn.Conv2d(10, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 5, 6))
    nm.sparsify(net, "2:4", decay=0.05, keep_classifier_dense=False)
    net[2].to(memory_format=torch.channels_last)
    net[4].bias.requires_grad_(False)
    return net


def training_case():
    """Three optimizer steps of two micro-batches each, an evaluation forward in between."""
    net = model()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for _ in range(2):
            net(torch.randn(2, 8, 5, 5, generator=gen)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            net(torch.randn(2, 8, 5, 5, generator=gen))
    return {"params": [p.detach().clone() for p in net.parameters()],
            "masks": [layer.mask().clone() for _, layer in nm.sparse_layers(net)]}


def mask_cases():
    """Masks and masked weights of assorted shapes, layouts, dtypes and patterns (partial groups included)."""
    gen = torch.Generator().manual_seed(2)
    out = []
    for shape, layout, pattern, dtype in [((8, 12, 3, 3), "nchw", "2:4", torch.float32),
                                          ((8, 12, 3, 3), "cl", "2:4", torch.bfloat16),
                                          ((5, 10), "nchw", "2:4", torch.float16),
                                          ((6, 13, 1, 1), "nchw", "3:8", torch.float32),
                                          ((4, 6, 2, 3), "cl", "1:4", torch.float32),
                                          ((7, 16), "nchw", "4:8", torch.bfloat16)]:
        w = (torch.randint(-3, 4, shape, generator=gen).float() / 3).to(dtype)
        if layout == "cl":
            w = w.to(memory_format=torch.channels_last)
        masked = torch.empty_like(w)
        out.append((nm_mask(w, pattern, masked=masked), masked))
    return out


if __name__ == "__main__":
    torch.save({"interpreted": os.environ.get("TRITON_INTERPRET") == "1", "train": training_case(),
                "masks": mask_cases()}, sys.argv[1])

"""Throughput suite, mask kernel: ``nm_mask`` on CUDA tensors (the Triton kernel) against the exact argsort
reference, every pattern and dtype, ties and channels_last weights; its time."""
from __future__ import annotations

import torch

from benchmarks.reference import argsort_nm_mask
from nm_plugins import nm_mask
from nm_plugins.core.fast_inference import time_ms


def mask_kernel_cases(quick: bool) -> list:
    """(shape, channels_last) of the weights the kernel check covers: conv and linear, odd sizes, input
    channels not divisible by M (a zero-padded last group)."""
    if quick:
        return [((16, 8, 3, 3), False), ((16, 8, 3, 3), True), ((24, 16), False), ((8, 6, 3, 3), False)]
    return [((256, 128, 3, 3), False), ((256, 128, 3, 3), True), ((1000, 2048), False), ((2048, 512, 1, 1), True),
            ((3072, 768), False), ((37, 24, 5, 5), False), ((64, 6, 3, 3), True)]

def check_mask_kernel(device, quick) -> dict:
    """``nm_mask`` on CUDA tensors (the core's Triton kernel) vs the argsort reference on the CPU, on random
    data and on ties, for every pattern and dtype; then the time of both on ResNet-50's conv weights.
    ``quick`` on the CPU: the same checks and timings at toy size (a dry run; the CPU kernel is checked)."""
    out = {"checks": [], "all_equal": None}
    if device.type != "cuda" and not quick:
        out["skipped"] = "no CUDA: the core's CUDA mask path is checked on the CPU by the core's tests (Triton interpreter)"
        return out
    gen = torch.Generator(device="cpu").manual_seed(1)
    ok = True
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for pattern in ("2:4", "1:4", "2:8", "4:8"):
            n, m = map(int, pattern.split(":"))
            for shape, channels_last in mask_kernel_cases(quick):  # partial last groups included
                for ties in (False, True):
                    w = torch.randint(-3, 4, shape, generator=gen) if ties else torch.randn(shape, generator=gen)
                    w = w.to(dtype)
                    if channels_last and w.dim() == 4:
                        w = w.contiguous(memory_format=torch.channels_last)
                    ref = argsort_nm_mask(w.float(), n, m)
                    got = nm_mask(w.to(device), pattern)
                    equal = got.device.type == device.type and torch.equal(got.cpu(), ref)
                    ok &= equal
                    out["checks"].append({"dtype": str(dtype), "pattern": pattern, "shape": list(shape),
                                          "channels_last": channels_last, "ties": ties, "equal": equal})
    out["all_equal"] = ok
    try:  # which implementation the core binds for a tensor on this device (informational)
        from nm_plugins.core.mask_triton import triton_usable
        out["triton_bound"] = bool(triton_usable(torch.zeros(4, 4, device=device)))
    except ImportError as exc:
        out["triton_bound"] = f"unknown ({exc})"
    import timm
    model = timm.create_model("resnet18" if quick else "resnet50")
    weights = [p.detach().to(device) for p in model.parameters() if p.dim() == 4 and p.shape[1] % 4 == 0]
    out["timed_model"] = "resnet18 (quick)" if quick else "resnet50"
    out["resnet50_conv_weights"] = sum(w.numel() for w in weights)
    out["resnet50_nm_mask_ms"] = time_ms(lambda: [nm_mask(w, "2:4") for w in weights], device, warmup=1 if quick else 5, reps=2 if quick else 20)
    out["resnet50_argsort_ms"] = time_ms(lambda: [argsort_nm_mask(w) for w in weights], device, warmup=1 if quick else 2, reps=2 if quick else 5)
    out["resnet50_argsort_over_nm_mask"] = out["resnet50_argsort_ms"] / out["resnet50_nm_mask_ms"]
    return out

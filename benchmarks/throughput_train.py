"""Throughput suite, training: median step time of dense, SR-STE and STE through the layers of ``sparsify``,
interleaved in rounds; and the small CPU part (nm_mask vs the argsort reference, a short step ratio)."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.gpu_env import Budget, free
from benchmarks.reference import argsort_nm_mask
from nm_plugins import nm_mask, sparsify
from nm_plugins.core.fast_inference import time_ms

# (name, method of sparsify): every variant trains through the same layers, whatever the device
TRAIN_VARIANTS = (("dense", "dense"), ("srste", "srste"), ("ste", "ste"))


def train_configs(quick: bool) -> list:
    if quick:
        return [("resnet18", dict(batch=4, img=32, channels_last=True)),
                ("vit_tiny_patch16_224", dict(batch=4, img=32, channels_last=False))]
    return [("resnet50", dict(batch=128, img=224, channels_last=True)),
            ("vit_base_patch16_224", dict(batch=128, img=224, channels_last=False))]

def build_timm(name: str, img: int, num_classes: int = 1000):
    import timm
    kwargs = {"img_size": img} if name.startswith("vit") else {}
    return timm.create_model(name, num_classes=num_classes, **kwargs)

def per_step_ms(step, device, n: int) -> float:
    """Mean ms per call of ``n`` back-to-back calls (CUDA events around all of them; wall clock on CPU)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) * 1e3 / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n

def measure_training(name, cfg, device, budget, rounds=3, warmup=3, steps=8) -> dict:
    """Median step ms of each variant, interleaved in rounds so drifts hit all variants alike."""
    torch.manual_seed(0)
    amp = device.type == "cuda"
    x = torch.randn(cfg["batch"], 3, cfg["img"], cfg["img"], device=device)
    if cfg["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (cfg["batch"],), device=device)
    runs = {}
    for variant, method in TRAIN_VARIANTS:
        model = build_timm(name, cfg["img"])
        sparsify(model, "2:4", method)  # before .to(device): the layers must follow the move
        model = model.to(device)
        if cfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        runs[variant] = (model, opt)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    times = {v: [] for v in runs}
    for r in range(rounds):
        if r and budget.left() < 60:
            break
        for variant, (model, opt) in runs.items():
            for _ in range(warmup if r == 0 else 1):
                step(model, opt)
            for _ in range(3):  # back-to-back steps between two events: the pipeline stays full
                times[variant].append(per_step_ms(lambda: step(model, opt), device, steps))
    result = {f"{v}_ms": statistics.median(t) for v, t in times.items()}
    result["rounds"] = {v: t for v, t in times.items()}
    for v in runs:
        if v != "dense":
            result[f"{v}_over_dense"] = result[f"{v}_ms"] / result["dense_ms"]
    del runs
    free(device)
    return result

def cpu_part(quick) -> dict:
    """Without CUDA: nm_mask vs the argsort reference on ResNet-50's conv weights; short step ratios."""
    import timm
    model = timm.create_model("resnet18" if quick else "resnet50")
    weights = [p.detach() for p in model.parameters() if p.dim() == 4 and p.shape[1] % 4 == 0]
    cpu = torch.device("cpu")
    res = {"nm_mask_ms": time_ms(lambda: [nm_mask(w, "2:4") for w in weights], cpu, warmup=1, reps=3),
           "argsort_ms": time_ms(lambda: [argsort_nm_mask(w) for w in weights], cpu, warmup=1, reps=3)}
    res["argsort_over_nm_mask"] = res["argsort_ms"] / res["nm_mask_ms"]
    cfg = dict(batch=8, img=32, channels_last=False)
    res["train_resnet18"] = measure_training("resnet18", cfg, cpu, Budget(300), rounds=1, warmup=1, steps=1)
    return res

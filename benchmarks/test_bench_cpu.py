"""CPU benchmarks (pytest-benchmark; ``make bench``): N:M mask speed and the cost of an SR-STE step.

Train steps: timm ResNet-18, 64x64 inputs, batch 32, SGD with momentum, on the CPU; dense vs SR-STE vs
STE through the layers of ``sparsify`` (the one path: the C kernel on the CPU, Triton on CUDA), as
separate benchmarks and interleaved within every round. Masks: all ResNet-50 conv weights, the core's
``nm_mask`` vs an argsort reference. ``python -m benchmarks.report results/bench/cpu.json`` prints the ratios.
"""
import time

import torch
import torch.nn.functional as F

from benchmarks.reference import argsort_nm_mask
from nm_plugins import nm_mask, sparsify

BATCH, IMG, ROUNDS = 32, 64, 20


def make_step(method):
    """One SGD step of a fresh 2:4 ``method`` timm ResNet-18 on a fixed batch (dense: no N:M layers)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    sparsify(model, "2:4", method)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(BATCH, 3, IMG, IMG), torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def run_step(benchmark, method):
    step = make_step(method)
    benchmark.extra_info.update(model="resnet18", img=IMG, batch=BATCH, method=method)
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=3)


def test_step_dense_resnet18(benchmark):
    run_step(benchmark, "dense")


def test_step_srste_resnet18(benchmark):
    run_step(benchmark, "srste")


def test_step_ste_resnet18(benchmark):
    run_step(benchmark, "ste")


def test_step_interleaved_resnet18(benchmark):
    """Dense, SR-STE and STE steps alternating within every round, so that machine load drifting between
    the separate benchmarks above cannot bias their ratio: per-round times and paired ratios in extra_info
    (the benchmark's own time is one round of all three)."""
    steps = {method: make_step(method) for method in ("dense", "srste", "ste")}
    times = {method: [] for method in steps}

    def one_round():
        for method, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[method].append(time.perf_counter() - t0)

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=3)
    timed = {method: t[-ROUNDS:] for method, t in times.items()}  # the warm-up rounds dropped
    benchmark.extra_info.update(model="resnet18", img=IMG, batch=BATCH, seconds=timed, paired_ratio={
        method: [a / b for a, b in zip(timed[method], timed["dense"])] for method in ("srste", "ste")})


def test_mask_nm_mask_resnet50(benchmark, resnet50_conv_weights):
    masks = benchmark.pedantic(lambda: [nm_mask(w, "2:4") for w in resnet50_conv_weights], rounds=5, warmup_rounds=1)
    assert all(torch.equal(a, argsort_nm_mask(w)) for a, w in zip(masks, resnet50_conv_weights[:5]))


def test_mask_argsort_reference_resnet50(benchmark, resnet50_conv_weights):
    benchmark.pedantic(lambda: [argsort_nm_mask(w) for w in resnet50_conv_weights], rounds=3, warmup_rounds=1)


def test_mask_and_masked_weight_resnet50(benchmark, resnet50_conv_weights):
    """The mask work of one SR-STE optimizer step on ResNet-50 through the public API: every layer's
    mask and its masked weight (the layers do this once per weight version)."""
    def per_layer():
        with torch.no_grad():
            for w in resnet50_conv_weights:
                w * nm_mask(w, "2:4")

    benchmark.pedantic(per_layer, rounds=5, warmup_rounds=1)

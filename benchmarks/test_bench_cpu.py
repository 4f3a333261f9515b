"""CPU benchmarks (pytest-benchmark; ``make bench``): N:M mask speed and the cost of an SR-STE step.

Train steps: timm ResNet-18, 64x64 inputs, batch 32, SGD with momentum, on the CPU; dense vs SR-STE vs
STE, each through the per-layer path and the fused engine (:class:`nm_plugins.FusedSRSTE`). Masks: all
ResNet-50 conv weights, the core's ``nm_mask`` vs an argsort reference vs the fused flat buffer.
``python -m benchmarks.report results/bench/cpu.json`` prints the ratios.
"""
import pytest
import torch
import torch.nn.functional as F

from nm_plugins import FusedSRSTE, flat_nm_mask, nm_mask, sparsify
from nm_plugins.core.mask import from_groups, to_groups

BATCH, IMG, ROUNDS = 32, 64, 20


def argsort_nm_mask(weight, n=2, m=4):
    """Reference N:M mask by a stable argsort of every group (ties keep the lower index)."""
    groups = to_groups(weight, m).abs()
    keep = torch.argsort(-groups, dim=1, stable=True)[:, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return from_groups(mask, weight.shape)


def make_step(method, fused):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    sparsify(model, "2:4", method)
    engine = FusedSRSTE(model) if fused else None
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(BATCH, 3, IMG, IMG), torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step.engine = engine
    return step


def run_step(benchmark, method, fused=False):
    step = make_step(method, fused)
    benchmark.extra_info.update(model="resnet18", img=IMG, batch=BATCH, method=method, fused=fused)
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=3)


def test_step_dense_resnet18(benchmark):
    run_step(benchmark, "dense")


def test_step_srste_resnet18(benchmark):
    run_step(benchmark, "srste")


def test_step_srste_fused_resnet18(benchmark):
    run_step(benchmark, "srste", fused=True)


def test_step_ste_resnet18(benchmark):
    run_step(benchmark, "ste")


def test_step_ste_fused_resnet18(benchmark):
    run_step(benchmark, "ste", fused=True)


def test_step_interleaved_resnet18(benchmark):
    """Dense, SR-STE and STE steps alternating within every round, so that machine load drifting between
    the separate benchmarks above cannot bias their ratio: per-round times and paired ratios in extra_info
    (the benchmark's own time is one round of all three)."""
    import time

    steps = {method: make_step(method, fused=False) for method in ("dense", "srste", "ste")}
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


def test_mask_fused_flat_resnet50(benchmark, resnet50_conv_weights):
    """flat_nm_mask on all the weights in one buffer: mask, masked weights and inverse mask."""
    flat = torch.cat([w.movedim(1, -1).reshape(-1) for w in resnet50_conv_weights])
    mask, _, _ = benchmark.pedantic(lambda: flat_nm_mask(flat, "2:4", backend="torch"), rounds=5, warmup_rounds=1)
    expected = torch.cat([nm_mask(w, "2:4").movedim(1, -1).reshape(-1) for w in resnet50_conv_weights])
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_refresh_masks_resnet50(benchmark, fused):
    """The mask work of one SR-STE optimizer step on ResNet-50: per layer (new mask, masked weight,
    inverse mask for the decay, as the per-layer path computes them) vs one fused engine refresh."""
    import timm

    from nm_plugins import sparse_layers

    model = timm.create_model("resnet50")
    sparsify(model, "2:4", "srste")
    if fused:
        engine = FusedSRSTE(model)
        benchmark.pedantic(lambda: engine.refresh(force=True), rounds=5, warmup_rounds=1)
        return
    layers = [layer for _, layer in sparse_layers(model)]

    def per_layer():
        with torch.no_grad():
            for layer in layers:
                mask = layer.refresh_mask()
                layer.weight * mask
                (~mask).to(layer.weight.dtype)

    benchmark.pedantic(per_layer, rounds=5, warmup_rounds=1)

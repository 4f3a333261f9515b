"""The core on the paths users take: loss scaling, EMA / .data writes, models reading .weight directly, loaded masks,
decay per call, the CUDA (Triton) path checked under Triton's interpreter, torch.compile, layouts and frozen layers."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nm_plugins as nm
from nm_plugins import SparseConv2d, SparseLinear, apply_srste_decay, check_sparse_state_dict, is_valid_nm_mask

DECAY = 0.5


def one_step(scaler=None, fused=False):
    torch.manual_seed(0)
    layer = SparseLinear(8, 4, bias=False, decay=DECAY)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0, fused=fused or None)
    x = torch.randn(3, 8)
    w0, mask = layer.weight.detach().clone(), layer.mask().clone()
    loss = layer(x).sum()
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return w0, mask, x, layer.weight.detach()


@pytest.mark.parametrize("fused", [False, True], ids=["unscale-then-step", "fused-optimizer-unscales"])
def test_decay_is_the_configured_one_under_a_loss_scale_of_2_16(fused):
    """GradScaler (as AMP and mmengine's AmpOptimWrapper use it): λ_W must not be divided by the scale."""
    w0, mask, x, plain = one_step()
    expected = w0 - torch.ones(4, 3) @ x - DECAY * (~mask) * w0  # SGD lr 1 on the SR-STE gradient
    assert torch.allclose(plain, expected, atol=1e-6)
    _, _, _, scaled = one_step(torch.amp.GradScaler("cpu", init_scale=2.0**16), fused=fused)
    assert torch.allclose(scaled, expected, atol=1e-6)
    effective = ((w0 - scaled - torch.ones(4, 3) @ x) * ~mask).sum() / (w0 * ~mask).sum()
    assert abs(effective.item() - DECAY) < 1e-5


def test_a_data_write_is_seen_by_the_next_evaluation():
    """EMA hooks swap weights through .data (no version bump): evaluation must use the weights as they are."""
    layer = SparseLinear(8, 4)
    x = torch.randn(2, 8)
    layer(x).sum().backward()  # a training forward caches the masked weight
    ema = torch.randn(4, 8)
    layer.weight.data.copy_(ema)
    with torch.no_grad():
        out = layer(x)
    assert torch.equal(out, F.linear(x, ema * nm.nm_mask(ema, "2:4"), layer.bias))


def test_evaluation_after_an_ema_swap_leaves_training_untouched():
    layer = SparseLinear(8, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, 8)
    layer(x).sum().backward()
    opt.step()
    raw = layer.weight.detach().clone()
    layer(x)  # cached for the raw weights
    tmp = layer.weight.data.clone()
    layer.weight.data.copy_(torch.randn(4, 8))  # swap in "EMA" weights, evaluate, swap back
    with torch.no_grad():
        layer(x)
    layer.weight.data.copy_(tmp)
    assert torch.equal(layer(x), F.linear(x, raw * nm.nm_mask(raw, "2:4"), layer.bias))


class ReadsWeightDirectly(nn.Module):
    """Like timm's BEiT/EVA attention: F.linear(x, self.qkv.weight, bias) instead of self.qkv(x)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 12)
        self.proj = nn.Linear(12, 4)

    def forward(self, x):
        return self.proj(F.linear(x, self.qkv.weight, self.qkv.bias))


def test_a_layer_whose_weight_is_read_directly_refuses_to_train_silently_dense():
    model = ReadsWeightDirectly()
    nm.sparsify(model, "2:4", keep_classifier_dense=False)
    # refused at the first forward now (sparsify records it: issue 21), before any dense result is computed
    with pytest.raises(ValueError, match=r"N:M layer\(s\) qkv have their weight read outside their own forward"):
        model(torch.randn(2, 8)).sum().backward()
    with pytest.raises(ValueError, match="qkv"):  # and on every later forward, in training or evaluation
        with torch.no_grad():
            model(torch.randn(2, 8))


def test_frozen_and_dense_layers_train_without_guard_errors():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    nm.sparsify(model, "2:4", keep_classifier_dense=False)
    model[0].weight.requires_grad_(False)
    model[1].set_method("dense")
    model(torch.randn(2, 8)).sum().backward()
    assert model[0].weight.grad is None and model[1].weight.grad is not None


def test_fresh_layers_store_real_masks():
    state = SparseConv2d(8, 4, 3).state_dict()
    assert is_valid_nm_mask(state["nm_mask"], "2:4") and not state["nm_mask"].all()


def test_saved_mask_follows_a_data_write():
    layer = SparseLinear(8, 2)
    layer.mask()
    new = torch.randn(2, 8)
    layer.weight.data.copy_(new)
    assert torch.equal(layer.state_dict()["nm_mask"], nm.nm_mask(new, "2:4"))


@pytest.mark.parametrize("bad", ["all-ones", "4:8"])
def test_fixed_layers_refuse_masks_that_do_not_fit_their_pattern(bad):
    state = SparseLinear(16, 4, method="fixed").state_dict()
    state["nm_mask"] = torch.ones(4, 16, dtype=torch.bool) if bad == "all-ones" else \
        nm.nm_mask(torch.randn(4, 16), "4:8")
    target = nn.Sequential(SparseLinear(16, 4, method="fixed"))
    with pytest.raises(RuntimeError, match=r"0\.nm_mask.*not a valid 2:4 mask"):
        target.load_state_dict({f"0.{k}": v for k, v in state.items()})


def test_a_sparse_state_dict_is_refused_by_a_dense_model():
    sparse = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    nm.sparsify(sparse, "2:4")
    dense = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"holds masks for 0.*export_dense"):
        check_sparse_state_dict(dense, sparse.state_dict())
    check_sparse_state_dict(copy.deepcopy(sparse), sparse.state_dict())  # sparse into sparse: fine
    check_sparse_state_dict(dense, nm.export_dense(sparse).state_dict())  # exported: fine


def test_decay_per_call_counts_every_call():
    """decay_mode='call' (the authors' code): a layer called 3 times in a step gets 3 decay terms."""
    grads = {}
    for mode in ("step", "call"):
        torch.manual_seed(0)
        layer = SparseLinear(8, 4, bias=False, decay=DECAY, decay_mode=mode)
        x = torch.randn(2, 8)
        (layer(x) + layer(x) + layer(x)).sum().backward()
        data = layer.weight.grad.clone()
        apply_srste_decay()
        grads[mode] = layer.weight.grad - data
        term = DECAY * (~layer.mask()) * layer.weight.detach()
        assert torch.allclose(grads[mode], term * (3 if mode == "call" else 1), atol=1e-6)
    assert "decay_mode=call" in repr(SparseLinear(8, 4, decay_mode="call"))


def test_decay_waits_for_the_optimizer_that_holds_the_weight():
    a, b = SparseLinear(8, 4, decay=DECAY), SparseLinear(8, 4, decay=DECAY)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.0)
    x = torch.randn(2, 8)
    (a(x).sum() + b(x).sum()).backward()
    before = a.weight.grad.clone()
    opt_b.step()
    assert torch.equal(a.weight.grad, before)  # a's decay is owed to a's optimizer
    torch.optim.SGD(a.parameters(), lr=0.0).step()
    assert not torch.equal(a.weight.grad, before)


def test_the_cuda_path_equals_the_cpu_path_exactly(tmp_path):
    """The Triton kernel (the layers' CUDA path), run by Triton's interpreter, over a few training steps with
    accumulation, evaluation, channels_last, a partial group and a frozen parameter: bit-identical results to the
    CPU path. Both run in fresh processes with the same thread count (float sums depend on it)."""
    pytest.importorskip("triton")
    worker = Path(__file__).with_name("triton_interpret_worker.py")
    results = {}
    for name, extra in (("triton", {"TRITON_INTERPRET": "1"}), ("cpu", {})):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(extra, OMP_NUM_THREADS="2")
        subprocess.run([sys.executable, str(worker), str(tmp_path / f"{name}.pt")], env=env, check=True, timeout=600)
        results[name] = torch.load(tmp_path / f"{name}.pt")
    got, cpu = results["triton"], results["cpu"]
    assert got["interpreted"] and not cpu["interpreted"]
    assert len(got["train"]["masks"]) == 4  # the partial-group conv (10 channels) is N:M too
    for a, b in zip(got["train"]["params"] + got["train"]["masks"], cpu["train"]["params"] + cpu["train"]["masks"]):
        assert torch.equal(a, b)
    for (mask, masked), (ref_mask, ref_masked) in zip(got["masks"], cpu["masks"]):
        assert torch.equal(mask, ref_mask) and torch.equal(masked, ref_masked)


def test_the_triton_kernel_flags_non_finite_weights():
    """In the interpreter the kernel raises the device flag; nm_mask reports it like the CPU kernel does."""
    pytest.importorskip("triton")
    code = ("import torch, nm_plugins as nm\n"
            "w = torch.randn(4, 8); w[1, 2] = float('nan')\n"
            "try:\n    nm.nm_mask(w, '2:4')\nexcept ValueError as e:\n    print('raised', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TRITON_INTERPRET="1"),
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "raised" in out and "NaN or inf" in out


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(),
                        nn.Linear(16 * 6 * 6, 10))
    nm.sparsify(net, "2:4", keep_classifier_dense=False)
    return net


def train(net, fn=None, steps=3):
    fn = fn or net
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        fn(torch.randn(4, 8, 6, 6, generator=gen)).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def test_torch_compile_trains_exactly_as_eager():
    """A plainly sparsified model (no example input: its first forward is probed eagerly) compiles and trains
    exactly as eager (the masked weight is the nm_sparsity::masked_weight operator inside the graph)."""
    eager = train(small_net())
    net = small_net()
    compiled = train(net, torch.compile(net, backend="aot_eager"))
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))


def test_channels_last_and_dtype_moves_train_like_the_plain_model():
    plain = train(small_net())
    moved = small_net().to(memory_format=torch.channels_last).double().float()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, train(moved)))


def test_resparsified_model_and_added_layers_follow_their_new_settings():
    net = small_net()
    train(net, steps=1)
    nm.sparsify(net, "1:4", keep_classifier_dense=False)
    net.append(SparseLinear(10, 4, pattern="2:8"))
    train(net, steps=2)
    for _, layer in nm.sparse_layers(net):
        assert is_valid_nm_mask(layer.mask(), layer.pattern)
    assert str(net[-1].pattern) == "2:8" and str(net[0].pattern) == "1:4"


def test_a_whole_sparse_model_pickles_and_keeps_training(tmp_path):
    net = small_net()
    train(net, steps=1)
    torch.save(net, tmp_path / "model.pt")
    back = torch.load(tmp_path / "model.pt", weights_only=False)
    assert all(torch.equal(a.mask(), b.mask()) for (_, a), (_, b) in zip(nm.sparse_layers(net), nm.sparse_layers(back)))
    assert all(torch.equal(a, b) for a, b in zip(train(net, steps=2), train(back, steps=2)))

"""The SR-STE decay under loss scaling and N:M layers under weight swaps, with the real training machinery
mmdetection configs use: mmengine's AmpOptimWrapper (its constructor needs CUDA; its methods also run on CPU),
torch's GradScaler in a user loop (CPU, bf16 autocast), and mmengine's EMAHook in a Runner with our
NMSparsityHook (as in the mmdet configs).

(a) The pruned weights' update equals -lr·(g + λ_W·w) with the configured λ_W, whatever the loss scale
    (2**16 here), where g is the straight-through gradient of the masked weight.
(b) In-training validation after EMAHook's swap scores exactly what a fresh model loaded with the EMA
    weights scores; a ``.data.copy_`` into an N:M weight is seen by the next no_grad forward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nm_plugins.core import SparseLinear, nm_mask, sparse_layers

LR, DECAY, SCALE = 0.1, 0.5, 2.0 ** 16


def _layer(device="cpu") -> SparseLinear:
    torch.manual_seed(0)
    return SparseLinear(16, 8, pattern="2:4", method="srste", decay=DECAY).to(device)


def _expected_step(layer: SparseLinear, x: torch.Tensor, autocast_dtype=None) -> tuple:
    """(new weight by the SR-STE formula with the configured λ_W, mask) for one SGD step on
    loss = 1e-3·sum(layer(x)), computed from a plain tensor (no N:M layer involved)."""
    w = layer.weight.detach().clone()
    mask = nm_mask(w, layer.pattern).to(w.dtype)
    masked = (w * mask).requires_grad_()
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = 1e-3 * F.linear(x, masked, layer.bias.detach()).float().sum()
    loss.backward()
    return w - LR * (masked.grad + DECAY * (1 - mask) * w), mask


def _loss(layer, x, autocast_dtype=None):
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return 1e-3 * layer(x).float().sum()


def _check_pruned_update(before, after, expected, mask, rtol):
    """The pruned weights moved as the formula says, and the λ_W fitted from their update (least squares,
    the gradient part subtracted) is the configured one; the old behaviour (decay added to the scaled
    gradient, then unscaled with it) gives λ_W / 65536."""
    pruned = mask == 0
    w = before[pruned]
    step, want = (after - before)[pruned], (expected - before)[pruned]
    grad = -want / LR - DECAY * w  # the straight-through gradient of the reference step
    effective = float(((-step / LR - grad) * w).sum() / (w * w).sum())
    assert effective == pytest.approx(DECAY, rel=rtol)
    torch.testing.assert_close(step, want, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_decay_is_the_configured_one_under_gradscaler_on_cpu(autocast_dtype):
    """A user loop with torch.amp.GradScaler (init scale 2**16), fp32 or bf16 autocast on CPU."""
    layer = _layer()
    x = torch.randn(4, 16)
    before = layer.weight.detach().clone()
    expected, mask = _expected_step(layer, x, autocast_dtype)
    opt = torch.optim.SGD(layer.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    scaler.scale(_loss(layer, x, autocast_dtype)).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == SCALE * 2 or scaler.get_scale() == SCALE  # the step was taken (no inf/nan)
    _check_pruned_update(before, layer.weight.detach(), expected, mask, rtol=1e-3 if autocast_dtype is None else 2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mmengine's AmpOptimWrapper asserts a GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_decay_is_the_configured_one_under_mmengine_amp_optim_wrapper(dtype):
    from mmengine.optim import AmpOptimWrapper

    layer = _layer("cuda")
    x = torch.randn(4, 16, device="cuda")
    before = layer.weight.detach().clone()
    expected, mask = _expected_step(layer, x, getattr(torch, dtype))
    wrapper = AmpOptimWrapper(optimizer=torch.optim.SGD(layer.parameters(), lr=LR), dtype=dtype,
                              loss_scale=dict(init_scale=SCALE))
    with wrapper.optim_context(layer):
        loss = 1e-3 * layer(x).float().sum()
    wrapper.update_params(loss)
    assert wrapper.loss_scaler.get_scale() >= SCALE
    _check_pruned_update(before, layer.weight.detach(), expected, mask, rtol=2e-2)


def test_decay_is_the_configured_one_under_mmengine_amp_optim_wrapper_methods_on_cpu():
    """mmengine's AmpOptimWrapper backward/step/update_params/optim_context (bf16 autocast) on CPU. Its
    constructor asserts a GPU, so this instance is made by OptimWrapper's constructor plus what the GPU
    constructor would set: a dynamic loss scaler (torch's GradScaler, for CPU, init scale 2**16) and the dtype."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    layer = _layer()
    x = torch.randn(4, 16)
    before = layer.weight.detach().clone()
    expected, mask = _expected_step(layer, x, torch.bfloat16)
    wrapper = AmpOptimWrapper.__new__(AmpOptimWrapper)
    OptimWrapper.__init__(wrapper, optimizer=torch.optim.SGD(layer.parameters(), lr=LR))
    wrapper._scale_update_param, wrapper.cast_dtype = None, torch.bfloat16
    wrapper.loss_scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    with wrapper.optim_context(layer):
        assert torch.is_autocast_enabled("cpu")
        loss = 1e-3 * layer(x).float().sum()
    wrapper.update_params(loss)
    assert wrapper.loss_scaler.get_scale() == SCALE
    _check_pruned_update(before, layer.weight.detach(), expected, mask, rtol=2e-2)


# ------------------------------------------------------------------------------------------------ EMA
def test_data_copy_into_nm_weight_is_seen_by_next_no_grad_forward():
    layer = _layer()
    x = torch.randn(3, 16)
    with torch.no_grad():
        layer(x)
        layer.train()
        layer(x)  # a training-mode forward caches too
        new = torch.randn_like(layer.weight)
        layer.weight.data.copy_(new)  # .data writes do not bump the parameter's version counter
        out = layer(x)
    want = F.linear(x, new * nm_mask(new, layer.pattern), layer.bias)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_training_forward_after_ema_style_swap_back_uses_the_restored_weight():
    """EMAHook's pattern: train step, .data swap in (no_grad evaluation), .data swap back, train again."""
    layer = _layer()
    x = torch.randn(3, 16)
    raw = layer.weight.detach().clone()
    layer(x).sum().backward()  # a training forward caches the masked weight for this weight version
    ema = torch.randn_like(raw)
    with torch.no_grad():
        layer.weight.data.copy_(ema)
        torch.testing.assert_close(layer(x), F.linear(x, ema * nm_mask(ema, layer.pattern), layer.bias), rtol=0, atol=0)
        layer.weight.data.copy_(raw)
    out = layer(x)
    torch.testing.assert_close(out, F.linear(x, raw * nm_mask(raw, layer.pattern), layer.bias), rtol=0, atol=0)


def _toy_model_cls():
    from mmengine.model import BaseModel

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(SparseLinear(8, 32, pattern="2:4", decay=2e-4), nn.ReLU(),
                                     SparseLinear(32, 4, pattern="2:4", decay=2e-4))

        def forward(self, inputs, labels=None, mode="tensor"):
            out = self.net(inputs)
            if mode == "loss":
                return {"loss": F.cross_entropy(out, labels)}
            return [o for o in out]  # predict: one output per sample

    return Toy


def _toy_runner(work_dir, outputs: list):
    from mmengine.evaluator import BaseMetric
    from mmengine.runner import Runner

    from nm_plugins.mmdet import NMSparsityHook  # logs masks after every step, as the mmdet configs do

    class Record(BaseMetric):
        def process(self, data_batch, data_samples):
            for o in data_samples:
                outputs.append(o.detach().clone())
                self.results.append(float(o.sum()))

        def compute_metrics(self, results):
            return {"score": sum(results)}

    g = torch.Generator().manual_seed(0)
    data = [{"inputs": torch.randn(8, generator=g), "labels": int(i % 4)} for i in range(16)]
    loader = dict(dataset=data, batch_size=4, sampler=dict(type="DefaultSampler", shuffle=False),
                  collate_fn=dict(type="default_collate"))
    torch.manual_seed(0)
    return Runner(model=_toy_model_cls()(), work_dir=str(work_dir), train_dataloader=loader, val_dataloader=loader,
                  val_evaluator=[Record()], train_cfg=dict(by_epoch=True, max_epochs=1, val_interval=1), val_cfg=dict(),
                  optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.5, momentum=0.9)),
                  custom_hooks=[dict(type="EMAHook", momentum=0.3), NMSparsityHook(interval=1)],
                  default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1), logger=None),
                  default_scope="mmengine")


def test_ema_hook_validation_scores_the_ema_weights(tmp_path):
    outputs: list = []
    runner = _toy_runner(tmp_path, outputs)
    runner.train()  # 4 iterations, then validation with EMAHook's swapped (.data.copy_) weights
    in_training = torch.stack(outputs)
    ckpt = torch.load(tmp_path / "epoch_1.pth", map_location="cpu", weights_only=False)
    fresh = _toy_model_cls()()
    fresh.load_state_dict(ckpt["state_dict"])  # EMAHook saves the EMA weights as the model's state_dict
    fresh.eval()
    raw = _toy_model_cls()()
    raw.load_state_dict({k[len("module."):]: v for k, v in ckpt["ema_state_dict"].items()
                         if k.startswith("module.")})  # the swapped-out raw training weights
    raw.eval()
    x = torch.stack([d["inputs"] for d in runner.val_dataloader.dataset])
    with torch.no_grad():
        want, raw_out = fresh.net(x), raw.net(x)
    assert not torch.allclose(want, raw_out, atol=1e-3)  # the EMA differs from the raw weights
    torch.testing.assert_close(in_training, want, rtol=0, atol=0)
    assert sum(1 for _ in sparse_layers(fresh)) == 2

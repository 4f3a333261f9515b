"""Layers whose weight the model reads directly (timm's BEiT / EVA02 / Swin-V2 ``F.linear(x, self.qkv.weight,
qkv_bias)``): no layer is reported sparse while computing dense. Real timm models, smallest variants, tiny sizes."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import nm_plugins.timm as nmt
from nm_plugins import count_params_flops, export_dense, is_valid_nm_mask, sparse_layers, sparsify
from nm_plugins.core.sparsify import READ_DIRECTLY, READ_ELSEWHERE, probe_layers

MODELS = {  # name: (timm name, kwargs, input shape); depth cut to keep the test quick
    "beit": ("beit_base_patch16_224", dict(img_size=32, depth=2, embed_dim=64, num_heads=2), (2, 3, 32, 32)),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2), (2, 3, 28, 28)),
    "swinv2": ("swinv2_tiny_window8_256", dict(img_size=32, window_size=2, depths=(1, 1, 1, 1), embed_dim=32,
                                                num_heads=(2, 2, 2, 2)), (2, 3, 32, 32)),
}


def _qkv_names(model):
    return [n for n, _ in model.named_modules() if n.endswith("attn.qkv")]


@pytest.mark.parametrize("case", MODELS)
def test_timm_models_that_read_qkv_weight_train_what_they_report(case):
    name, kwargs, shape = MODELS[case]
    # the plain timm model computes qkv through F.linear(x, self.qkv.weight, ...): its forward never runs
    plain = timm.create_model(name, num_classes=10, **kwargs)
    qkv = _qkv_names(plain)
    assert qkv and set(qkv) <= set(probe_layers(plain, torch.randn(shape)).read_directly)

    model = nmt.create_model(name, pattern="2:4", num_classes=10, **kwargs)  # the adapter probes by itself
    report = model.nm_report
    layers = dict(sparse_layers(model))
    assert set(report.sparse_layers) == set(layers) and set(qkv) <= set(layers)
    for n in qkv:  # made to run their own forward (timm's qkv_bias_separate), so they really are N:M
        entry = next(e for e in report.layers if e.name == n)
        assert entry.sparse and "own forward runs" in entry.reason
    ran = set()
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: ran.add(n)) for n, m in layers.items()]
    model.train()
    x = torch.randn(shape)
    model(x).sum().backward()  # the core's guard raises if a sparse weight got a gradient without its forward
    for h in hooks:
        h.remove()
    assert ran == set(layers), set(layers) - ran  # every reported-sparse layer computed through its mask
    for n, layer in layers.items():
        assert is_valid_nm_mask(layer.mask(), "2:4"), n
        assert layer.weight.grad is not None, n
    model.eval()
    with torch.no_grad():  # the masks are used: the dense export (weights times masks) computes the same
        assert torch.allclose(model(x), export_dense(model)(x), atol=1e-4)
    params, _ = count_params_flops(model, shape)
    dense_params, _ = count_params_flops(export_dense(model), shape)
    kept = sum(int(l.mask().sum()) for l in layers.values())
    assert dense_params - params == sum(l.weight.numel() for l in layers.values()) - kept


class ReadsWeights(nn.Module):
    """A block whose parent computes with its layers' weights itself (one never called, one also called)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24, bias=False)
        self.proj = nn.Linear(24, 8)
        self.qkv_bias = nn.Parameter(torch.zeros(24))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.proj(F.linear(x, self.qkv.weight, self.qkv_bias))
        y = y + y @ self.proj.weight[:, :8]  # proj's weight also read outside its own forward (a tie)
        return self.head(y)


def test_layers_whose_weight_is_read_directly_stay_dense():
    model = ReadsWeights()
    x = torch.randn(3, 8)
    report = sparsify(model, "2:4", example_inputs=x, keep_classifier_dense=False)
    assert report.dense_layers == {"qkv": READ_DIRECTLY, "proj": READ_ELSEWHERE}
    assert report.sparse_layers == ["head"]
    assert type(model.qkv) is nn.Linear and type(model.proj) is nn.Linear
    model(x).sum().backward()  # trains: nothing N:M is read behind its back
    params, _ = count_params_flops(model, (3, 8))
    assert params == sum(p.numel() for p in model.parameters()) - model.head.weight.numel() // 2

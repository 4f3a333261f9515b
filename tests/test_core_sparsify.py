import pytest
import timm
import torch
import torch.nn as nn

from nm_plugins import (SparseConv2d, SparseLinear, export_dense, is_valid_nm_mask, prune_once, sparse_layers,
                        sparsify, to_semi_structured)
from nm_plugins.core.mask import mask_backend


def test_compiled_mask_kernel_is_installed():
    # `make install` builds csrc/nm_mask_kernel.c; without it nm_mask falls back to the slower torch path
    assert mask_backend() == "kernel"


def test_resnet18_report():
    model = timm.create_model("resnet18", num_classes=10)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    report = sparsify(model, "2:4")
    assert report.dense_layers == {"conv1": "stem (first layer, sees the raw input) kept dense", "fc": "classifier kept dense"}
    assert set(report.sparse_layers) == set(convs) - {"conv1"}
    assert isinstance(model.layer1[0].conv1, SparseConv2d)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    text = str(report)
    assert "layer4.1.conv2" in text and "classifier kept dense" in text and "19 sparse, 2 dense" in text


def test_resnet50_keeps_weights_and_parameters():
    model = timm.create_model("resnet50")
    before = {n: p for n, p in model.named_parameters()}
    x = torch.randn(1, 3, 64, 64)
    report = sparsify(model, "4:8", method="ste")
    after = dict(model.named_parameters())
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    assert len(report.sparse_layers) == 52
    for name, layer in sparse_layers(model):
        assert str(layer.pattern) == "4:8" and layer.method == "ste"
        assert is_valid_nm_mask(layer.mask(), "4:8"), name
    assert model(x).shape == (1, 1000)


def test_vit_linear_layers_and_head():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8)
    report = sparsify(model, "2:4")
    assert report.dense_layers["head"] == "classifier kept dense"
    assert report.dense_layers["patch_embed.proj"] == "stem (first layer, sees the raw input) kept dense"
    assert "blocks.0.attn.qkv" in report.sparse_layers and "blocks.11.mlp.fc2" in report.sparse_layers
    assert isinstance(model.blocks[0].mlp.fc1, SparseLinear)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.blocks[0].mlp.fc1.weight.grad is not None


def test_depthwise_convs_stay_dense():
    model = timm.create_model("mobilenetv3_small_050", num_classes=10)
    report = sparsify(model, "2:4")
    reasons = report.dense_layers
    assert any("depthwise" in r for r in reasons.values())
    for name, reason in reasons.items():
        if "depthwise" in reason:
            assert model.get_submodule(name).groups == model.get_submodule(name).in_channels


def test_exclude_and_classifier_option():
    model = timm.create_model("resnet18", num_classes=12)
    report = sparsify(model, "2:4", exclude=("layer4.*",), keep_classifier_dense=False)
    assert report.dense_layers["layer4.0.conv1"] == "excluded"
    assert "fc" in report.sparse_layers


def test_resparsify_changes_pattern():
    model = timm.create_model("resnet18")
    sparsify(model, "2:4")
    sparsify(model, "1:4", method="ste")
    layer = model.layer2[0].conv1
    assert str(layer.pattern) == "1:4" and layer.method == "ste" and is_valid_nm_mask(layer.mask(), "1:4")


def test_bad_method_is_named():
    with pytest.raises(ValueError, match="'fancy'"):
        sparsify(nn.Linear(8, 8), "2:4", method="fancy")


def test_export_dense_matches_sparse_model():
    model = timm.create_model("resnet18", num_classes=10).eval()
    sparsify(model, "2:4")
    x = torch.randn(2, 3, 64, 64)
    plain = export_dense(model)
    assert not list(sparse_layers(plain))
    assert type(plain.layer1[0].conv1) is nn.Conv2d
    w = plain.layer1[0].conv1.weight
    assert torch.equal(w != 0, model.layer1[0].conv1.mask())
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5)
    assert list(sparse_layers(model))  # the original is untouched


def test_prune_once_freezes_magnitude_masks():
    model = timm.create_model("resnet18", num_classes=10)
    report = prune_once(model, "2:4")
    layer = model.layer1[0].conv1
    assert layer.method == "fixed" and report.method == "fixed"
    mask = layer.mask().clone()
    assert torch.all(layer.weight[~mask] == 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert torch.equal(layer.mask(), mask)
    assert torch.all(layer.weight[~mask] == 0)  # pruned weights got no gradient


def test_to_semi_structured_needs_cuda():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    sparsify(model, "2:4")
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU error")
    with pytest.raises(RuntimeError, match="CUDA"):
        to_semi_structured(model)

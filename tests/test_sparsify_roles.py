"""Classifier and stem found by role (timm's get_classifier() / pretrained_cfg, the probe forward), not by guess:
real timm models (small variants, random init, tiny inputs), with features_only and num_classes=0."""
import pytest
import timm
import torch
import torch.nn as nn

import nm_plugins.timm as nmt
from nm_plugins import SparseMixin, is_valid_nm_mask, sparse_layers, sparsify
from nm_plugins.core.sparsify import find_classifiers, find_stem

VIT = dict(img_size=32, patch_size=8, depth=3)
SWIN = dict(img_size=64, window_size=4, depths=(1, 1, 1, 1))
CASES = {  # name: (timm name, kwargs, input shape, classifier layers, stem layers)
    "resnet": ("resnet18", {}, (1, 3, 64, 64), ["fc"], ["conv1"]),
    "vit": ("vit_tiny_patch16_224", VIT, (1, 3, 32, 32), ["head"], ["patch_embed.proj"]),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", VIT, (1, 3, 32, 32), ["head", "head_dist"],
                       ["patch_embed.proj"]),
    "convnext": ("convnext_atto", {}, (1, 3, 64, 64), ["head.fc"], ["stem.0"]),
    "swin": ("swin_tiny_patch4_window7_224", SWIN, (1, 3, 64, 64), ["head.fc"], ["patch_embed.proj"]),
}


def _last_layer(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]


@pytest.mark.parametrize("case", CASES)
def test_classifiers_and_stem_by_role(case):
    name, kwargs, shape, classifiers, stem = CASES[case]
    model = timm.create_model(name, num_classes=10, **kwargs)
    assert find_classifiers(model) == classifiers
    assert find_stem(model) == stem
    report = sparsify(model, "2:4", example_inputs=torch.randn(shape))
    for c in classifiers:
        assert report.dense_layers[c] == "classifier kept dense"
    assert all(isinstance(model.get_submodule(c), (nn.Linear, nn.Conv2d)) and
               not isinstance(model.get_submodule(c), SparseMixin) for c in classifiers + stem)
    assert model(torch.randn(shape)).shape[-1] == 10


@pytest.mark.parametrize("case", CASES)
def test_headless_models_keep_no_classifier_dense(case):
    # num_classes=0 (the detection-neck path) and features_only: the last block stays N:M, nothing is "classifier"
    name, kwargs, shape, _, stem = CASES[case]
    for extra in ({"num_classes": 0}, {"features_only": True}):
        if case == "deit_distilled" and "features_only" in extra:
            continue  # timm: distilled ViTs have no features_only mode
        model = nmt.create_model(name, **kwargs, **extra)
        report = model.nm_report
        assert "classifier kept dense" not in report.dense_layers.values(), (case, extra, report.dense_layers)
        last = _last_layer(model)
        assert last in report.sparse_layers, (case, extra, last)
        assert isinstance(model.get_submodule(last), SparseMixin)
        out = model(torch.randn(shape))
        (out[-1] if isinstance(out, (list, tuple)) else out).float().mean().backward()


@pytest.mark.parametrize("case", ["resnet", "convnext"])
def test_groupable_stem_stays_dense(case):
    # in_chans=4 makes the stem groupable by M=4: it stays dense by its role, found by timm's first_conv
    name, kwargs, shape, _, stem = CASES[case]
    model = timm.create_model(name, in_chans=4, num_classes=10, **kwargs)
    report = sparsify(model, "2:4")
    assert report.dense_layers[stem[0]].startswith("stem")
    assert type(model.get_submodule(stem[0])) is nn.Conv2d
    # the same through the timm adapter, also for features_only (timm renames the stem there: found by the probe)
    feats = nmt.create_model(name, in_chans=4, features_only=True, **kwargs)
    stems = [n for n, r in feats.nm_report.dense_layers.items() if r.startswith("stem")]
    assert len(stems) == 1 and not isinstance(feats.get_submodule(stems[0]), SparseMixin)
    assert feats(torch.randn(1, 4, *shape[2:]))[0].shape[0] == 1
    # keep_stem_dense=False makes it N:M like any layer
    sparse_stem = nmt.create_model(name, in_chans=4, keep_stem_dense=False, **kwargs)
    assert stem[0] in sparse_stem.nm_report.sparse_layers


def test_stem_found_by_the_probe_without_timm_metadata():
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(1), nn.Linear(8 * 4 * 4, 5))
    report = sparsify(net, "2:4", example_inputs=torch.randn(1, 4, 8, 8))
    assert report.dense_layers == {"0": "stem (first layer, sees the raw input) kept dense",
                                   "4": "classifier kept dense"}
    # no probe, no timm metadata: no stem role is known; the classifier is the last nn.Linear, as before
    plain = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(1), nn.Linear(8 * 4 * 4, 5))
    assert sparsify(plain, "2:4").dense_layers == {"4": "classifier kept dense"}


def test_levit_distilled_heads_and_stem():
    model = timm.create_model("levit_128s", num_classes=10)
    assert find_classifiers(model) == ["head.linear", "head_dist.linear"]
    report = sparsify(model, "2:4")
    assert report.dense_layers["head.linear"] == report.dense_layers["head_dist.linear"] == "classifier kept dense"


def test_resparsify_makes_newly_dense_layers_plain():
    model = timm.create_model("resnet18", num_classes=10)
    sparsify(model, "2:4")
    report = sparsify(model, "2:4", exclude=("layer4.*",))
    assert report.dense_layers["layer4.0.conv1"] == "excluded"
    assert type(model.layer4[0].conv1) is nn.Conv2d  # not an N:M layer still masking while reported dense
    assert not [n for n, _ in sparse_layers(model) if n.startswith("layer4")]
    assert isinstance(model.layer3[0].conv1, SparseMixin)
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # trains, the dense layer4 with its full weight
    assert model.layer4[0].conv1.weight.grad is not None


def test_asp_prune_keeps_the_dense_layers_dense():
    model = nmt.create_model("resnet18", method="asp", num_classes=10, exclude=("layer4.*",))
    dense_before = dict(model.nm_report.dense_layers)
    report = nmt.asp_prune(model)
    assert report.dense_layers == dense_before  # layer4 (excluded), conv1, fc: same layers, same reasons
    assert type(model.layer4[1].conv2) is nn.Conv2d
    for _, layer in sparse_layers(model):
        assert layer.method == "fixed" and is_valid_nm_mask(layer.mask(), "2:4")


def test_probe_input_the_model_refuses_is_named():
    with pytest.raises(ValueError, match=r"probe forward with input of shape \[\(1, 3, 32, 32\)\].*probe_input="):
        nmt.create_model("vit_tiny_patch16_224", depth=1, num_classes=3, probe_input=torch.randn(1, 3, 32, 32))
    # the default probe follows img_size / in_chans; the 4-channel patch embedding is the stem, kept dense
    model = nmt.create_model("vit_tiny_patch16_224", depth=1, img_size=(32, 48), in_chans=4, num_classes=3)
    assert model.nm_report.dense_layers == {"patch_embed.proj": "stem (first layer, sees the raw input) kept dense",
                                            "head": "classifier kept dense"}

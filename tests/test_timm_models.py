"""nm_plugins.timm: registered N:M names, the generic create_model, ASP models, local checkpoints."""
import pytest
import timm
import torch

import nm_plugins.timm as nmt
from nm_plugins import count_params_flops, export_dense, is_valid_nm_mask, nm_mask, sparse_layers

REQUIRED = ([f"nm_resnet50_{m}_{p}" for m in ("srste", "ste", "asp") for p in ("2_4", "4_8", "1_4", "2_8")]
            + ["nm_resnet50x1_25_srste_2_8"] + [f"nm_resnet18_{m}_2_4" for m in ("srste", "ste", "asp")])


def test_required_names_are_registered_with_timm():
    known = set(timm.list_models("nm_*"))
    assert set(REQUIRED) <= known
    assert {"cifar_resnet8", "cifar_resnet14", "cifar_resnet20"} <= set(timm.list_models("cifar_resnet*"))
    assert set(nmt.registered_nm_models()) <= known


@pytest.mark.parametrize("name,method,pattern", [("nm_resnet18_srste_2_4", "srste", "2:4"),
                                                 ("nm_resnet18_ste_2_4", "ste", "2:4"),
                                                 ("nm_resnet50_srste_1_4", "srste", "1:4")])
def test_registered_model_layers_follow_the_name(name, method, pattern):
    model = timm.create_model(name)
    layers = dict(sparse_layers(model))
    assert layers, "no N:M layers"
    assert all(l.method == method and str(l.pattern) == pattern for l in layers.values())
    assert "fc" not in layers and "conv1" not in layers  # classifier dense; 3-channel stem not groupable
    assert all(is_valid_nm_mask(l.mask(), pattern) for l in layers.values())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_paper_param_counts():
    params_24, flops_24 = count_params_flops(timm.create_model("nm_resnet50_srste_2_4"), (1, 3, 224, 224))
    wide = timm.create_model("nm_resnet50x1_25_srste_2_8")
    params_125, _ = count_params_flops(wide, (1, 3, 224, 224))
    assert abs(params_24 / 1e6 - 13.8) < 0.1      # paper: 13.8M
    assert abs(params_125 / 1e6 - 11.8) < 0.05    # paper: 11.8M (1.25x width, 2:8)
    # every width times 1.25, the stem included (timm's plain ResNet stem ignores stem_width)
    assert wide.conv1.out_channels == wide.bn1.num_features == 80 and type(wide.conv1) is torch.nn.Conv2d
    assert wide.layer1[0].conv1.in_channels == wide.layer1[0].downsample[0].in_channels == 80
    assert [wide.get_submodule(f"layer{i}")[0].conv3.out_channels for i in (1, 2, 3, 4)] == [320, 640, 1280, 2560]
    assert wide(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    dense_params, dense_flops = count_params_flops(timm.create_model("resnet50"), (1, 3, 224, 224))
    assert abs(dense_params / 1e6 - 25.6) < 0.1 and abs(dense_flops / 1e9 - 4.09) < 0.01
    assert 0.5 < flops_24 / dense_flops < 0.53


def test_asp_model_trains_dense_until_pruned():
    model = timm.create_model("nm_resnet18_asp_2_4")
    layers = dict(sparse_layers(model))
    assert all(l.method == "dense" for l in layers.values())
    x = torch.randn(2, 3, 32, 32)
    plain = nmt.create_model("resnet18", method="dense")
    plain.load_state_dict(model.state_dict())
    assert torch.equal(model.eval()(x), plain.eval()(x))
    report = nmt.asp_prune(model)
    assert model.nm_config["method"] == "fixed" and set(report.sparse_layers) == set(layers)
    for layer in layers.values():
        assert layer.method == "fixed" and is_valid_nm_mask(layer.mask(), "2:4")
        assert torch.all(layer.weight[~layer.mask()] == 0)


def test_generic_create_model_any_timm_model():
    model = nmt.create_model("resnet10t", pattern="4:8", method="ste", num_classes=7, in_chans=1)
    assert model.nm_config == {"pattern": "4:8", "method": "ste", "decay": 0.0, "stem": "dense"}
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert all(str(l.pattern) == "4:8" for _, l in sparse_layers(model))
    with pytest.raises(ValueError, match="unknown N:M method 'magic'"):
        nmt.create_model("resnet10t", method="magic")


def test_local_dense_checkpoint_loads_into_sparse_model(tmp_path):
    dense = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18_dense.pth"
    torch.save(dense.state_dict(), path)
    sparse = timm.create_model("nm_resnet18_srste_2_4", num_classes=10, checkpoint_path=str(path))
    for name, layer in sparse_layers(sparse):
        ref = dense.get_submodule(name).weight
        assert torch.equal(layer.weight, ref)
        assert torch.equal(layer.mask(), nm_mask(ref, "2:4"))
    # our own sparse checkpoints (with masks) load back, also through the generic create_model
    torch.save({"model": sparse.state_dict()}, tmp_path / "sparse.pt")
    again = nmt.create_model("resnet18", pattern="2:4", num_classes=10, checkpoint_path=tmp_path / "sparse.pt")
    assert all(torch.equal(a.mask(), b.mask()) for (_, a), (_, b) in zip(sparse_layers(sparse), sparse_layers(again)))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        nmt.create_model("resnet18", checkpoint_path=tmp_path / "missing.pth")


def test_sparse_checkpoint_into_dense_layers_raises(tmp_path):
    sparse = nmt.create_model("resnet18", pattern="2:4", num_classes=10)
    path = tmp_path / "sparse.pth"
    torch.save({"model": sparse.state_dict()}, path)
    # layer4 dense here: the file's layer4 masks would be dropped and the unmasked master weights used
    with pytest.raises(ValueError, match="layer4.0.conv1"):
        nmt.create_model("resnet18", pattern="2:4", num_classes=10, exclude=("layer4.*",), checkpoint_path=path)
    dense_layer4 = nmt.create_model("resnet18", pattern="2:4", num_classes=10, exclude=("layer4.*",))
    with pytest.raises(ValueError, match="layer4.0.conv1"):
        nmt.load_local_checkpoint(dense_layer4, path, strict=False)
    with pytest.raises(ValueError, match="export_dense"):
        dense_layer4.load_state_dict(sparse.state_dict(), strict=False)  # the model's own load is checked too
    # the dense export loads into any model, a plain timm one included
    plain = timm.create_model("resnet18", num_classes=10)
    plain.load_state_dict(export_dense(sparse).state_dict())


def test_authors_checkpoint_is_converted_on_load(tmp_path):
    from nm_plugins.timm.authors import authors_stem_mask
    theirs = timm.create_model("resnet18", num_classes=10)  # their ResNetV1 uses the same key names
    path = tmp_path / "model-best.pth"
    torch.save({"epoch": 120, "model": "resnet18", "best_prec1": 71.2,
                "state_dict": {"module." + k: v for k, v in theirs.state_dict().items()}}, path)
    ours = nmt.create_model("resnet18", pattern="2:4", num_classes=10, checkpoint_path=path)
    stem = theirs.conv1.weight
    assert torch.equal(ours.conv1.weight, stem * authors_stem_mask(stem, "2:4").to(stem.dtype))
    for name, layer in sparse_layers(ours):
        assert torch.equal(layer.weight, theirs.get_submodule(name).weight), name

"""timm's registry and loaders on our models, and timm's generic model tests (forward, backward, default cfgs,
features, intermediates, FX, TorchScript trace) on every registered name and on plain timm models sparsified by us,
at small inputs."""
import pytest
import timm
import torch
import torch.nn as nn

import nm_plugins.timm as nt
from nm_plugins.core import export_dense, sparse_layers, sparsify
from nm_plugins.timm.cifar_resnet import CifarResNet

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",
                                        "ignore::torch.jit.TracerWarning", "ignore::UserWarning")

OURS = nt.registered_nm_models() + ["resnet50x1_25", "cifar_resnet8", "cifar_resnet14", "cifar_resnet20"]
# one per (base, method), plus the CIFAR ResNets: forward and backward
REPRESENTATIVE = ["nm_resnet18_srste_2_4", "nm_resnet18_ste_4_8", "nm_resnet18_asp_1_4", "nm_resnet18_srste_2_8",
                  "cifar_resnet8"]
PLAIN_TIMM = ["test_vit", "test_convnext", "test_efficientnet", "test_byobnet"]


def _x(model, batch=2, size=None):
    c, h, w = model.pretrained_cfg["input_size"]
    h = w = size or min(h, 64)
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", OURS)
def test_every_name_has_a_pretrained_cfg_in_timms_registry(name):
    assert timm.get_pretrained_cfg_value(name, "input_size") is not None
    assert timm.get_pretrained_cfg_value(name, "first_conv") and timm.get_pretrained_cfg_value(name, "classifier")
    assert name in timm.list_models(name, name_matches_cfg=True)
    if name.startswith("nm_resnet18_") or name.startswith("nm_resnet50_"):
        base = name.split("_")[1]
        assert {t.partition(".")[2] for t in timm.list_pretrained(f"{name}.*")} == \
            {t.partition(".")[2] for t in timm.list_pretrained(f"{base}.*")}


def test_entrypoints_honour_tags_local_overlays_and_cache_dir(tmp_path):
    model = timm.create_model("nm_resnet50_srste_2_4.tv_in1k")
    assert model.pretrained_cfg["tag"] == "tv_in1k" and model.pretrained_cfg["architecture"] == "nm_resnet50_srste_2_4"
    torch.manual_seed(3)
    base = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / "dense.pth"
    torch.save(base.state_dict(), path)
    # pretrained=True with a local file: loaded from it (before: the hub, offline an error), then made N:M
    sparse = timm.create_model("nm_resnet18_srste_2_4", pretrained=True, num_classes=10, cache_dir=tmp_path / "cache",
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(sparse.layer2[0].conv1.weight, base.layer2[0].conv1.weight)
    assert isinstance(sparse.layer2[0].conv1, nn.Conv2d) and len(dict(sparse_layers(sparse))) > 10
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("cifar_resnet8", pretrained=True)


def _file(tmp_path, kind):
    """A checkpoint file of each kind load_local_checkpoint accepts."""
    from test_authors_checkpoint import TheirResNet, their_file

    torch.manual_seed(1)
    if kind.startswith("authors"):
        theirs = TheirResNet(18, num_classes=10, n=2, m=4).eval()
        path = their_file(tmp_path, theirs, "resnet18")
        if kind == "authors_prefixed":  # a bare module.-prefixed state dict
            obj = torch.load(path, weights_only=True)["state_dict"]
            torch.save(obj, path)
        return path, theirs
    source = timm.create_model("resnet18", num_classes=10) if kind == "dense" else \
        nt.create_model("resnet18", pattern="2:4", num_classes=10)
    path = tmp_path / f"{kind}.pth"
    obj = source.state_dict()
    torch.save({"model": obj, "epoch": 3} if kind == "trainer" else obj, path)
    return path, None


@pytest.mark.parametrize("kind", ["authors", "authors_prefixed", "sparse", "trainer"])
def test_timm_checkpoint_path_loads_as_our_loader(tmp_path, kind):
    """timm.create_model(..., checkpoint_path=) used to load the authors' dense stem without their stem mask."""
    path, theirs = _file(tmp_path, kind)
    via_timm = timm.create_model("nm_resnet18_srste_2_4", num_classes=10, checkpoint_path=str(path)).eval()
    ours = nt.create_model("resnet18", pattern="2:4", num_classes=10, checkpoint_path=path).eval()
    a, b = via_timm.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if theirs is not None:
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(via_timm(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_cifar_resnets_follow_timms_conventions():
    model = timm.create_model("cifar_resnet8", num_classes=7)
    assert model.default_cfg["input_size"] == (3, 32, 32) and model.pretrained_cfg["architecture"] == "cifar_resnet8"
    assert [f["module"] for f in model.feature_info] == ["act1", "layer1", "layer2", "layer3"]
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert torch.equal(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, 64) and isinstance(model.get_classifier(), nn.Identity)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    final, inter = model.forward_intermediates(x)
    assert torch.equal(final, model.forward_features(x)) and [t.shape[1] for t in inter] == [16, 16, 32, 64]
    features = timm.create_model("cifar_resnet8", features_only=True, out_indices=(1, 3), in_chans=1)
    outs = features(torch.randn(1, 1, 28, 28))
    assert [o.shape[1] for o in outs] == features.feature_info.channels() == [16, 64]
    with pytest.raises(TypeError, match="unexpected"):
        CifarResNet(bogus=1)


SPARSIFIED = PLAIN_TIMM + ["cifar_resnet8"]


def _make(name, **kwargs):
    """A registered nm_* model, or a timm model made N:M by plain sparsify (it probes itself at the cfg's input
    size)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    if name in SPARSIFIED:
        assert sparsify(model, "2:4").sparse_layers
    return model


def _input(model, name, batch):
    return _x(model, batch, size=None if name in PLAIN_TIMM else 64)


@pytest.mark.parametrize("name", REPRESENTATIVE + PLAIN_TIMM)
def test_forward_backward(name):
    model = _make(name, num_classes=10).train()
    x = _input(model, name, 2)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    layers = dict(sparse_layers(model))
    assert layers and all(layer.weight.grad is not None for layer in layers.values())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), export_dense(model)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["nm_resnet18_srste_2_4", "cifar_resnet8"] + PLAIN_TIMM)
def test_features_intermediates_fx_and_trace(name):
    """timm's test_model_forward_features / _intermediates / _fx / _torchscript (trace) on the sparse model."""
    from timm.models import FeatureGraphNet
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names

    model = _make(name, num_classes=10).eval()
    x = _input(model, name, 1)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(torch.jit.trace(model, x)(x), want)
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(model.forward_head(final), want, rtol=0, atol=1e-6)
        graph = FeatureGraphNet(model, out_indices=tuple(range(len(inter))))
        for a, b in zip(graph(x), inter):  # a ViT's graph gives tokens (NLC, class token first), its maps NCHW
            b = b if a.dim() == b.dim() else b.flatten(2).transpose(1, 2)
            assert torch.equal(a[:, a.shape[1] - b.shape[1]:], b)
        output_node = get_graph_node_names(model)[1][-1]
        fx_model = create_feature_extractor(model, return_nodes=[output_node])
        assert torch.equal(fx_model(x)[output_node], want)
    features = _make(name, features_only=True)
    outs = features(x)
    assert [o.shape[1] for o in outs] == features.feature_info.channels()
    assert any(True for _ in sparse_layers(features))

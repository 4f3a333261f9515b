"""The authors' N:M stem, selectable: a layer-level grouping option (``grouping="authors_flat"``: M consecutive
entries of the weight laid out [out, kh, kw, in], as their ``Sparse_NHWC``), ``create_model(..., stem="authors")``,
the trainer's ``sparsity.stem``, and their released checkpoints loaded with their stem as they ran it."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import nm_plugins.timm as nmt
from nm_plugins.core import SADTracker, SparseConv2d, SparseLinear, is_valid_nm_mask, nm_mask, sparse_layers
from nm_plugins.timm.authors import AuthorsCheckpointError
from test_authors_checkpoint import TheirResNet, their_file, their_mask

PATTERNS = ["2:4", "1:4", "2:8"]


def nm(pattern):
    return tuple(map(int, pattern.split(":")))


def their_linear_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Their ``Sparse`` (SparseLinear): the M-N smallest |w| of every M consecutive entries of w.reshape(-1, M)."""
    rows = w.detach().abs().reshape(-1, m)
    drop = torch.argsort(rows, dim=1)[:, : m - n]
    return torch.ones_like(rows).scatter_(1, drop, 0.0).reshape(w.shape).bool()


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(64, 3, 7, 7), (80, 3, 7, 7), (8, 2, 3, 3), (16, 8, 3, 3)])
def test_mask_is_their_sparse_nhwc_grouping(pattern, shape):
    n, m = nm(pattern)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    if w.numel() % m:
        pytest.skip("their SparseConv cannot run this shape")
    theirs = their_mask(w, n, m).bool()
    mask = nm_mask(w, pattern, grouping="authors_flat")
    assert torch.equal(mask, theirs)
    assert is_valid_nm_mask(mask, pattern, grouping="authors_flat")
    conv = SparseConv2d(shape[1], shape[0], shape[2], pattern=pattern, grouping="authors_flat")
    with torch.no_grad():
        conv.weight.copy_(w)
    assert torch.equal(conv.mask(), theirs) and conv.mask_is_valid()
    # channels_last weights give the same mask
    assert torch.equal(nm_mask(w.to(memory_format=torch.channels_last), pattern, grouping="authors_flat"), theirs)
    if shape[1] % m:  # 3 RGB channels: the groups differ from the default (channel) grouping
        assert not torch.equal(mask, nm_mask(w, pattern))
        assert not is_valid_nm_mask(mask, pattern)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_linear_authors_flat_is_their_sparse(pattern):
    n, m = nm(pattern)
    lin = SparseLinear(24, 6, pattern=pattern, grouping="authors_flat")
    assert torch.equal(lin.mask(), their_linear_mask(lin.weight, n, m))


@settings(max_examples=60, deadline=None)
@given(out=st.integers(1, 6), groups=st.integers(1, 3), k=st.integers(1, 3), ties=st.booleans(),
       pattern=st.sampled_from(["2:4", "1:4", "2:8", "4:8", "1:2"]), seed=st.integers(0, 2**16))
def test_same_mask_as_channel_groups_when_channels_divide_by_m(out, groups, k, ties, pattern, seed):
    _, m = nm(pattern)
    g = torch.Generator().manual_seed(seed)
    shape = (out, groups * m, k, k)
    w = torch.randint(-2, 3, shape, generator=g).float() if ties else torch.randn(shape, generator=g)
    assert torch.equal(nm_mask(w, pattern, grouping="authors_flat"), nm_mask(w, pattern))
    mask = nm_mask(w, pattern)
    assert is_valid_nm_mask(mask, pattern, grouping="authors_flat") and is_valid_nm_mask(mask, pattern)


def test_default_grouping_unchanged_and_bad_input_named():
    conv = SparseConv2d(3, 8, 3)
    assert conv.grouping == "channels" and "grouping" not in repr(conv)
    assert torch.equal(conv.mask(), nm_mask(conv.weight, "2:4"))
    with pytest.raises(ValueError, match="grouping"):
        SparseConv2d(8, 8, 3, grouping="nhwc")
    with pytest.raises(ValueError, match=r"SparseConv2d.*\(5, 3, 3, 3\) has 135 entries, not divisible by M=4"):
        SparseConv2d(3, 5, 3, grouping="authors_flat")
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask(torch.randn(5, 3, 3, 3), "2:4", grouping="authors_flat")


class TheirSparseNHWC(torch.autograd.Function):
    """Their SR-STE autograd function (mask from [out, kh, kw, in] groups, decay added in the backward)."""

    @staticmethod
    def forward(ctx, weight, n, m, decay):
        mask = their_mask(weight, n, m)
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * (1 - mask) * weight, None, None, None


@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
def test_training_keeps_their_grouping(pattern):
    """SR-STE steps on a 3-channel stem in their grouping: the same weights as their autograd function, masks
    valid in their grouping after every step, SAD and the no-grad path in that grouping."""
    n, m = nm(pattern)
    torch.manual_seed(0)
    ours = SparseConv2d(3, 8, 3, padding=1, bias=False, pattern=pattern, decay=0.05, grouping="authors_flat")
    ref = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    ref.weight.data.copy_(ours.weight.data)
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.5, momentum=0.9)
    opt_b = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    tracker = SADTracker(nn.Sequential(ours))
    first = ours.mask().clone()
    for step in range(8):
        x = torch.randn(4, 3, 6, 6)
        for model, opt in ((ours, opt_a), (ref, opt_b)):
            opt.zero_grad()
            w = model.weight if model is ours else TheirSparseNHWC.apply(ref.weight, n, m, 0.05)
            out = model(x) if model is ours else F.conv2d(x, w, None, 1, 1)
            out.square().mean().backward()
            opt.step()
        torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=1e-6)
        mask = ours.mask()
        assert ours.mask_is_valid() and is_valid_nm_mask(mask, pattern, grouping="authors_flat"), step
        assert torch.equal(mask, their_mask(ours.weight, n, m).bool()), step
    record = tracker.record()
    assert record["model"]["sad_init"] == int((ours.mask() != first).sum()) > 0  # masks did move
    # no-grad forward after a write that bypasses the version counter: their mask of the weight as it is
    new = torch.randn_like(ours.weight)
    ours.weight.data.copy_(new)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), F.conv2d(x, new * their_mask(new, n, m), None, 1, 1))


def test_grouping_survives_copy_and_state_dict_and_load_checks_it():
    torch.manual_seed(1)
    layer = SparseConv2d(3, 8, 3, method="fixed", grouping="authors_flat")
    assert "grouping=authors_flat" in repr(layer)
    clone = copy.deepcopy(layer)
    assert clone.grouping == "authors_flat" and torch.equal(clone.mask(), their_mask(layer.weight, 2, 4).bool())
    sd = layer.state_dict()
    assert torch.equal(sd["nm_mask"], their_mask(layer.weight, 2, 4).bool())
    target = SparseConv2d(3, 8, 3, method="fixed", grouping="authors_flat")
    target.load_state_dict(sd)
    assert torch.equal(target.mask(), sd["nm_mask"]) and target.mask_is_valid()
    # a mask in channel groups (valid there, 2 of the 3 channels) is not a mask of their grouping: refused
    channels = SparseConv2d(3, 8, 3, method="fixed")
    channels.weight.data.copy_(layer.weight.data)
    channel_sd = channels.state_dict()
    assert is_valid_nm_mask(channel_sd["nm_mask"], "2:4")
    assert not torch.equal(channel_sd["nm_mask"], sd["nm_mask"])
    with pytest.raises(RuntimeError, match="not a valid 2:4 mask in grouping authors_flat"):
        target.load_state_dict(channel_sd)
    with pytest.raises(RuntimeError, match="not a valid 2:4 mask"):  # and the other way round
        channels.load_state_dict(sd)
    # where channels divide by M the two groupings agree: the channel-grouped mask loads
    a = SparseConv2d(8, 4, 3, method="fixed")
    b = SparseConv2d(8, 4, 3, method="fixed", grouping="authors_flat")
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.mask(), a.mask())


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_create_model_stem_choices(pattern):
    n, m = nm(pattern)
    model = nmt.create_model("resnet18", pattern=pattern, stem="authors", num_classes=10)
    stem = model.conv1
    assert isinstance(stem, SparseConv2d) and stem.grouping == "authors_flat" and stem.pattern.m == m
    assert torch.equal(stem.mask(), their_mask(stem.weight, n, m).bool())
    assert "conv1" in model.nm_report.sparse_layers and model.nm_config["stem"] == "authors"
    assert "authors' grouping" in dict((e.name, e.reason) for e in model.nm_report.layers)["conv1"]
    assert all(layer.grouping == "channels" for name, layer in sparse_layers(model) if name != "conv1")
    # dense (default) and nm (channel groups, zero-padded) stems; keep_stem_dense is the older spelling
    assert type(nmt.create_model("resnet18", pattern=pattern, num_classes=10).conv1) is nn.Conv2d
    nm_stem = nmt.create_model("resnet18", pattern="2:4", stem="nm", num_classes=10).conv1
    assert isinstance(nm_stem, SparseConv2d) and nm_stem.grouping == "channels"
    assert nmt.create_model("resnet18", keep_stem_dense=False, num_classes=10).conv1.grouping == "channels"
    with pytest.raises(ValueError, match="contradicts"):
        nmt.create_model("resnet18", stem="authors", keep_stem_dense=True)
    with pytest.raises(ValueError, match="unknown stem"):
        nmt.create_model("resnet18", stem="flat")


def test_checkpoint_of_one_stem_grouping_refused_by_the_other(tmp_path):
    authors = nmt.create_model("resnet18", stem="authors", num_classes=10)
    channels = nmt.create_model("resnet18", stem="nm", num_classes=10)
    path = tmp_path / "authors_stem.pth"
    torch.save({"model": authors.state_dict()}, path)
    with pytest.raises(ValueError, match=r"conv1 \(saved in grouping authors_flat, here channels\)"):
        nmt.load_local_checkpoint(channels, path)
    with pytest.raises(ValueError, match=r"conv1 \(saved in grouping channels, here authors_flat\)"):
        authors.load_state_dict(channels.state_dict())  # the model's own load is checked too
    # the same grouping loads, and the stem's mask follows the loaded weight in that grouping
    again = nmt.create_model("resnet18", stem="authors", num_classes=10, checkpoint_path=path)
    assert torch.equal(again.conv1.weight, authors.conv1.weight)
    assert torch.equal(again.conv1.mask(), authors.conv1.mask())


def test_authors_stem_that_cannot_be_grouped_is_named():
    # resnet10t's deep stem starts with a 24x3x3x3 conv: 648 weights, not divisible by 16
    with pytest.raises(ValueError, match=r"stem='authors'.*'conv1\.0'.*not divisible by M=16"):
        nmt.create_model("resnet10t", pattern="2:16", stem="authors", num_classes=10)


def test_asp_keeps_the_authors_stem():
    model = nmt.create_model("resnet18", method="asp", stem="authors", num_classes=10)
    report = nmt.asp_prune(model)
    assert model.conv1.method == "fixed" and model.conv1.grouping == "authors_flat"
    assert torch.equal(model.conv1.mask(), their_mask(model.conv1.weight, 2, 4).bool())
    assert "authors' grouping" in dict((e.name, e.reason) for e in report.layers)["conv1"]


@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
def test_their_checkpoint_with_their_stem(tmp_path, pattern):
    n, m = nm(pattern)
    theirs = TheirResNet(18, num_classes=10, n=n, m=m).eval()
    path = their_file(tmp_path, theirs, "resnet18")
    ours = nmt.create_model("resnet18", pattern=pattern, stem="authors", num_classes=10, checkpoint_path=path).eval()
    # every conv is N:M, as in theirs; the stem holds their dense weight (not baked) and recomputes their mask
    their_convs = {name: mod for name, mod in theirs.named_modules() if isinstance(mod, nn.Conv2d)}
    layers = dict(sparse_layers(ours))
    assert set(layers) == set(their_convs)
    assert torch.equal(ours.conv1.weight, theirs.conv1.weight)
    for name, layer in layers.items():
        assert torch.equal(layer.mask(), their_mask(their_convs[name].weight, n, m).bool()), name
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    # a stem N:M in channel groups cannot hold their stem: refused, naming the way out
    with pytest.raises(AuthorsCheckpointError, match="stem='authors'"):
        nmt.create_model("resnet18", pattern=pattern, stem="nm", num_classes=10, checkpoint_path=path)


def test_trainer_config_passes_the_stem_through():
    from pathlib import Path

    from nm_plugins.train.classify import build_model
    from nm_plugins.train.config import load_config
    repo = Path(__file__).resolve().parents[1]
    variant = load_config(repo / "configs/imagenet/variants/resnet50_srste_2_4_authors_stem.yaml")
    row = load_config(repo / "configs/imagenet/resnet50_srste_2_4.yaml")
    assert variant["sparsity"]["stem"] == "authors" and row["sparsity"]["stem"] == "dense"
    assert {k: v for k, v in variant.items() if k not in ("name", "sparsity")} == \
        {k: v for k, v in row.items() if k not in ("name", "sparsity")}
    proxy = repo / "configs/imagenet_proxy/fashion_mnist.yaml"
    model = build_model(load_config(proxy, ["sparsity.stem=authors"]), num_classes=10, in_chans=1)
    stems = [layer for _, layer in sparse_layers(model) if layer.grouping == "authors_flat"]
    assert len(stems) == 1 and stems[0].weight.shape[1] == 1
    with pytest.raises(ValueError, match="sparsity.stem"):
        load_config(proxy, ["sparsity.stem=yes"])

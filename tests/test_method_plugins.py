"""N:M training methods as registered plugins (issue 25): the registry, and a toy method defined here used through
every adapter (sparsify, timm, mmdet configs, RAFT, the classification and translation trainers' configs), its
mask, forward weight, gradient, step count and input-gradient weight checked against direct computations."""
from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nm_plugins.core import (METHODS, NMMethod, SparseConv2d, SparseLinear, make_method, method_names,
                             register_method, sparse_layers, sparsify)
from nm_plugins.core.mask import from_groups, group_topn, to_groups

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def most_positive(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The toy rule: the N most positive weights of every group of M input channels (padding never kept)."""
    shifted = weight - weight.min() + 1.0  # every real weight > 0 > ... = the zero padding of a partial group
    return from_groups(group_topn(to_groups(shifted, m), n), weight.shape)


@register_method("half_test")
class Half(NMMethod):
    """Forward weight = W ⊙ (mask + scale·(1−mask)); the mask keeps the N most positive weights of each group,
    refreshed every ``every`` optimizer steps."""

    defaults = {"scale": 0.5, "every": 1}
    uses_step = True

    def validate(self) -> None:
        if not 0.0 <= self.settings["scale"] <= 1.0:
            raise ValueError(f"half_test: scale must be in [0, 1], got {self.settings['scale']}")

    def compute_mask(self, weight, pattern, grouping, step):
        return most_positive(weight, pattern.n, pattern.m)

    def mask_due(self, step):
        return step % self.settings["every"] == 0

    def forward_weight(self, weight, mask, step):
        keep = mask.to(weight.dtype)
        return weight * (keep + self.settings["scale"] * (1 - keep))


@register_method("half_igw_test")
class HalfHardBackward(Half):
    """Half, whose input gradient is computed with the hard-masked weight W ⊙ mask."""

    def input_grad_weight(self, weight, mask, step):
        return weight * mask.to(weight.dtype)


@register_method("positive_every_test")
class PositiveEvery(NMMethod):
    """The built-in weight ⊙ mask forward (cached path), with the toy mask rule refreshed every ``every`` steps."""

    defaults = {"every": 2}
    uses_step = True

    def compute_mask(self, weight, pattern, grouping, step):
        return most_positive(weight, pattern.n, pattern.m)

    def mask_due(self, step):
        return step % self.settings["every"] == 0


def half_weight(w, mask, scale):
    keep = mask.to(w.dtype)
    return w * (keep + scale * (1 - keep))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 8))


def sparse_tiny(method="half_test", **kw):
    model = tiny_model()
    report = sparsify(model, "2:4", method=method, keep_classifier_dense=False, keep_stem_dense=False,
                      example_inputs=torch.randn(1, 8, 4, 4), **kw)
    return model, report


def train_steps(model, steps, lr=0.5, seed=1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8, 4, 4, generator=g)).square().mean().backward()
        opt.step()
    return opt


# --- the registry -------------------------------------------------------------------------------------------------
def test_registry_names_errors_and_duplicates():
    names = method_names()
    assert names[:5] == ("srste", "ste", "fixed", "dense", "asp") and "half_test" in names
    assert set(METHODS) <= set(names)
    with pytest.raises(ValueError, match="unknown sparsity method 'magic': expected one of srste, ste, fixed"):
        make_method("magic")
    with pytest.raises(ValueError, match="unknown setting.*'?scal'?.*its settings: every, scale"):
        make_method("half_test", scal=0.3)
    with pytest.raises(ValueError, match="unknown setting"):
        sparsify(tiny_model(), "2:4", method="srste", method_args={"lambda_w": 1e-3}, example_inputs=False)
    with pytest.raises(ValueError, match="scale must be in"):
        sparsify(tiny_model(), "2:4", method="half_test", method_args={"scale": 2.0}, example_inputs=False)
    with pytest.raises(ValueError, match="'half_test' is already registered"):
        register_method("half_test")(type("Other", (NMMethod,), {}))
    with pytest.raises(TypeError, match="not a subclass of NMMethod"):
        register_method("not_a_method")(object)
    assert register_method("half_test")(Half) is Half  # the same class again: no-op (module re-import)


def test_srste_method_args_and_layer_attributes():
    model, report = sparse_tiny("srste", method_args={"decay": 0.01})
    assert report.method == "srste" and report.method_args == {"decay": 0.01}
    layer = model[0]
    assert layer.method == "srste" and layer.decay == 0.01 and layer.method_args == {"decay": 0.01}
    assert "nm_step" not in layer.state_dict()  # built-in methods keep their state_dict keys
    layer.set_method("ste")
    assert layer.method == "ste" and layer.decay == 0.0
    with pytest.raises(ValueError, match="has no decay setting"):
        layer.decay = 0.1
    layer.set_method("srste", decay=0.3)
    assert layer.decay == 0.3


# --- the toy method through the core -------------------------------------------------------------------------------
def test_toy_method_mask_forward_and_gradient_match_its_formula():
    model, report = sparse_tiny(method_args={"scale": 0.25})
    assert report.method == "half_test" and report.method_args == {"scale": 0.25, "every": 1}
    assert len(report.sparse_layers) == 2
    for layer in (model[0], model[3]):
        w = layer.weight.detach().clone().requires_grad_(True)
        mask = most_positive(w.detach(), 2, 4)
        x = torch.randn(3, *((8, 4, 4) if isinstance(layer, nn.Conv2d) else (256,)), requires_grad=True)
        out = layer(x)
        assert torch.equal(layer.nm_mask, mask)  # the method's compute_mask, not the magnitude kernel
        ref_op = (lambda x_, w_: layer._conv_forward(x_, w_, layer.bias)) if isinstance(layer, nn.Conv2d) \
            else (lambda x_, w_: F.linear(x_, w_, layer.bias))
        x2 = x.detach().clone().requires_grad_(True)
        ref = ref_op(x2, half_weight(w, mask, 0.25))
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        g = torch.randn_like(out)
        out.backward(g)
        ref.backward(g)
        torch.testing.assert_close(layer.weight.grad, w.grad)
        torch.testing.assert_close(x.grad, x2.grad)
        assert not torch.equal(layer.weight.grad * mask, layer.weight.grad)  # pruned weights get 0.25 of it
        layer.weight.grad = None


def test_toy_method_counts_steps_refreshes_when_due_and_survives_save_load_copy():
    model, _ = sparse_tiny(method_args={"every": 2})
    layer = model[3]
    mask0 = layer.nm_mask.clone()
    assert int(layer.nm_step) == 0
    opt = train_steps(model, 1, lr=2.0)
    assert int(layer.nm_step) == 1
    model(torch.randn(1, 8, 4, 4))
    assert not torch.equal(most_positive(layer.weight.detach(), 2, 4), mask0)  # the weight's own mask moved ...
    assert torch.equal(layer.nm_mask, mask0)  # ... but step 1 is not due: the mask stays
    opt.zero_grad()
    model(torch.randn(1, 8, 4, 4)).sum().backward()
    opt.step()
    assert int(layer.nm_step) == 2
    opt.step()  # no backward ran since: not a step of this layer
    assert int(layer.nm_step) == 2
    with torch.no_grad():  # evaluation sees the mask the next training forward would use
        model(torch.randn(1, 8, 4, 4))
    model(torch.randn(1, 8, 4, 4))
    assert torch.equal(layer.nm_mask, most_positive(layer.weight.detach(), 2, 4))  # step 2 is due: refreshed

    state = model.state_dict()
    assert int(state["3.nm_step"]) == 2 and int(state["0.nm_step"]) == 2
    fresh, _ = sparse_tiny(method_args={"every": 2})
    assert int(fresh[3].nm_step) == 0
    fresh.load_state_dict(state)
    assert int(fresh[3].nm_step) == 2 and torch.equal(fresh[3].nm_mask, layer.nm_mask)
    twin = copy.deepcopy(model)
    assert int(twin[3].nm_step) == 2 and twin[3].nm_method is not layer.nm_method
    train_steps(twin, 1)
    assert int(twin[3].nm_step) == 3 and int(layer.nm_step) == 2
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded[3].method == "half_test" and int(loaded[3].nm_step) == 2
    train_steps(loaded, 1)
    assert int(loaded[3].nm_step) == 3


def test_builtin_forward_with_a_method_mask_and_schedule():
    model, _ = sparse_tiny("positive_every_test")
    layer = model[3]
    assert layer.nm_method.uses_builtin_forward()
    mask0 = most_positive(layer.weight.detach(), 2, 4)
    x = torch.randn(2, 256, requires_grad=True)
    out = layer(x)
    assert torch.equal(layer.nm_mask, mask0)
    torch.testing.assert_close(out, F.linear(x, layer.weight * mask0, layer.bias), rtol=0, atol=0)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(layer.weight.grad, g.t() @ x.detach())  # straight through: the dense gradient
    train_steps(model, 1, lr=2.0)
    model(torch.randn(1, 8, 4, 4))
    assert int(layer.nm_step) == 1 and torch.equal(layer.nm_mask, mask0)  # not due
    assert not torch.equal(most_positive(layer.weight.detach(), 2, 4), mask0)
    train_steps(model, 1, lr=2.0)
    out = model[3](torch.randn(1, 256))
    assert int(layer.nm_step) == 2 and torch.equal(layer.nm_mask, most_positive(layer.weight.detach(), 2, 4))
    with pytest.raises(RuntimeError, match="'positive_every_test'.*cannot record"):
        torch.jit.trace(model, torch.randn(1, 8, 4, 4))


def test_input_grad_weight_changes_the_input_gradient_only():
    for make in (lambda **kw: SparseLinear(16, 6, **kw), lambda **kw: SparseConv2d(8, 4, 3, padding=1, **kw)):
        torch.manual_seed(0)
        soft = make(method="half_test")
        hard = make(method="half_igw_test")
        hard.load_state_dict(soft.state_dict())
        shape = (5, 16) if isinstance(soft, nn.Linear) else (2, 8, 5, 5)
        x = torch.randn(*shape)
        xs, xh = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_s, out_h = soft(xs), hard(xh)
        assert torch.equal(out_s, out_h)  # same forward
        g = torch.randn_like(out_s)
        out_s.backward(g)
        out_h.backward(g)
        torch.testing.assert_close(hard.weight.grad, soft.weight.grad)  # same weight gradient
        torch.testing.assert_close(hard.bias.grad, soft.bias.grad)
        w_in = hard.weight.detach() * hard.nm_mask  # the input gradient uses W ⊙ mask: computed directly
        if isinstance(soft, nn.Linear):
            direct = g @ w_in
        else:
            direct = torch.nn.grad.conv2d_input(x.shape, w_in, g, padding=1)
        torch.testing.assert_close(xh.grad, direct)
        assert not torch.allclose(xs.grad, xh.grad)
        assert int(hard.nm_step) == 0


def test_toy_method_trains_and_cannot_be_recorded():
    model, _ = sparse_tiny()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, 4, 4, generator=g), torch.randn(16, 8, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and int(model[0].nm_step) == 30
    with pytest.raises(RuntimeError, match="'half_test'.*cannot record"):
        torch.jit.trace(model, x)


def test_method_object_is_copied_per_layer():
    obj = Half(scale=0.75)
    model, report = sparse_tiny(obj)
    assert report.method_args == {"scale": 0.75, "every": 1}
    assert model[0].nm_method is not obj and model[0].nm_method is not model[3].nm_method
    with pytest.raises(ValueError, match="method_args .* given with a method object"):
        sparsify(tiny_model(), method=obj, method_args={"scale": 0.1}, example_inputs=False)


# --- every adapter -------------------------------------------------------------------------------------------------
def test_timm_create_model_takes_any_registered_method():
    from nm_plugins.timm import create_model

    model = create_model("resnet18", method="half_test", method_args={"scale": 0.1}, num_classes=5)
    layers = [layer for _, layer in sparse_layers(model)]
    assert layers and all(l.method == "half_test" and l.nm_method.settings["scale"] == 0.1 for l in layers)
    assert model.nm_config["method"] == "half_test" and model.nm_config["method_args"] == {"scale": 0.1, "every": 1}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert all(int(l.nm_step) == 1 for l in layers)
    with pytest.raises(ValueError, match="unknown setting"):
        create_model("resnet18", method="half_test", method_args={"scales": 0.1}, num_classes=5)


def test_mmdet_conv_cfg_and_fc_sparsity_take_any_registered_method():
    pytest.importorskip("mmdet")
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import nm_plugins.mmdet  # noqa: F401

    init_default_scope("mmdet")
    conv_cfg = dict(type="SRSTEConv2d", pattern="2:4", method="half_test", method_args=dict(scale=0.2))
    backbone = MODELS.build(dict(type="ResNet", depth=18, conv_cfg=conv_cfg, out_indices=(3,)))
    layers = [layer for _, layer in sparse_layers(backbone)]
    assert len(layers) > 10 and all(l.method == "half_test" and l.nm_method.settings["scale"] == 0.2 for l in layers)
    backbone(torch.randn(2, 3, 64, 64))[0].sum().backward()
    head = MODELS.build(dict(type="NMShared2FCBBoxHead", in_channels=8, fc_out_channels=16, roi_feat_size=2,
                             num_classes=3, fc_sparsity=dict(method="half_test", method_args=dict(every=3))))
    fcs = [layer for _, layer in sparse_layers(head)]
    assert len(fcs) == 2 and all(l.nm_method.settings == {"scale": 0.5, "every": 3} for l in fcs)
    with pytest.raises(ValueError, match="SRSTEConv2d: .*unknown setting"):
        MODELS.build(dict(type="ResNet", depth=18, conv_cfg={**conv_cfg, "method_args": dict(sclae=0.2)}))


def test_raft_create_and_config_take_any_registered_method():
    from nm_plugins.raft.model import create
    from nm_plugins.raft.train import load_config

    model = create("small", "2:4", method="half_test", method_args={"scale": 0.3})
    layers = [layer for _, layer in sparse_layers(model)]
    assert layers and all(l.method == "half_test" and l.nm_method.settings["scale"] == 0.3 for l in layers)
    proxy = REPO / "configs" / "raft" / "proxy.yaml"
    cfg = load_config(proxy, overrides=["model.method=half_test", "model.method_args.scale=0.3"])
    assert cfg["model"]["method_args"] == {"scale": 0.3}
    with pytest.raises(ValueError, match="model.method_args: .*unknown setting"):
        load_config(proxy, overrides=["model.method=half_test", "model.method_args.scal=0.3"])
    with pytest.raises(ValueError, match="model.method 'magic'"):
        load_config(proxy, overrides=["model.method=magic"])


def test_classification_config_takes_any_registered_method():
    from nm_plugins.train.config import load_config

    proxy = REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml"
    cfg = load_config(proxy, ["sparsity.method=half_test", "sparsity.method_args={scale: 0.3, every: 2}"])
    assert cfg["sparsity"]["method_args"] == {"scale": 0.3, "every": 2}
    with pytest.raises(ValueError, match="sparsity.method_args: .*unknown setting"):
        load_config(proxy, ["sparsity.method=half_test", "sparsity.method_args.speed=1"])
    with pytest.raises(ValueError, match="sparsity.method 'magic' is not one of srste, ste, fixed, dense, asp"):
        load_config(proxy, ["sparsity.method=magic"])


def test_translation_config_and_model_take_any_registered_method():
    from nm_plugins.translation.config import load_config
    from nm_plugins.translation.model import build_model

    tiny = ["model.d_model=32", "model.ffn=64", "model.heads=4", "model.enc_layers=1", "model.dec_layers=1",
            "model.max_positions=64"]
    cfg = load_config(None, tiny + ["sparsity.method=half_test", "sparsity.method_args.scale=0.3"])
    model = build_model(cfg, 50)
    layers = [layer for _, layer in sparse_layers(model)]
    assert layers and all(l.method == "half_test" and l.nm_method.settings["scale"] == 0.3 for l in layers)
    assert model.nm_config["method_args"] == {"scale": 0.3, "every": 1}
    with pytest.raises(ValueError, match="sparsity.method 'asp'"):
        load_config(None, tiny + ["sparsity.method=asp"])
    with pytest.raises(ValueError, match="sparsity.method_args: .*unknown setting"):
        load_config(None, tiny + ["sparsity.method=srste", "sparsity.method_args.decai=0.1"])


def test_switching_to_a_method_with_its_own_mask_recomputes_it_before_the_next_forward():
    """set_method to a refreshing method with its own mask rule: the next forward uses that method's mask, not the
    one the old method computed for the same (unchanged) weight; the layer tells the method its pattern."""
    from nm_plugins.core import SparseLinear
    from nm_plugins.core.methods.transposable import is_transposable_mask
    torch.manual_seed(3)
    layer = SparseLinear(16, 16, pattern="2:4", method="srste")
    layer(torch.randn(2, 16))
    assert not is_transposable_mask(layer.nm_mask, layer.pattern)  # a row-wise top-2 mask of a random weight
    layer.set_method("transposable")
    assert layer.nm_method.pattern == layer.pattern and layer.nm_method.grouping == layer.grouping
    layer(torch.randn(2, 16))
    assert is_transposable_mask(layer.nm_mask, layer.pattern) and layer.mask_is_valid()


def test_method_state_of_another_method_is_an_unexpected_key_not_silently_dropped():
    """An S-STE checkpoint (with its per-layer β) loaded strictly into an SR-STE layer names the key it cannot use."""
    from nm_plugins.core import SparseLinear
    torch.manual_seed(5)
    sste = SparseLinear(8, 4, pattern="2:4", method="sste")
    sste(torch.randn(2, 8))
    state = sste.state_dict()
    assert "nm_method.beta" in state
    srste = SparseLinear(8, 4, pattern="2:4", method="srste")
    with pytest.raises(RuntimeError, match="nm_method.beta"):
        srste.load_state_dict(state)
    fresh = SparseLinear(8, 4, pattern="2:4", method="sste")
    fresh.load_state_dict(state)
    assert fresh.nm_method.beta == sste.nm_method.beta

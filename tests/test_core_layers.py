import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nm_plugins.core.layers as layers_mod
from nm_plugins import SparseConv2d, SparseLinear, apply_srste_decay, is_valid_nm_mask, nm_mask

DECAY = 2e-4


def make_layer(kind, method, decay=DECAY):
    if kind == "linear":
        return SparseLinear(16, 5, bias=True, method=method, decay=decay)
    return SparseConv2d(8, 6, 3, padding=1, bias=True, method=method, decay=decay)


def inputs(kind):
    return torch.randn(4, 16) if kind == "linear" else torch.randn(2, 8, 5, 5)


def dense_forward(layer, x, weight):
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, padding=1)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("method", ["srste", "ste", "fixed", "dense"])
def test_gradients_follow_the_method_formula(kind, method):
    layer = make_layer(kind, method)
    x = inputs(kind)
    mask = nm_mask(layer.weight, "2:4")
    # reference: gradient with respect to the masked weight, computed by plain autograd
    w_tilde = (layer.weight.detach() * (mask if method != "dense" else 1)).requires_grad_()
    target = dense_forward(layer, x, w_tilde)
    target.square().sum().backward()
    out = layer(x)
    assert torch.allclose(out, target.detach(), atol=1e-6)
    out.square().sum().backward()
    apply_srste_decay()  # what optimizer.step() does first
    g = w_tilde.grad
    expected = {
        "srste": g + DECAY * (~mask) * layer.weight.detach(),
        "ste": g,
        "fixed": g * mask,
        "dense": g,
    }[method]
    assert torch.allclose(layer.weight.grad, expected, atol=1e-6, rtol=1e-5)
    assert layer.bias.grad is not None  # the bias is used and trained


@pytest.mark.parametrize("method", ["srste", "fixed"])
def test_training_gradients_are_bit_identical_to_the_formula(method):
    """The decay (added at the step, in place on the weight gradient): same bits as torch.addcmul."""
    torch.manual_seed(0)
    layer = SparseConv2d(64, 32, 3, padding=1, method=method)
    x = torch.randn(2, 64, 6, 6)
    mask = nm_mask(layer.weight, "2:4")
    w_tilde = (layer.weight.detach() * mask).requires_grad_()
    F.conv2d(x, w_tilde, layer.bias, padding=1).square().sum().backward()
    layer(x).square().sum().backward()
    apply_srste_decay()
    g = w_tilde.grad
    expected = torch.addcmul(g, layer.weight.detach(), (~mask).float(), value=DECAY) if method == "srste" else g * mask
    assert torch.equal(layer.weight.grad, expected)


def test_public_masked_weight_never_changes_other_gradients():
    """masked_weight() used in user code: the decay must not be written into a gradient another input shares."""
    layer = SparseLinear(16, 4, method="srste", decay=0.5)
    other = torch.zeros(4, 16, requires_grad=True)
    (other + layer.masked_weight()).sum().backward()
    apply_srste_decay()
    assert torch.equal(other.grad, torch.ones(4, 16))
    mask = layer.mask()
    assert torch.equal(layer.weight.grad, torch.addcmul(torch.ones(4, 16), layer.weight.detach(), (~mask).float(), value=0.5))


def test_backward_after_a_weight_update_is_refused_like_a_dense_layer():
    """The masked weight is rewritten in place at the next step: a stale graph fails loudly, as nn.Conv2d's does."""
    layer = SparseLinear(16, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = layer(torch.randn(3, 16)).sum()
    layer(torch.randn(3, 16)).sum().backward()
    opt.step()
    layer(torch.randn(3, 16))  # the next forward recomputes the masked weight in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_bias_is_kept_in_forward():
    layer = SparseLinear(8, 3, bias=True)
    with torch.no_grad():
        layer.bias.fill_(5.0)
    x = torch.zeros(2, 8)
    assert torch.allclose(layer(x), torch.full((2, 3), 5.0))


def test_decay_added_once_per_step_with_gradient_accumulation():
    layer = SparseLinear(16, 4, bias=False, method="srste", decay=DECAY)
    mask = nm_mask(layer.weight, "2:4")
    xs = [torch.randn(3, 16) for _ in range(4)]
    for x in xs:  # four micro-batches, one optimizer step
        layer(x).sum().backward()
    assert apply_srste_decay() == 1 and apply_srste_decay() == 0
    data_grad = sum(torch.ones(4, 3) @ x for x in xs) * mask.new_ones(mask.shape, dtype=torch.float32)
    expected = data_grad + DECAY * (~mask) * layer.weight.detach()
    assert torch.allclose(layer.weight.grad, expected, atol=1e-5)


def test_decay_added_again_after_an_optimizer_step():
    """lr 0: each step adds the decay to the gradient it is about to use (a step pre-hook), once per step."""
    layer = SparseLinear(8, 2, bias=False, decay=DECAY)
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    x = torch.randn(1, 8)
    for _ in range(2):
        opt.zero_grad()
        layer(x).sum().backward()
        assert torch.equal(layer.weight.grad, x.expand(2, 8))  # not yet: backward only records the owed decay
        mask = layer.nm_mask.clone()
        opt.step()
        assert torch.allclose(layer.weight.grad, x.expand(2, 8) + DECAY * (~mask) * layer.weight.detach(), atol=1e-6)


def test_mask_computed_once_per_weight_version(monkeypatch):
    layer = SparseConv2d(8, 8, 3, padding=1)
    calls = []
    real = layers_mod.SparseMixin._compute_mask  # the one place a layer computes its mask
    monkeypatch.setattr(layers_mod.SparseMixin, "_compute_mask", lambda self, *a: calls.append(1) or real(self, *a))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, 8, 6, 6)
    for _ in range(3):  # gradient accumulation: the mask computed at construction is reused
        layer(x).sum().backward()
    assert len(calls) == 0
    opt.step()
    layer(x).sum().backward()
    layer(x).sum().backward()
    assert len(calls) == 1
    with torch.no_grad():  # evaluation reads the weight as it is now: its own, fresh computation
        layer(x)
    assert len(calls) == 2
    layer(x).sum().backward()  # ... and leaves the training cache alone
    assert len(calls) == 2


def test_mask_follows_weight_after_update():
    layer = SparseLinear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    assert layer.mask().tolist() == [[True, True, False, False]]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert layer.mask().tolist() == [[False, False, True, True]]


def test_fixed_mask_is_frozen_and_pruned_weights_get_no_gradient():
    layer = SparseLinear(4, 1, bias=False, method="fixed")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    layer.refresh_mask()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert layer.mask().tolist() == [[True, True, False, False]]
    layer(torch.ones(1, 4)).sum().backward()
    assert layer.weight.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_dense_method_uses_the_full_weight():
    layer = SparseLinear(8, 2, method="dense")
    x = torch.randn(3, 8)
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))


def test_dense_checkpoint_loads_and_sparse_checkpoint_roundtrips():
    dense = nn.Conv2d(8, 4, 3)
    sparse = SparseConv2d(8, 4, 3)
    sparse.load_state_dict(dense.state_dict())  # strict: no nm_mask key needed
    assert torch.equal(sparse.weight, dense.weight)
    assert torch.equal(sparse.mask(), nm_mask(dense.weight, "2:4"))
    fixed = SparseConv2d(8, 4, 3, method="fixed")
    fixed.load_state_dict(sparse.state_dict())
    assert torch.equal(fixed.mask(), sparse.mask())


def test_fixed_mask_survives_checkpoint_even_if_weights_disagree():
    a = SparseLinear(8, 2, method="fixed")
    a.refresh_mask()
    state = a.state_dict()
    state["weight"] = torch.randn(2, 8)  # weights that would give another magnitude mask
    b = SparseLinear(8, 2, method="fixed")
    b.load_state_dict(state)
    assert torch.equal(b.mask(), a.mask())


def test_from_dense_shares_parameters():
    dense = nn.Linear(8, 4)
    sparse = SparseLinear.from_dense(dense, "1:4", "ste")
    assert sparse.weight is dense.weight and sparse.bias is dense.bias
    assert str(sparse.pattern) == "1:4" and sparse.method == "ste" and sparse.decay == 0.0
    assert is_valid_nm_mask(sparse.mask(), "1:4")


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_features=8, out_features=2, decay_mode="epoch"), "decay_mode"),
    (dict(in_features=8, out_features=2, method="magic"), "magic"),
    (dict(in_features=8, out_features=2, pattern="5:4"), "5:4"),
    (dict(in_features=8, out_features=2, decay=-1.0), "decay"),
])
def test_bad_layer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseLinear(**kwargs)


def test_grouped_conv_groups_within_each_group():
    layer = SparseConv2d(8, 8, 3, groups=2)
    assert layer.weight.shape[1] == 4
    assert is_valid_nm_mask(layer.mask(), "2:4")


def test_public_masked_weight_is_a_snapshot():
    """masked_weight() returns a new tensor: kept across an optimizer step it still holds the old values."""
    layer = SparseLinear(16, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    before = layer.masked_weight().detach()
    expected = layer.weight.detach() * layer.mask()
    layer(torch.randn(3, 16)).sum().backward()
    opt.step()
    layer(torch.randn(3, 16))  # rewrites the layer's own masked-weight buffer
    assert torch.equal(before, expected)
    assert not torch.equal(layer.masked_weight(), before)


def test_training_forward_follows_replaced_weight_storage_and_buffers():
    """The layers' prepared mask call is tied to the tensors it was prepared for: a weight given new storage
    (``.data =``, a resize), a replaced mask buffer or a changed pattern are masked from what they are now."""
    layer = SparseConv2d(8, 8, 3, padding=1, bias=False)

    def check():
        x = torch.randn(2, layer.weight.shape[1], 5, 5)
        out = layer(x)
        expected = F.conv2d(x, layer.weight.detach() * nm_mask(layer.weight, layer.pattern), padding=1)
        assert torch.equal(layer.nm_mask, nm_mask(layer.weight, layer.pattern)) and torch.equal(out, expected)
        out.sum().backward()

    check()
    layer.weight.data = torch.randn(8, 8, 3, 3)  # new storage, same shape
    check()
    layer.weight.grad = None  # as for nn.Conv2d: a gradient of the old shape cannot be accumulated into
    layer.weight.data = torch.randn(8, 16, 3, 3)  # new shape, with a new mask buffer
    layer.nm_mask = torch.ones_like(layer.weight, dtype=torch.bool)
    layer.in_channels = 16
    check()
    layer.pattern = type(layer.pattern).parse("1:4")
    layer.refresh_mask()
    check()

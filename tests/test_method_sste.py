"""S-STE (nm_plugins/core/methods/sste.py) from its equations on real tensors: soft-thresholding per N:M group,
the fixed per-tensor β, the straight-through gradient, continuity, settings and saved state."""
from __future__ import annotations

import pytest
import torch

from nm_plugins.core.mask import is_valid_nm_mask, to_groups
from nm_plugins.core.methods import make_method
from nm_plugins.core.methods.sste import rescale_factor, soft_threshold
from nm_plugins.core.pattern import NMPattern
from method_training import fit


def _reference_soft_threshold(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """S(W) group by group in plain Python: t = (N+1)-th largest |w| of the group (0 if the group has ≤ N)."""
    groups = to_groups(weight.detach().double(), m)  # zero-padded partial groups: padding never exceeds t
    out = torch.zeros_like(groups)
    for g in range(groups.shape[0]):
        values = groups[g].tolist()
        mags = sorted((abs(v) for v in values), reverse=True)
        t = mags[n] if n < m else 0.0
        for i, v in enumerate(values):
            out[g, i] = (1.0 if v > 0 else -1.0) * max(abs(v) - t, 0.0)
    from nm_plugins.core.mask import from_groups
    return from_groups(out, weight.shape).to(weight.dtype)


@pytest.mark.parametrize("shape,pattern", [((8, 16), "2:4"), ((6, 10), "2:4"), ((4, 12, 3, 3), "2:4"),
                                           ((8, 16), "1:4"), ((8, 16), "2:8"), ((5, 16, 2, 2), "4:8")])
def test_soft_threshold_matches_the_group_by_group_equation(shape, pattern):
    torch.manual_seed(0)
    w = torch.randn(shape)
    p = NMPattern.parse(pattern)
    assert torch.allclose(soft_threshold(w, p), _reference_soft_threshold(w, p.n, p.m), atol=1e-6)


def test_2to4_threshold_is_the_second_smallest_magnitude_closed_form():
    """The authors' 2:4 kernel writes t as min(max(min|a0|,|a1|), min(|a2|,|a3|)), min(max(|a0|,|a1|), max(|a2|,|a3|)))."""
    torch.manual_seed(1)
    w = torch.randn(64, 32)
    a = w.reshape(-1, 4).abs()
    t = torch.minimum(torch.maximum(torch.minimum(a[:, 0], a[:, 1]), torch.minimum(a[:, 2], a[:, 3])),
                      torch.minimum(torch.maximum(a[:, 0], a[:, 1]), torch.maximum(a[:, 2], a[:, 3])))
    expected = (w.reshape(-1, 4).sign() * (a - t[:, None]).clamp_min(0)).reshape(w.shape)
    assert torch.equal(soft_threshold(w, "2:4"), expected)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "2:8", "4:8", "1:16"])
def test_forward_weight_is_valid_nm_inside_the_top_n_mask(pattern):
    torch.manual_seed(2)
    w = torch.randn(16, 32, 3, 3)
    method = make_method("sste")
    mask = method.compute_mask(w, NMPattern.parse(pattern), "channels", 0)
    assert is_valid_nm_mask(mask, pattern)
    fw = method.forward_weight(w, mask, 0).detach()
    assert torch.equal(fw != 0, (fw != 0) & mask)  # zero outside the top-N mask
    p = NMPattern.parse(pattern)
    # distinct magnitudes: exactly N non-zeros per group (the kept ones exceed t strictly)
    assert bool((to_groups((fw != 0).int(), p.m).sum(1) == p.n).all())


def test_n_equal_m_is_dense():
    w = torch.randn(4, 8)
    method = make_method("sste")
    mask = method.compute_mask(w, NMPattern(4, 4), "channels", 0)
    assert torch.equal(method.forward_weight(w, mask, 0), w)  # t = 0, β = 1


def test_authors_flat_grouping_groups_nhwc_entries():
    torch.manual_seed(3)
    w = torch.randn(4, 6, 3, 3)  # 6 channels: the flat groups cross channel rows
    flat = w.permute(0, 2, 3, 1).reshape(-1, 4)
    mags = flat.abs()
    t = mags.kthvalue(2, dim=1, keepdim=True).values
    expected = (flat.sign() * (mags - t).clamp_min(0)).reshape(4, 3, 3, 6).permute(0, 3, 1, 2)
    assert torch.equal(soft_threshold(w, "2:4", "authors_flat"), expected)


def test_soft_threshold_is_continuous_where_the_hard_mask_jumps():
    """Two magnitudes crossing at the kept / pruned boundary: the hard N:M weight jumps by ~|a|, S(a) by ≤ 2ε."""
    eps = 1e-4
    a = torch.tensor([[0.5, 0.5 + eps, 1.0, 2.0]])
    b = torch.tensor([[0.5 + eps, 0.5, 1.0, 2.0]])  # the same magnitudes, |a0| and |a1| swapped
    c = torch.tensor([[0.5, 0.5 - eps, 1.0, 2.0]])  # |a0| now the third largest
    s_a, s_c = soft_threshold(a, "3:4"), soft_threshold(c, "3:4")
    assert (s_a - s_c).abs().max() <= 2 * eps + 1e-7
    hard = lambda x: x * make_method("sste").compute_mask(x, NMPattern(3, 4), "channels", 0)
    assert (hard(a) - hard(c)).abs().max() > 0.49  # the hard mask swaps a0 for a1: a jump of ~0.5
    assert torch.equal(soft_threshold(b, "2:4")[0, :2], torch.zeros(2))
    torch.manual_seed(4)
    w = torch.randn(32, 64)
    delta = (torch.rand_like(w) - 0.5) * 2e-3  # |δ| ≤ 1e-3
    assert (soft_threshold(w + delta, "2:4") - soft_threshold(w, "2:4")).abs().max() <= 2e-3 + 1e-6


def test_beta_is_the_least_squares_scale_of_the_first_weight_then_fixed():
    torch.manual_seed(5)
    w = torch.randn(16, 32)
    method = make_method("sste")
    mask = method.compute_mask(w, NMPattern(2, 4), "channels", 0)
    fw = method.forward_weight(w, mask, 0).detach()
    s = soft_threshold(w, "2:4")
    beta = float((w * s).sum() / (s * s).sum())
    assert method.beta == pytest.approx(beta, rel=1e-6)
    assert torch.allclose(fw, s * beta)
    # least squares: ‖W − βS‖ is smallest at β (a nearby scale does worse)
    err = lambda b: float((w - b * s).norm())
    assert err(beta) < err(beta * 1.01) and err(beta) < err(beta * 0.99)
    assert beta > 1.0  # soft-thresholding shrinks: the scale grows it back
    # a later, different weight: the same β (fixed per tensor), S recomputed from the new weight
    w2 = w * 3.0 + 0.1
    fw2 = method.forward_weight(w2, method.compute_mask(w2, NMPattern(2, 4), "channels", 5), 5).detach()
    assert method.beta == pytest.approx(beta, rel=1e-6)
    assert torch.allclose(fw2, soft_threshold(w2, "2:4") * method.beta)
    assert rescale_factor(torch.zeros(4, 4), torch.zeros(4, 4)) == 1.0


def test_fixed_beta_setting():
    w = torch.randn(8, 8)
    method = make_method("sste", beta=1.0)
    mask = method.compute_mask(w, NMPattern(2, 4), "channels", 0)
    assert torch.equal(method.forward_weight(w, mask, 0), soft_threshold(w, "2:4"))


def test_gradient_is_straight_through_not_the_formula():
    """The authors' SoftThreshold.backward returns grad_output: neither β nor the soft-threshold's Jacobian."""
    torch.manual_seed(6)
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(5, 16)
    method = make_method("sste")
    mask = method.compute_mask(w, NMPattern(2, 4), "channels", 0)
    fw = method.forward_weight(w, mask, 0)
    y = torch.nn.functional.linear(x, fw)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(w.grad, g.t() @ x, atol=1e-6)  # dL/dW_f, passed to W unchanged
    # autograd through the formula would differ (pruned weights would get no gradient)
    w2 = w.detach().clone().requires_grad_(True)
    groups = w2.reshape(-1, 4)
    t = groups.abs().kthvalue(2, dim=1, keepdim=True).values
    formula = (groups.sign() * (groups.abs() - t).clamp_min(0)).reshape(w2.shape) * method.beta
    torch.nn.functional.linear(x, formula).backward(g)
    assert not torch.allclose(w2.grad, w.grad)


def test_state_keeps_beta_across_save_and_load():
    torch.manual_seed(7)
    w = torch.randn(8, 16)
    method = make_method("sste")
    method.forward_weight(w, method.compute_mask(w, NMPattern(2, 4), "channels", 0), 0)
    state = method.method_state()
    fresh = make_method("sste")
    fresh.load_method_state(state)
    w2 = torch.randn(8, 16)  # a trained weight: β must not be recomputed from it
    out = fresh.forward_weight(w2, fresh.compute_mask(w2, NMPattern(2, 4), "channels", 9), 9)
    assert fresh.beta == method.beta
    assert torch.allclose(out, soft_threshold(w2, "2:4") * method.beta)
    assert make_method("sste").method_state() == {}
    fresh.load_method_state({})  # a checkpoint without β (dense, another method): β of the loaded weight
    fresh.forward_weight(w2, fresh.compute_mask(w2, NMPattern(2, 4), "channels", 0), 0)
    assert fresh.beta == pytest.approx(rescale_factor(w2, soft_threshold(w2, "2:4")), rel=1e-6)


@pytest.mark.parametrize("bad", ["x", -1.0, 0, float("inf"), float("nan")])
def test_bad_beta_names_the_setting(bad):
    with pytest.raises(ValueError, match="beta"):
        make_method("sste", beta=bad)


def test_unknown_setting_and_forward_before_mask():
    with pytest.raises(ValueError, match="unknown setting"):
        make_method("sste", decay=1e-4)
    with pytest.raises(RuntimeError, match="compute_mask"):
        make_method("sste").forward_weight(torch.randn(4, 4), torch.ones(4, 4, dtype=torch.bool), 0)


# --- through the real layers (nm_plugins.core.sparsify) ----------------------------------------------------------

def _blobs(seed=0, n=256, dim=16, classes=4):
    """A fixed synthetic classification task: labels of a random linear teacher."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    y = (x @ torch.randn(dim, classes, generator=gen)).argmax(1)
    return x, y


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 4))


def test_sste_mlp_learns_through_sparsify_with_valid_masks():
    from nm_plugins.core import sparse_layers, sparsify
    x, y = _blobs()
    model = _mlp()
    initial = {i: m.weight.detach().clone() for i, m in enumerate(model) if isinstance(m, torch.nn.Linear)}
    report = sparsify(model, "2:4", method="sste", keep_classifier_dense=False, keep_stem_dense=False,
                      example_inputs=False)
    assert report.method == "sste" and len(report.sparse_layers) == 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = lambda: torch.nn.functional.cross_entropy(model(x), y)
    first = loss().item()
    fit(model, x, y, opt, 40)
    last = loss().item()
    assert last < 0.2 * first, (first, last)  # 1.40 -> ~0.02 when written
    for name, layer in sparse_layers(model):
        w0 = initial[int(name)]
        beta0 = rescale_factor(w0, soft_threshold(w0, "2:4"))
        assert layer.nm_method.beta == pytest.approx(beta0, rel=1e-6)  # β of the initial weight, kept fixed
        assert layer.mask_is_valid()
        fw = layer.masked_weight().detach()
        assert torch.allclose(fw, soft_threshold(layer.weight, "2:4") * beta0, atol=1e-6)
        assert torch.equal(fw != 0, (fw != 0) & layer.nm_mask)
    accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9, accuracy


def test_beta_survives_a_state_dict_round_trip_through_the_layers():
    """β is the initial weight's: a resumed model must not recompute it from its trained weights."""
    from nm_plugins.core import sparsify
    x, y = _blobs()
    model = _mlp()
    sparsify(model, "2:4", method="sste", keep_classifier_dense=False, keep_stem_dense=False, example_inputs=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    resumed = _mlp()
    sparsify(resumed, "2:4", method="sste", keep_classifier_dense=False, keep_stem_dense=False, example_inputs=False)
    resumed.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(resumed(x), model(x))
    assert resumed[0].nm_method.beta == model[0].nm_method.beta

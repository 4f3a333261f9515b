"""Bi-Mask (nm_plugins/core/methods/bimask.py) from its equations on real tensors: the forward mask, the permuted
backward mask, the permutation search and its schedule, the input-gradient weight, SR-STE's step term, settings
and saved state."""
from __future__ import annotations

import pytest
import torch

from nm_plugins.core.mask import is_valid_nm_mask, nm_mask
from nm_plugins.core.methods import make_method
from nm_plugins.core.methods.bimask import backward_mask, search_permutation
from nm_plugins.core.pattern import NMPattern
from method_training import fit

P24 = NMPattern(2, 4)


def _reference_backward_mask(weight, fmask, n, m, perm):
    """B by loops: for every input position (in, *k) and every group of M consecutive permuted output rows, keep
    the N largest |w ⊙ F| (lower permuted position on ties), then AND with F."""
    kept = (weight * fmask).reshape(weight.shape[0], -1)
    f = fmask.reshape(weight.shape[0], -1)
    out = torch.zeros_like(f)
    order = perm.tolist()
    for col in range(kept.shape[1]):
        for start in range(0, len(order), m):
            rows = order[start:start + m]
            ranked = sorted(range(len(rows)), key=lambda i: (-abs(float(kept[rows[i], col])), i))
            for i in ranked[:n]:
                out[rows[i], col] = bool(f[rows[i], col])
    return out.reshape(weight.shape)


@pytest.mark.parametrize("shape,pattern", [((8, 12), "2:4"), ((10, 8), "2:4"), ((8, 8, 3, 3), "2:4"),
                                           ((16, 8), "1:4"), ((16, 16), "2:8")])
def test_backward_mask_matches_the_loop_reference(shape, pattern):
    torch.manual_seed(0)
    p = NMPattern.parse(pattern)
    w = torch.randn(shape)
    f = nm_mask(w, p)
    perm = torch.randperm(shape[0])
    b = backward_mask(w, f, p, perm)
    assert torch.equal(b, _reference_backward_mask(w, f, p.n, p.m, perm))
    assert torch.equal(backward_mask(w, f, p), _reference_backward_mask(w, f, p.n, p.m, torch.arange(shape[0])))


def test_backward_mask_is_inside_the_forward_mask_and_n_m_along_permuted_outputs():
    torch.manual_seed(1)
    w = torch.randn(32, 16, 3, 3)
    f = nm_mask(w, P24)
    perm = torch.randperm(32)
    b = backward_mask(w, f, P24, perm)
    assert torch.equal(b & ~f, torch.zeros_like(b))
    # in π's order, every group of 4 output channels at each (in, kh, kw) keeps at most 2
    counts = b[perm].reshape(8, 4, 16, 3, 3).sum(1)
    assert int(counts.max()) <= 2
    # it keeps something: most forward-kept weights of a group of 4 are among its top 2
    assert int(b.sum()) > 0.5 * int(f.sum())
    assert is_valid_nm_mask(f, P24)


def test_search_keeps_the_best_of_the_drawn_candidates():
    torch.manual_seed(2)
    w = torch.randn(16, 32)
    f = nm_mask(w, P24)
    perm, kept = search_permutation(w, f, P24, 20, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    scores = [int(backward_mask(w, f, P24, torch.randperm(16, generator=replay)).sum()) for _ in range(20)]
    assert kept == max(scores) == int(backward_mask(w, f, P24, perm).sum())
    replay = torch.Generator().manual_seed(5)
    first_best = [torch.randperm(16, generator=replay) for _ in range(20)][scores.index(max(scores))]
    assert torch.equal(perm, first_best)  # the first best wins ties
    # more candidates from the same stream: a prefix of them, so never worse
    _, kept_more = search_permutation(w, f, P24, 60, torch.Generator().manual_seed(5))
    assert kept_more >= kept
    assert search_permutation(torch.randn(8, 8), torch.zeros(8, 8, dtype=torch.bool), P24, 5,
                              torch.Generator().manual_seed(0)) == (None, 0)


def test_permutation_schedule_follows_the_authors_iteration_counter():
    """Searched at the steps s with (s + 1) % refresh_every == 0 (their counter is incremented before the forward),
    once per step; the identity before the first search."""
    torch.manual_seed(3)
    w = torch.randn(16, 16)
    method = make_method("bimask", refresh_every=3, num_candidates=4, seed=1)
    f = method.compute_mask(w, P24, "channels", 0)
    searched = []
    for step in range(7):
        before = method.generator.get_state()
        method.input_grad_weight(w, f, step)
        method.input_grad_weight(w, f, step)  # a second forward in the same step (accumulation): no new search
        if not torch.equal(before, method.generator.get_state()):
            searched.append(step)
        if step < 2:
            assert method.perm is None
    assert searched == [2, 5]
    expected, _ = search_permutation(w, f, P24, 4, torch.Generator().manual_seed(1))
    fresh = make_method("bimask", refresh_every=3, num_candidates=4, seed=1)
    fresh.compute_mask(w, P24, "channels", 0)
    fresh.input_grad_weight(w, f, 2)
    assert torch.equal(fresh.perm, expected)


def test_input_grad_weight_is_the_weight_times_the_backward_mask():
    torch.manual_seed(4)
    w = torch.randn(8, 16, requires_grad=True)
    method = make_method("bimask", refresh_every=1, num_candidates=3)
    f = method.compute_mask(w, P24, "channels", 0)
    wb = method.input_grad_weight(w, f, 0)
    assert not wb.requires_grad
    assert torch.equal(wb, w.detach() * backward_mask(w, f, P24, method.perm))
    # sparser than the forward weight: the backward GEMM skips weights the forward uses
    assert 0 < int((wb != 0).sum()) < int((w.detach() * f != 0).sum())


def test_step_term_is_srste_decay_on_the_forward_mask():
    torch.manual_seed(5)
    w = torch.randn(8, 16)
    f = nm_mask(w, P24)
    grad = torch.randn(8, 16)
    method = make_method("bimask", decay=1e-2)
    out = grad.clone()
    assert method.step_term(w, f, out, 0) is True
    assert torch.allclose(out, grad + 1e-2 * (~f).float() * w)
    out = grad.clone()
    method.step_term(w, f, out, 0, grad_scale=torch.tensor(8.0), calls=2)
    assert torch.allclose(out, grad + 8.0 * 2 * 1e-2 * (~f).float() * w)
    assert make_method("bimask", decay=0).step_term(w, f, grad.clone(), 0) is False
    assert make_method("bimask").settings["decay"] == 2e-4


def test_state_resumes_the_permutation_and_the_candidate_stream():
    torch.manual_seed(6)
    w = torch.randn(16, 8)
    run = make_method("bimask", refresh_every=2, num_candidates=3)
    f = run.compute_mask(w, P24, "channels", 0)
    for step in range(2):
        run.input_grad_weight(w, f, step)
    state = run.method_state()
    resumed = make_method("bimask", refresh_every=2, num_candidates=3)
    resumed.load_method_state(state)
    resumed.compute_mask(w, P24, "channels", 2)
    assert torch.equal(resumed.perm, run.perm)
    for step in range(2, 6):
        assert torch.equal(run.input_grad_weight(w, f, step), resumed.input_grad_weight(w, f, step))
    assert torch.equal(resumed.perm, run.perm)


@pytest.mark.parametrize("key,bad", [("decay", -1.0), ("decay", "x"), ("refresh_every", 0), ("refresh_every", 1.5),
                                     ("num_candidates", 0), ("num_candidates", True), ("seed", -1)])
def test_bad_settings_name_the_setting(key, bad):
    with pytest.raises(ValueError, match=key):
        make_method("bimask", **{key: bad})


def test_input_grad_weight_before_mask_raises():
    with pytest.raises(RuntimeError, match="compute_mask"):
        make_method("bimask").input_grad_weight(torch.randn(4, 4), torch.ones(4, 4, dtype=torch.bool), 0)


# --- through the real layers (nm_plugins.core.sparsify / SparseLinear) --------------------------------------------

def test_layer_input_gradient_uses_the_backward_mask_and_weight_gradient_the_forward():
    from nm_plugins.core import SparseLinear
    torch.manual_seed(7)
    layer = SparseLinear(16, 12, pattern="2:4", method="bimask", method_args={"refresh_every": 1, "decay": 0.0})
    x = torch.randn(5, 16, requires_grad=True)
    y = layer(x)
    w, f = layer.weight.detach(), layer.nm_mask
    assert torch.allclose(y, x.detach() @ (w * f).t() + layer.bias.detach(), atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    b = backward_mask(w, f, P24, layer.nm_method.perm)  # searched at step 0 ((0 + 1) % 1 == 0)
    assert layer.nm_method.perm is not None
    assert torch.allclose(x.grad, g @ (w * b), atol=1e-6)
    assert not torch.allclose(x.grad, g @ (w * f), atol=1e-3)  # not the forward weight's input gradient
    assert torch.allclose(layer.weight.grad, g.t() @ x.detach(), atol=1e-6)  # straight-through, dense


def test_bimask_mlp_learns_through_sparsify_with_valid_masks():
    from nm_plugins.core import sparse_layers, sparsify
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    y = (x @ torch.randn(16, 4, generator=gen)).argmax(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 4))
    sparsify(model, "2:4", method="bimask", method_args={"refresh_every": 10, "num_candidates": 5},
             keep_classifier_dense=False, keep_stem_dense=False, example_inputs=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = lambda: torch.nn.functional.cross_entropy(model(x), y)
    first = loss().item()
    fit(model, x, y, opt, 40)
    last = loss().item()
    assert last < 0.2 * first, (first, last)  # 1.40 -> ~0.02 when written
    for _, layer in sparse_layers(model):
        assert layer.mask_is_valid()
        assert int(layer.nm_step) == 40 and layer.nm_method.searched_at == 39  # steps 9, 19, 29, 39
        assert layer.nm_method.perm is not None
    assert float((model(x).argmax(1) == y).float().mean()) > 0.9


def test_permutation_survives_a_state_dict_round_trip_through_the_layers():
    from nm_plugins.core import SparseLinear
    torch.manual_seed(8)
    layer = SparseLinear(16, 12, pattern="2:4", method="bimask", method_args={"refresh_every": 2, "num_candidates": 3})
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(6, 16, requires_grad=True)
    for _ in range(2):
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    resumed = SparseLinear(16, 12, pattern="2:4", method="bimask", method_args={"refresh_every": 2, "num_candidates": 3})
    resumed.load_state_dict(layer.state_dict())
    assert int(resumed.nm_step) == 2 and torch.equal(resumed.nm_method.perm, layer.nm_method.perm)
    for model in (layer, resumed):  # step 3 searches again: the same candidates, the same input gradient
        x.grad = None
        model(x).square().sum().backward()
        model.grad_in = x.grad.clone()
    assert torch.equal(resumed.grad_in, layer.grad_in)
    assert torch.equal(resumed.nm_method.generator.get_state(), layer.nm_method.generator.get_state())

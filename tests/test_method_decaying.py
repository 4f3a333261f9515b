"""The decaying-mask N:M method (Kao et al. 2022 / Bambhaniya et al. 2024): β's schedule, the forward weight
W ⊙ (m + β(1−m)), the straight-through gradient, settings."""
import math

import pytest
import torch

from nm_plugins.core.mask import nm_mask
from nm_plugins.core.methods import make_method, method_names
from nm_plugins.core.methods.decaying import Decaying
from nm_plugins.core.pattern import NMPattern

P24 = NMPattern.parse("2:4")


def test_registered_with_the_authors_defaults():
    assert "decaying" in method_names()
    method = make_method("decaying")
    assert isinstance(method, Decaying)
    assert method.settings == {"schedule": "exp", "decay_coef": 2e-4, "dense_steps": 0, "hard_from": None}
    assert method.uses_step and not method.uses_builtin_forward()


def test_mask_is_the_top_n_magnitude_mask_every_step():
    method = make_method("decaying")
    w = torch.randn(8, 16, 3, 3)
    assert torch.equal(method.compute_mask(w, P24, "channels", 5), nm_mask(w, P24))
    assert all(method.mask_due(s) for s in range(5))


@pytest.mark.parametrize("step", [0, 1, 10, 1000, 50_000])
def test_exponential_schedule(step):
    assert make_method("decaying", decay_coef=1e-3).beta(step) == pytest.approx(math.exp(-1e-3 * step), rel=1e-12)


def test_linear_schedule_reaches_zero_and_stays():
    method = make_method("decaying", schedule="linear", decay_coef=0.01)
    assert [method.beta(s) for s in (0, 25, 50, 99)] == pytest.approx([1.0, 0.75, 0.5, 0.01])
    assert method.beta(100) == 0.0 and method.beta(10_000) == 0.0


def test_dense_phase_then_decay_then_hard():
    method = make_method("decaying", schedule="linear", decay_coef=0.1, dense_steps=10, hard_from=12)
    betas = [method.beta(s) for s in range(14)]
    assert betas[:11] == [1.0] * 11  # dense for the first 10 steps; t' = 0 at step 10
    assert betas[11] == pytest.approx(0.9)
    assert betas[12:] == [0.0, 0.0]  # hard N:M from hard_from on


def test_beta_never_increases():
    for method in (make_method("decaying"), make_method("decaying", schedule="linear", decay_coef=1e-3, dense_steps=5)):
        betas = [method.beta(s) for s in range(0, 3000, 7)]
        assert all(a >= b for a, b in zip(betas, betas[1:])) and 0.0 <= betas[-1] <= 1.0


def test_forward_weight_scales_pruned_weights_by_beta():
    method = make_method("decaying", schedule="linear", decay_coef=0.25)
    w = torch.randn(6, 8)
    mask = nm_mask(w, P24)
    out = method.forward_weight(w, mask, step=2)  # β = 0.5
    torch.testing.assert_close(out[mask], w[mask], rtol=0, atol=0)
    torch.testing.assert_close(out[~mask], 0.5 * w[~mask])
    assert torch.equal(method.forward_weight(w, mask, step=4), w * mask)  # β = 0: the hard N:M weight
    assert torch.equal(method.forward_weight(w, mask, step=0), w)  # β = 1: dense


def test_gradient_is_straight_through_not_through_the_formula():
    method = make_method("decaying", schedule="linear", decay_coef=0.25)
    w = torch.randn(6, 8, requires_grad=True)
    mask = nm_mask(w, P24)
    upstream = torch.randn(6, 8)
    (method.forward_weight(w, mask, step=2) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # the authors' backward: grad_output unchanged, for every weight
    formula = torch.autograd.grad((w * (mask + 0.5 * (~mask)) * upstream).sum(), w)[0]
    assert not torch.allclose(w.grad, formula)  # autograd through the formula would scale the pruned ones by β


def test_forward_in_a_network_trains_pruned_weights():
    method = make_method("decaying", decay_coef=0.1)
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    w = torch.randn(4, 16, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.05)
    losses = []
    for step in range(60):
        mask = method.compute_mask(w, P24, "channels", step)
        loss = ((x @ method.forward_weight(w, mask, step).T - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert method.beta(59) < 0.01


@pytest.mark.parametrize("settings, name", [({"schedule": "cosine"}, "schedule"), ({"decay_coef": 0}, "decay_coef"),
                                            ({"decay_coef": float("inf")}, "decay_coef"), ({"decay_coef": True}, "decay_coef"),
                                            ({"dense_steps": -1}, "dense_steps"), ({"dense_steps": 1.5}, "dense_steps"),
                                            ({"hard_from": 5, "dense_steps": 10}, "hard_from"), ({"hard_from": 2.0}, "hard_from"),
                                            ({"beta": 0.5}, "unknown setting")])
def test_bad_settings_name_the_setting(settings, name):
    with pytest.raises(ValueError, match=name):
        make_method("decaying", **settings)

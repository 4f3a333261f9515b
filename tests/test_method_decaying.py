"""The decaying-mask N:M method (Kao et al. 2022 / Bambhaniya et al. 2024): β's schedule, the forward weight
W ⊙ (m + β(1−m)), the straight-through gradient, settings."""
import math

import pytest
import torch

from nm_plugins.core.mask import nm_mask
from nm_plugins.core.methods import make_method, method_names
from nm_plugins.core.methods.decaying import Decaying
from nm_plugins.core.pattern import NMPattern
from method_training import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster
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


# --- through real layers (nm_plugins.core.sparsify) -----------------------------------------------------------------

def test_layer_forward_follows_beta_over_steps_with_a_straight_through_gradient():
    from nm_plugins.core import SparseLinear

    layer = SparseLinear(8, 4, bias=False, method="decaying",
                         method_args={"schedule": "linear", "decay_coef": 0.25, "dense_steps": 1})
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(16, 8)
    for step, beta in enumerate([1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]):
        assert int(layer.nm_step) == step
        w = layer.weight.detach().clone()
        mask = nm_mask(w, P24)  # the top-N mask of the current dense weight, every step
        out = layer(x)
        torch.testing.assert_close(out, x @ (w * (mask + beta * ~mask)).T)
        assert torch.equal(layer.nm_mask, mask)
        with torch.no_grad():  # evaluation uses the same β
            torch.testing.assert_close(layer(x), out)
        upstream = torch.randn_like(out)
        opt.zero_grad()
        out.backward(upstream)
        torch.testing.assert_close(layer.weight.grad, upstream.T @ x)  # straight through, no step term
        opt.step()


def test_a_small_mlp_learns_and_ends_hard_nm():
    from nm_plugins.core import sparse_layers, sparsify

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    y = teacher(x).argmax(dim=1).detach()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 4))
    sparsify(model, "2:4", method="decaying", method_args={"decay_coef": 0.03, "hard_from": 120},
             keep_stem_dense=False, keep_classifier_dense=False, example_inputs=x[:2])
    layers = dict(sparse_layers(model))
    assert len(layers) == 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = fit(model, x, y, opt, 150)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert (model(x).argmax(1) == y).float().mean().item() > 0.8
    for layer in layers.values():
        assert int(layer.nm_step) == 150 and layer.nm_method.beta(150) == 0.0
        assert layer.mask_is_valid()
        with torch.no_grad():  # β = 0: the layer computes with exactly the N:M weight
            assert torch.equal(layer.masked_weight(), layer.weight * nm_mask(layer.weight, P24))


def test_beta_below_float32_roundoff_is_zero_so_the_forward_weight_is_exactly_nm():
    """An exp schedule that decays past float32's range must end with exact zeros outside the mask (not denormals)."""
    from nm_plugins.core.methods import make_method
    from nm_plugins.core.methods.decaying import BETA_FLOOR
    method = make_method("decaying", decay_coef=0.2346)
    assert method.beta(70) > BETA_FLOOR and method.beta(71) == 0.0  # exp(-0.2346 * 71) = 5.8e-8 < 2^-24
    w = torch.randn(8, 16)
    mask = torch.rand(8, 16) > 0.5
    out = method.forward_weight(w, mask, 400)
    assert torch.equal(out, w * mask)
    assert int((out[~mask] != 0).sum()) == 0

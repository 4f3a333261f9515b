"""MaxQ (nm_plugins.core.methods.maxq) from its equations, on real tensors: the mask and its incremental-sparsity
ramp, the multi-axis soft scores, the forward weight, the straight-through gradient, the SR-STE step term and the
settings' validation."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nm_plugins import NMPattern, is_valid_nm_mask, nm_mask
from nm_plugins.core.mask import to_flat_groups, to_groups
from nm_plugins.core.methods import make_method, method_names

P24 = NMPattern.parse("2:4")


def _groups(t, pattern, grouping):
    return to_flat_groups(t, pattern.m) if grouping == "authors_flat" else to_groups(t, pattern.m)


def _row_scores(values, pattern, tau):
    """The soft score of one axis, from the equation, entry by entry in plain Python floats:
    q = floor((M-N)/M * L); t = mean of the q-th and (q+1)-th smallest; 0 for the q smallest, else sigmoid."""
    length = len(values)
    q = int((pattern.m - pattern.n) / pattern.m * length)
    order = sorted(range(length), key=lambda i: (values[i], i))  # ties: the lower index counts as smaller
    t = (values[order[q - 1]] + values[order[q]]) / 2
    out = [0.0] * length
    for i in order[q:]:
        out[i] = 1 / (1 + math.exp(-(values[i] - t) / tau))
    return out


def _reference_scores(weight, pattern, tau, kernel_axis=True):
    """1 + f + p from the equations, filter by filter and kernel position by kernel position."""
    mag = weight.detach().double().abs()
    out = torch.ones_like(mag)
    flat = mag.reshape(mag.shape[0], -1)
    for o in range(mag.shape[0]):
        out.reshape(mag.shape[0], -1)[o] += torch.tensor(_row_scores(flat[o].tolist(), pattern, tau), dtype=mag.dtype)
    if kernel_axis and mag.dim() > 2 and mag[0, 0].numel() > 1:
        positions = mag[0, 0].numel()
        by_pos = mag.reshape(-1, positions)
        extra = torch.zeros_like(by_pos)
        for k in range(positions):
            extra[:, k] = torch.tensor(_row_scores(by_pos[:, k].tolist(), pattern, tau), dtype=mag.dtype)
        out += extra.reshape(mag.shape)
    return out


def test_maxq_is_registered_with_its_own_forward_and_a_schedule():
    assert "maxq" in method_names()
    method = make_method("maxq")
    assert method.uses_step and not method.uses_builtin_forward()
    assert method.describe().startswith("maxq(")


@pytest.mark.parametrize("grouping", ["channels", "authors_flat"])
@pytest.mark.parametrize("shape", [(8, 16), (6, 8, 3, 3), (4, 12, 1, 1)])
def test_mask_after_the_ramp_is_the_nm_magnitude_mask(shape, grouping):
    method = make_method("maxq", ramp_start_step=10, ramp_end_step=50)
    w = torch.randn(shape)
    for step in (50, 51, 1000):
        mask = method.compute_mask(w, P24, grouping, step)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert is_valid_nm_mask(mask, P24, grouping)
        assert torch.equal(mask, nm_mask(w, P24, grouping=grouping))


@pytest.mark.parametrize("grouping", ["channels", "authors_flat"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "2:8"])
def test_mid_ramp_the_smallest_groups_stay_dense_and_the_others_are_nm(pattern, grouping):
    pattern = NMPattern.parse(pattern)
    method = make_method("maxq", ramp_start_step=0, ramp_end_step=100)
    w = torch.randn(6, 16, 3, 3)
    groups = _groups(w, pattern, grouping)
    sums = groups.abs().sum(dim=1)
    reference = _groups(nm_mask(w, pattern, grouping=grouping), pattern, grouping)
    for step in (1, 37, 50, 99):
        mask = _groups(method.compute_mask(w, pattern, grouping, step), pattern, grouping)
        dense = mask.all(dim=1)
        assert int(dense.sum()) == int((1 - step / 100) * groups.shape[0])
        # the dense groups are those of smallest sum |w|; every other group is the N:M magnitude mask
        assert sums[dense].max() <= sums[~dense].min()
        assert torch.equal(mask[~dense], reference[~dense])
    assert torch.equal(method.compute_mask(w, pattern, grouping, 0), torch.ones_like(w, dtype=torch.bool))


def test_dense_groups_with_a_partial_last_group():
    """Input channels not divisible by M: groups are zero-padded (their sum is over their real channels) and a
    revived partial group keeps all its real channels."""
    pattern = NMPattern.parse("1:4")
    method = make_method("maxq", ramp_end_step=10)
    w = torch.randn(3, 6)  # per row one whole group (channels 0-3) and one partial group (channels 4-5)
    sums = [(r, g, float(w[r, 4 * g: 4 * g + 4].abs().sum())) for r in range(3) for g in range(2)]
    revived = sorted(sums, key=lambda item: item[2])[: int(0.5 * 6)]
    expected = nm_mask(w, pattern).clone()
    for r, g, _ in revived:
        expected[r, 4 * g: 4 * g + 4] = True
    assert torch.equal(method.compute_mask(w, pattern, "channels", 5), expected)
    assert is_valid_nm_mask(method.compute_mask(w, pattern, "channels", 10), pattern)


def _authors_rate(epoch, start, end, schedule):
    """The share of dense groups at an epoch, from the equations (1 before start, 0 from end on)."""
    if start == end == 0:
        return 0.0
    if epoch < start:
        return 1.0
    if epoch >= end:
        return 0.0
    x = (epoch - start) / (end - start)
    return {"linear": 1 - x, "cubic": (1 - x) ** 3, "cos": math.cos(x * math.pi / 2)}[schedule]


@pytest.mark.parametrize("schedule", ["linear", "cubic", "cos"])
def test_schedule_in_steps_is_the_epoch_schedule_when_ramp_every_steps_is_an_epoch(schedule):
    steps_per_epoch, start_epoch, end_epoch = 7, 2, 12
    method = make_method("maxq", ramp_start_step=start_epoch * steps_per_epoch,
                         ramp_end_step=end_epoch * steps_per_epoch, ramp_every_steps=steps_per_epoch, schedule=schedule)
    for step in range(0, 15 * steps_per_epoch):
        expected = _authors_rate(step // steps_per_epoch, start_epoch, end_epoch, schedule)
        assert method.dense_share(step) == pytest.approx(expected, abs=1e-15), step
    # the shares ramp down monotonically from 1 to 0
    shares = [method.dense_share(s) for s in range(0, 15 * steps_per_epoch)]
    assert shares[0] == 1.0 and shares[-1] == 0.0
    assert all(a >= b for a, b in zip(shares, shares[1:]))


def test_schedule_values_per_step():
    linear = make_method("maxq", ramp_start_step=100, ramp_end_step=300)
    assert [linear.dense_share(s) for s in (0, 99, 100, 150, 200, 299, 300, 10**6)] == \
        [1.0, 1.0, 1.0, 0.75, 0.5, 1 - 199 / 200, 0.0, 0.0]
    cubic = make_method("maxq", ramp_end_step=4, schedule="cubic")
    assert [cubic.dense_share(s) for s in range(5)] == [1.0, 0.75 ** 3, 0.5 ** 3, 0.25 ** 3, 0.0]
    cos = make_method("maxq", ramp_end_step=3, schedule="cos")
    assert cos.dense_share(1) == pytest.approx(math.cos(math.pi / 6))
    no_ramp = make_method("maxq")  # ramp_start_step = ramp_end_step = 0: N:M from the first step
    assert no_ramp.dense_share(0) == 0.0
    late = make_method("maxq", ramp_start_step=5, ramp_end_step=5)  # a jump: dense before step 5, N:M from it
    assert (late.dense_share(4), late.dense_share(5)) == (1.0, 0.0)


@pytest.mark.parametrize("kernel_axis", [True, False])
@pytest.mark.parametrize("shape,pattern", [((8, 16), "2:4"), ((6, 8, 3, 3), "2:4"), ((6, 8, 3, 3), "1:4"),
                                           ((4, 16, 1, 1), "2:8"), ((5, 8, 2, 3), "1:2")])
def test_scores_follow_the_filter_and_kernel_equations(shape, pattern, kernel_axis):
    pattern = NMPattern.parse(pattern)
    method = make_method("maxq", tau=0.05, kernel_axis=kernel_axis)
    w = torch.randn(shape, dtype=torch.float64) * 0.1
    got = method.scores(w, pattern)
    torch.testing.assert_close(got, _reference_scores(w, pattern, 0.05, kernel_axis), rtol=1e-12, atol=1e-12)
    has_kernel = kernel_axis and len(shape) > 2 and shape[2] * shape[3] > 1
    assert got.min() >= 1 and got.max() <= (3 if has_kernel else 2)
    # per filter exactly the share (M-N)/M (rounded down) gets no filter score
    if not has_kernel:
        q = int((pattern.m - pattern.n) / pattern.m * w[0].numel())
        assert ((got == 1).reshape(shape[0], -1).sum(dim=1) == q).all()


@pytest.mark.parametrize("shape,pattern", [((6, 8, 3, 3), "2:4"), ((5, 16), "1:4"), ((4, 8, 1, 3), "3:8")])
def test_scores_with_many_ties_follow_the_equations(shape, pattern):
    """Weights on a coarse grid (many equal magnitudes, zeros too): the q smallest are taken in index order."""
    pattern = NMPattern.parse(pattern)
    w = torch.randint(-3, 4, shape).to(torch.float64) / 30
    torch.testing.assert_close(make_method("maxq").scores(w, pattern), _reference_scores(w, pattern, 1e-2),
                               rtol=1e-12, atol=1e-12)


def test_scores_of_ties_count_the_lower_index_as_smaller():
    w = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.1, 0.9, 0.1, 0.9]])
    scores = make_method("maxq").scores(w, P24)
    # q = 4 of 8: the two 0.1 and the first two 0.5 get no score; the threshold is 0.5: sigmoid(0) = 0.5
    assert scores[0, :4].tolist() == [1.0, 1.0, 1.5, 1.5]
    assert scores[0, 4].item() == 1.0 and scores[0, 6].item() == 1.0
    assert scores[0, 5].item() == pytest.approx(1 + 1 / (1 + math.exp(-40)))


@pytest.mark.parametrize("shape", [(8, 16), (6, 8, 3, 3)])
def test_forward_weight_is_weight_times_mask_times_scores(shape):
    method = make_method("maxq", ramp_end_step=20)
    w = torch.randn(shape).mul_(0.05).requires_grad_()
    for step in (3, 20):
        mask = method.compute_mask(w, P24, "channels", step)
        out = method.forward_weight(w, mask, step, pattern=P24)
        assert torch.equal(out, w.detach() * (mask.to(w.dtype) * method.scores(w, P24)))
        assert (out[~mask] == 0).all()
    assert is_valid_nm_mask(out != 0, P24)  # after the ramp: N:M support (scores only rescale kept weights)


def test_gradient_is_straight_through_to_the_weight():
    """∂L/∂W = ∂L/∂W_fwd: not multiplied by the mask nor by the scores (the authors' SoftParameterMasker)."""
    method = make_method("maxq")
    w = torch.randn(6, 8, 3, 3).mul_(0.1).requires_grad_()
    x = torch.randn(2, 8, 5, 5)
    mask = method.compute_mask(w, P24, "channels", 0)
    out = method.forward_weight(w, mask, 0, pattern=P24)
    F.conv2d(x, out, padding=1).square().sum().backward()
    leaf = out.detach().requires_grad_()
    F.conv2d(x, leaf, padding=1).square().sum().backward()
    assert torch.equal(w.grad, leaf.grad)
    assert not torch.equal(w.grad, leaf.grad * mask * method.scores(w, P24))  # not the formula's own gradient
    assert (w.grad[~mask] != 0).any()  # pruned weights get gradient


def test_step_term_adds_the_srste_decay_of_the_pruned_weights():
    method = make_method("maxq", decay=3e-3, ramp_end_step=10)
    w = torch.randn(8, 16)
    for step in (4, 10):  # mid-ramp the dense groups are not decayed
        mask = method.compute_mask(w, P24, "channels", step)
        grad = torch.randn(8, 16)
        expected = grad + 3e-3 * (~mask).float() * w
        assert method.step_term(w, mask, grad, step) is True
        torch.testing.assert_close(grad, expected, rtol=0, atol=1e-7)
    grad = torch.randn(8, 16)
    expected = grad + 1024.0 * 3e-3 * (~mask).float() * w
    assert method.step_term(w, mask, grad, 10, grad_scale=torch.tensor(1024.0))
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)
    grad = torch.randn(8, 16)
    expected = grad + 3 * 3e-3 * (~mask).float() * w  # owed three times (the layer's decay_mode="call")
    assert method.step_term(w, mask, grad, 10, calls=3)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-7)
    grad = torch.randn(8, 16)
    before = grad.clone()
    assert method.wants_step_term() and not make_method("maxq", decay=0.0).wants_step_term()
    assert make_method("maxq", decay=0.0).step_term(w, mask, grad, 10) is False
    assert torch.equal(grad, before)


@pytest.mark.parametrize("settings,named", [
    ({"decay": -1.0}, "decay"), ({"decay": "two"}, "decay"), ({"decay": True}, "decay"), ({"tau": 0.0}, "tau"), ({"tau": float("nan")}, "tau"), ({"ramp_start_step": -1}, "ramp_start_step"),
    ({"ramp_start_step": 10, "ramp_end_step": 5}, "ramp_end_step"), ({"ramp_end_step": 2.5}, "ramp_end_step"),
    ({"ramp_every_steps": 0}, "ramp_every_steps"),
    ({"schedule": "exp"}, "schedule"), ({"kernel_axis": "yes"}, "kernel_axis"), ({"refresh": 3}, "refresh"),
])
def test_bad_settings_raise_naming_the_setting(settings, named):
    with pytest.raises(ValueError, match=named):
        make_method("maxq", **settings)


def test_numbers_written_as_yaml_1_1_strings_are_read():
    """``tau: 1e-2`` in a config reaches the method as the string '1e-2' (YAML 1.1): read as the number."""
    from nm_plugins.train.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs/imagenet_proxy/fashion_mnist.yaml", [
        "sparsity.method=maxq", "sparsity.method_args.tau=1e-2", "sparsity.method_args.ramp_end_step=128",
        "sparsity.method_args.ramp_every_steps=4", "sparsity.method_args.kernel_axis=false"])
    method = make_method("maxq", **config["sparsity"]["method_args"])
    assert method.settings["tau"] == 0.01 and method.settings["ramp_end_step"] == 128
    assert method.settings["kernel_axis"] is False


def test_forward_weight_takes_the_pattern_of_its_mask_and_refuses_to_guess():
    w = torch.randn(4, 8)
    fresh = make_method("maxq")
    with pytest.raises(ValueError, match="pattern"):
        fresh.forward_weight(w, torch.ones_like(w, dtype=torch.bool), 0)
    method = make_method("maxq")
    mask = method.compute_mask(w, "1:4", "channels", 0)
    assert torch.equal(method.forward_weight(w, mask, 0), method.forward_weight(w, mask, 0, pattern="1:4"))
    assert not torch.equal(method.forward_weight(w, mask, 0), method.forward_weight(w, mask, 0, pattern="2:4"))
    method.compute_mask(w, P24, "channels", 0)  # one object used for two patterns: no guess
    with pytest.raises(ValueError, match="patterns seen: 1:4, 2:4"):
        method.forward_weight(w, mask, 0)
    method.pattern = NMPattern.parse("1:4")  # a layer that tells its method its pattern
    assert torch.equal(method.forward_weight(w, mask, 0), method.forward_weight(w, mask, 0, pattern="1:4"))


def test_forward_weight_refuses_what_it_cannot_score():
    method = make_method("maxq")
    w = torch.randn(4, 8)
    mask = method.compute_mask(w, P24, "channels", 0)
    with pytest.raises(ValueError, match="N < M"):
        method.forward_weight(w, torch.ones_like(mask), 0, pattern="4:4")
    with pytest.raises(ValueError, match="at least 2 weights"):
        method.scores(torch.randn(3, 1), P24)


# --- through the real layers (nm_plugins.core.sparsify) -------------------------------------------------------

def _teacher_task(n=128, seed=0):
    """A fixed synthetic 4-class image task: labels of a random teacher CNN on Gaussian images."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                                  torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 4))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        y = teacher(x).argmax(dim=1)
    return x, y


def _student():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),   # stem: dense
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),  # N:M
        torch.nn.Conv2d(16, 16, 1), torch.nn.ReLU(),             # N:M (1x1: filter score only)
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(64, 32), torch.nn.ReLU(),                # N:M (linear)
        torch.nn.Linear(32, 4))                                  # classifier: dense


def test_a_small_cnn_learns_with_maxq_and_ends_with_nm_masks(one_torch_thread):
    from nm_plugins import export_dense, sparse_layers, sparsify

    torch.manual_seed(0)
    x, y = _teacher_task()
    model = _student()
    sparsify(model, "2:4", "maxq", method_args={"ramp_end_step": 40, "ramp_every_steps": 10}, example_inputs=x[:2])
    layers = dict(sparse_layers(model))
    assert sorted(layers) == ["2", "4", "8"] and all(layer.method == "maxq" for layer in layers.values())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(100):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 19:  # mid-ramp: at step 20 half the groups of every layer are dense
            for layer in layers.values():
                mask = layer.mask()
                dense = to_groups(mask, 4).all(dim=1)
                assert int(dense.sum()) == int(0.5 * dense.numel()) and not layer.mask_is_valid()
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0], (losses[0], losses[-10:])
    model.eval()
    for layer in layers.values():
        assert int(layer.nm_step) == 100
        assert layer.mask_is_valid() and torch.equal(layer.mask(), nm_mask(layer.weight, "2:4"))
    # the deployable model: plain layers holding W ⊙ m ⊙ (1 + f + p), N:M, computing what the sparse model computes
    plain = export_dense(model)
    for name, layer in layers.items():
        weight = plain.get_submodule(name).weight
        assert torch.equal(weight, layer.weight.detach() * layer.mask() * layer.nm_method.scores(layer.weight, P24))
        assert is_valid_nm_mask(weight != 0, "2:4")
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


def test_one_sgd_step_through_a_layer_is_straight_through_plus_the_srste_term():
    from nm_plugins import SparseLinear

    torch.manual_seed(1)
    layer = SparseLinear(16, 8, pattern="2:4", method="maxq", method_args={"decay": 0.1})
    w0 = layer.weight.detach().clone()
    x = torch.randn(5, 16)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    mask = layer.mask().clone()
    layer(x).square().sum().backward()
    leaf = (w0 * mask * layer.nm_method.scores(w0, P24)).requires_grad_()
    F.linear(x, leaf, layer.bias.detach()).square().sum().backward()
    assert torch.equal(layer.weight.grad, leaf.grad)  # straight through: the forward weight's gradient
    opt.step()
    expected = w0 - (leaf.grad + 0.1 * (~mask).float() * w0)
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=1e-6)
    assert int(layer.nm_step) == 1


def test_the_layers_schedule_follows_its_saved_step():
    """nm_step is saved with the layer: a reloaded layer continues the ramp where it was."""
    from nm_plugins import SparseLinear

    torch.manual_seed(2)
    layer = SparseLinear(16, 8, pattern="2:4", method="maxq", method_args={"ramp_end_step": 4})
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(5, 16)
    for _ in range(2):
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    assert int(to_groups(layer.mask(), 4).all(dim=1).sum()) == int(0.5 * 32)
    again = SparseLinear(16, 8, pattern="2:4", method="maxq", method_args={"ramp_end_step": 4})
    again.load_state_dict(layer.state_dict())
    assert int(again.nm_step) == 2 and torch.equal(again.mask(), layer.mask())

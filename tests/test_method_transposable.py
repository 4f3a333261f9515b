"""The transposable N:M method (Hubara et al. 2021): masks N:M along inputs and outputs, the greedy rule, the
refresh schedule, the SR-STE step term, settings."""
import itertools

import pytest
import torch

from nm_plugins.core.mask import is_valid_nm_mask, nm_mask
from nm_plugins.core.methods import make_method, method_names
from nm_plugins.core.methods.transposable import (Transposable, from_blocks, is_transposable_mask, to_blocks,
                                                  transposable_mask)
from nm_plugins.core.pattern import NMPattern
from method_training import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster
PATTERNS = ["2:4", "1:4", "3:4", "1:2", "4:8", "2:8", "1:8"]


def all_transposable_blocks(n, m):
    """Every M×M 0/1 block with N ones per row and per column (enumerated), as [C, M*M] floats."""
    rows = [r for r in itertools.product([0, 1], repeat=m) if sum(r) == n]
    found = [torch.tensor(b) for b in itertools.product(rows, repeat=m) if (torch.tensor(b).sum(0) == n).all()]
    return torch.stack(found).reshape(len(found), m * m).float()


def greedy_reference(block, n):
    """The paper's greedy on one block (lists): entries by decreasing |w|, lower index first on ties; keep one when
    its row and column hold fewer than n. Returns (mask, complete)."""
    m = len(block)
    entries = sorted(range(m * m), key=lambda e: (-abs(block[e // m][e % m]), e))
    keep = [[False] * m for _ in range(m)]
    for e in entries:
        r, c = divmod(e, m)
        if sum(keep[r]) < n and sum(keep[i][c] for i in range(m)) < n:
            keep[r][c] = True
    return keep, all(sum(row) == n for row in keep)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(16, 32), (8, 16, 3, 3), (24, 8, 1, 1)])
def test_mask_is_valid_nm_and_its_transpose_too(pattern, shape):
    m = NMPattern.parse(pattern).m
    if shape[0] % m or shape[1] % m:
        pytest.skip("channels not divisible by M")
    mask = transposable_mask(torch.randn(shape), pattern)
    assert mask.dtype == torch.bool and mask.shape == shape
    assert is_valid_nm_mask(mask, pattern)
    assert is_valid_nm_mask(mask.transpose(0, 1), pattern)  # the backward GEMM's weight W^T is N:M over outputs
    assert is_transposable_mask(mask, pattern)


def test_plain_nm_masks_are_generally_not_transposable():
    w = torch.randn(32, 32)
    assert is_valid_nm_mask(nm_mask(w, "2:4"), "2:4")
    assert not is_transposable_mask(nm_mask(w, "2:4"), "2:4")


def test_blocks_are_outputs_by_inputs_at_each_kernel_position():
    w = torch.randn(8, 12, 3, 2)
    blocks = to_blocks(w, 4)
    assert blocks.shape == (8 // 4 * 12 // 4 * 6, 4, 4)
    assert torch.equal(from_blocks(blocks, w.shape), w)
    assert torch.equal(blocks[0], w[0:4, 0:4, 0, 0])
    assert torch.equal(blocks[1], w[0:4, 4:8, 0, 0])
    mask = transposable_mask(w, "2:4")
    for i, j in itertools.product(range(3), range(2)):  # each kernel position on its own
        assert torch.equal(mask[:, :, i, j], transposable_mask(w[:, :, i, j], "2:4"))


def test_ties_keep_the_lower_index_first():
    # all |w| equal: greedy visits row-major; rows 0 and 1 fill columns 0, 1; rows 2 and 3 columns 2, 3
    mask = transposable_mask(torch.ones(4, 4), "2:4")
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8", "2:8"])
def test_mask_is_the_greedy_rule_where_greedy_completes(pattern):
    p = NMPattern.parse(pattern)
    w = torch.randn(8 * p.m, 8 * p.m)
    got = to_blocks(transposable_mask(w, p), p.m)
    completed = 0
    for block, mask in zip(to_blocks(w, p.m).tolist(), got):
        reference, complete = greedy_reference(block, p.n)
        if complete:
            completed += 1
            assert torch.equal(mask, torch.tensor(reference))
    assert completed > 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_kept_magnitude_is_at_least_half_the_optimum(n):
    candidates = all_transposable_blocks(n, 4)  # 24, 90, 24 masks
    w = torch.randn(64, 64)
    mag = to_blocks(w.abs(), 4).reshape(-1, 16)
    best = (mag @ candidates.T).max(dim=1).values
    kept = (mag * to_blocks(transposable_mask(w, f"{n}:4"), 4).reshape(-1, 16)).sum(dim=1)
    assert bool((kept >= 0.5 * best - 1e-6).all())  # the greedy 2-approximation's guarantee
    assert bool((kept <= best + 1e-5).all())
    assert float(kept.sum() / best.sum()) > 0.9  # close to the optimum in aggregate


def test_blocks_where_greedy_stops_short_are_completed():
    # greedy keeps 16, 15, 14, 13, 12, 11, 9, 7 and then stops: row 0 and column 3 hold one each, crossing at 12
    block = torch.tensor([[2., 8., 4., 12.], [7., 13., 3., 6.], [9., 1., 14., 5.], [11., 15., 16., 10.]])
    greedy, complete = greedy_reference(block.tolist(), 2)
    assert not complete and sum(greedy[0]) == 1
    # short row 0, short column 3; swaps (keep (0, c'), drop (r', c'), keep (r', 3)) and their gains:
    # (1, 0): 2+6-7 = 1, (1, 1): 8+6-13 = 1, (2, 0): 2+5-9 = -2, (2, 2): 4+5-14 = -5, (3, 1): 8+10-15 = 3,
    # (3, 2): 4+10-16 = -2: the best drops (3, 1), keeps (0, 1) and (3, 3)
    expected = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(transposable_mask(block, "2:4"), expected)


def test_random_weights_hit_and_complete_short_blocks():
    w = torch.randn(64, 64)
    short = sum(not greedy_reference(b, 2)[1] for b in to_blocks(w, 4).tolist())
    assert short > 0  # greedy alone leaves some blocks with fewer than N: the completion is exercised
    assert is_transposable_mask(transposable_mask(w, "2:4"), "2:4")


def test_bad_shapes_and_values_raise():
    with pytest.raises(ValueError, match="outputs"):
        transposable_mask(torch.randn(6, 8), "2:4")
    with pytest.raises(ValueError, match="inputs"):
        transposable_mask(torch.randn(8, 6), "2:4")
    with pytest.raises(ValueError, match="NaN"):
        transposable_mask(torch.full((4, 4), float("nan")), "2:4")
    method = make_method("transposable")
    assert "outputs" in method.dense_reason((6, 8), NMPattern.parse("2:4"))
    assert method.dense_reason((8, 8, 3, 3), NMPattern.parse("2:4")) is None
    with pytest.raises(ValueError, match="grouping='channels'"):
        Transposable().compute_mask(torch.randn(8, 8), NMPattern.parse("2:4"), "authors_flat", 0)


def test_registered_with_the_authors_defaults():
    assert "transposable" in method_names()
    method = make_method("transposable")
    assert isinstance(method, Transposable)
    assert method.settings == {"decay": 2e-4, "refresh_every": 40}
    assert method.uses_step and method.uses_builtin_forward()
    w = torch.randn(8, 8)
    assert torch.equal(method.compute_mask(w, NMPattern.parse("2:4"), "channels", 0), transposable_mask(w, "2:4"))


def test_mask_refresh_schedule():
    due = [s for s in range(130) if make_method("transposable").mask_due(s)]
    assert due == [0, 40, 80, 120]
    assert [s for s in range(10) if make_method("transposable", refresh_every=3).mask_due(s)] == [0, 3, 6, 9]
    assert all(make_method("transposable", refresh_every=1).mask_due(s) for s in range(5))


def test_step_term_is_the_srste_decay_on_pruned_weights():
    w = torch.randn(8, 16)
    mask = transposable_mask(w, "2:4")
    grad = torch.randn(8, 16)
    expected = grad + 2e-4 * (~mask).float() * w
    got = grad.clone()
    assert make_method("transposable").step_term(w, mask, got, step=3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    scaled = grad.clone() * 1024
    assert make_method("transposable", decay=1e-3).step_term(w, mask, scaled, 3, grad_scale=torch.tensor(1024.0))
    torch.testing.assert_close(scaled, (grad + 1e-3 * (~mask).float() * w) * 1024)
    twice = grad.clone()
    assert make_method("transposable").step_term(w, mask, twice, 3, calls=2)  # decay_mode="call": owed per call
    torch.testing.assert_close(twice, grad + 4e-4 * (~mask).float() * w)
    untouched = grad.clone()
    assert not make_method("transposable", decay=0).wants_step_term()
    assert not make_method("transposable", decay=0).step_term(w, mask, untouched, 3)
    assert torch.equal(untouched, grad)


@pytest.mark.parametrize("settings, name", [({"refresh_every": 0}, "refresh_every"), ({"refresh_every": 2.5}, "refresh_every"),
                                            ({"refresh_every": True}, "refresh_every"), ({"decay": -1.0}, "decay"),
                                            ({"decay": float("nan")}, "decay"), ({"decay": "x"}, "decay"),
                                            ({"every": 4}, "unknown setting")])
def test_bad_settings_name_the_setting(settings, name):
    with pytest.raises(ValueError, match=name):
        make_method("transposable", **settings)


# --- through real layers (nm_plugins.core.sparsify) -----------------------------------------------------------------

def _teacher_task(seed=0, n=256, d=16, classes=4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    teacher = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.Tanh(), torch.nn.Linear(32, classes))
    for p in teacher.parameters():
        p.data = torch.randn(p.shape, generator=gen)
    return x, teacher(x).argmax(dim=1).detach()


def test_layer_keeps_its_mask_between_refreshes_and_adds_the_srste_term():
    from nm_plugins.core import SparseLinear

    layer = SparseLinear(8, 8, bias=False, method="transposable", method_args={"refresh_every": 3, "decay": 0.1})
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(32, 8)
    masks, weights = [], []
    for step in range(7):
        assert int(layer.nm_step) == step
        before = layer.weight.detach().clone()
        out = layer(x)
        mask = layer.nm_mask.clone()
        assert is_transposable_mask(mask, "2:4")
        assert torch.equal(out, x @ (before * mask).T)  # forward W ⊙ mask
        masks.append(mask)
        weights.append(before)
        opt.zero_grad()
        upstream = torch.randn_like(out)
        out.backward(upstream)
        grad = (upstream.T @ x).clone()  # the straight-through gradient of W ⊙ mask
        opt.step()
        # SGD: W ← W − lr·(grad + decay·(1−mask)⊙W): the step term was added before the update
        torch.testing.assert_close(layer.weight.detach(), before - 0.5 * (grad + 0.1 * (~mask) * before))
    # the weights move a lot (lr 0.5): the mask is recomputed at steps 3 and 6 only
    assert torch.equal(masks[1], masks[0]) and torch.equal(masks[2], masks[0])
    assert torch.equal(masks[4], masks[3]) and torch.equal(masks[5], masks[3])
    for step in (0, 3, 6):
        assert torch.equal(masks[step], transposable_mask(weights[step], "2:4"))
    assert not torch.equal(masks[3], masks[0])


def test_a_small_mlp_learns_with_transposable_masks():
    from nm_plugins.core import sparse_layers, sparsify

    torch.manual_seed(0)
    x, y = _teacher_task()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 4))
    report = sparsify(model, "2:4", method="transposable", method_args={"refresh_every": 5},
                      keep_stem_dense=False, keep_classifier_dense=False, example_inputs=x[:2])
    layers = dict(sparse_layers(model))
    assert len(layers) == 3 and report.method == "transposable"
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = fit(model, x, y, opt, 150)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8
    for name, layer in layers.items():
        assert int(layer.nm_step) == 150
        assert is_transposable_mask(layer.mask(), "2:4"), name
        assert layer.mask_is_valid()


def test_checkpoint_mid_interval_keeps_the_mask_and_the_schedule():
    from nm_plugins.core import SparseLinear

    def make():
        return SparseLinear(8, 8, bias=False, method="transposable", method_args={"refresh_every": 3})

    layer = make()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(32, 8)
    for _ in range(4):  # mask from step 3; steps 4 and 5 keep it
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    mask = layer.nm_mask.clone()
    state = layer.state_dict()
    assert torch.equal(layer.nm_mask, mask)  # saving did not refresh it off schedule
    assert not torch.equal(mask, transposable_mask(layer.weight.detach(), "2:4"))  # the weight moved since step 3
    resumed = make()
    resumed.load_state_dict(state)
    assert int(resumed.nm_step) == 4 and torch.equal(resumed.nm_mask, mask)
    assert torch.equal(resumed(x), layer(x))

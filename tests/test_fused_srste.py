"""The fused SR-STE engine gives exactly the per-layer path's forward, masks and gradients."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from nm_plugins import FusedSRSTE, SADTracker, SparseLinear, export_dense, flat_nm_mask, nm_mask, sparse_layers, sparsify
from nm_plugins.core.mask import to_groups

REPO = Path(__file__).resolve().parents[1]


def small_convnet(channels_last=False):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 8, 3, padding=1, groups=2), nn.ReLU(),  # grouped conv: in 16 per group
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4),
    )
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def train_pair(net_plain, net_fused, steps=3, micro=2, lr=0.05, channels_last=False, **engine_kw):
    """Train two copies side by side (one with the engine) and assert identical grads each step."""
    engine = FusedSRSTE(net_fused, **engine_kw)
    opt_a = torch.optim.SGD(net_plain.parameters(), lr=lr, momentum=0.9)
    opt_b = torch.optim.SGD(net_fused.parameters(), lr=lr, momentum=0.9)
    for step in range(steps):
        xs = [torch.randn(3, 3, 8, 8) for _ in range(micro)]
        if channels_last:
            xs = [x.to(memory_format=torch.channels_last) for x in xs]
        outs = {}
        for net, opt in ((net_plain, opt_a), (net_fused, opt_b)):
            opt.zero_grad()
            outs[id(net)] = [net(x) for x in xs]
            for out in outs[id(net)]:
                out.square().mean().backward()
        for a, b in zip(outs[id(net_plain)], outs[id(net_fused)]):
            assert torch.equal(a, b), f"step {step}: forward outputs differ"
        for (name, pa), (_, pb) in zip(net_plain.named_parameters(), net_fused.named_parameters()):
            assert (pa.grad is None) == (pb.grad is None), name
            if pa.grad is not None:
                assert torch.equal(pa.grad, pb.grad), f"step {step}: grad of {name} differs"
        opt_a.step()
        opt_b.step()
    for (name, a), (_, b) in zip(sparse_layers(net_plain), sparse_layers(net_fused)):
        assert torch.equal(a.mask(), b.mask()), name
        assert torch.equal(a.masked_weight(), b.masked_weight()), name
    return engine


@pytest.mark.parametrize("layout", ["native", "grouped"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("method", ["srste", "ste"])
def test_fused_matches_plain_path_exactly(channels_last, method, layout):
    plain = small_convnet(channels_last)
    report = sparsify(plain, "2:4", method)
    assert len(report.sparse_layers) == 5
    fused = copy.deepcopy(plain)
    train_pair(plain, fused, channels_last=channels_last, layout=layout)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), fused.eval()(x))


def test_fused_matches_plain_with_mixed_patterns_and_decays():
    plain = small_convnet()
    sparsify(plain, "2:4", "srste", decay=3e-4, exclude=("12",))
    sparsify(plain, "1:4", "ste", exclude=("0", "2", "6", "9", "10"))  # two buckets, one decay-free
    for layout in ("native", "grouped"):
        fused = copy.deepcopy(plain)
        engine = train_pair(copy.deepcopy(plain), fused, layout=layout)
        assert len(engine._buckets) == 2


@pytest.mark.parametrize("layout", ["native", "grouped"])
def test_fused_matches_plain_on_timm_resnet18(layout):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=10)
    sparsify(plain, "2:4", "srste")
    fused = copy.deepcopy(plain)
    train_pair(plain, fused, steps=2, micro=1, layout=layout)


def test_decay_added_once_per_step_under_gradient_accumulation():
    net = small_convnet()
    sparsify(net, "2:4", "srste", decay=0.5)  # a large decay makes any double count obvious
    ref = copy.deepcopy(net)
    FusedSRSTE(net)
    xs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    for x in xs:
        net(x).sum().backward()
    sparsify(ref, "2:4", "ste")  # the data gradient alone
    for x in xs:
        ref(x).sum().backward()
    for (name, a), (_, b) in zip(sparse_layers(net), sparse_layers(ref)):
        expected = b.weight.grad + 0.5 * (~b.mask()) * b.weight.detach()
        assert torch.allclose(a.weight.grad, expected, atol=1e-6), name


def test_masks_computed_once_per_weight_version():
    net = small_convnet()
    sparsify(net, "2:4", "srste")
    engine = FusedSRSTE(net)
    calls = []
    original = engine._compute
    engine._compute = lambda bucket: (calls.append(1), original(bucket))
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):  # three micro-batches and an eval forward: one computation
        net(x).sum().backward()
    with torch.no_grad():
        net(x)
    assert len(calls) == 1
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    net(x)
    assert len(calls) == 2


@pytest.mark.parametrize("layout", ["native", "grouped"])
def test_layer_masks_and_sad_tracker_see_the_fused_masks(layout):
    net = small_convnet()
    sparsify(net, "2:4", "srste")
    FusedSRSTE(net, layout=layout)
    tracker = SADTracker(net)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(2, 3, 8, 8)).square().sum().backward()
        opt.step()
    net(torch.randn(1, 3, 8, 8))
    for name, layer in sparse_layers(net):
        assert torch.equal(layer.mask(), nm_mask(layer.weight, "2:4")), name
        assert torch.equal(layer.nm_mask, layer.mask())
    record = tracker.record()
    assert record["model"]["sad_init"] > 0  # lr 1.0 flips masks


def test_state_dict_round_trip_and_close_restore_the_plain_path():
    net = small_convnet()
    sparsify(net, "2:4", "srste")
    engine = FusedSRSTE(net)
    net(torch.randn(1, 3, 8, 8))
    state = copy.deepcopy(net.state_dict())
    other = small_convnet()
    sparsify(other, "2:4", "srste")
    other.load_state_dict(state)
    for (name, a), (_, b) in zip(sparse_layers(net), sparse_layers(other)):
        assert torch.equal(a.nm_mask, b.mask()), name
    engine.close()
    for _, layer in sparse_layers(net):
        assert "_fused_engine" not in layer.__dict__ and layer.nm_mask.is_contiguous()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), other(x))


def test_a_deep_copy_of_the_model_runs_the_per_layer_path():
    net = small_convnet()
    sparsify(net, "2:4", "srste")
    FusedSRSTE(net)
    x = torch.randn(2, 3, 8, 8)
    net(x).sum().backward()
    copied = copy.deepcopy(net)
    with torch.no_grad():
        for p in copied.parameters():
            p.add_(0.1)  # the copy's masks follow its own weights
    for (name, a), (_, b) in zip(sparse_layers(copied), sparse_layers(net)):
        assert torch.equal(a.masked_weight(), a.weight * nm_mask(a.weight, "2:4")), name
        assert b._forward_weight().data_ptr() != a._forward_weight().data_ptr()  # own buffers, not the engine's
    dense = export_dense(net)
    with torch.no_grad():
        assert torch.equal(dense.eval()(x), net.eval()(x))


def test_switching_a_layer_to_fixed_leaves_it_to_the_plain_path():
    net = small_convnet()
    sparsify(net, "2:4", "srste")
    engine = FusedSRSTE(net)
    net(torch.randn(1, 3, 8, 8))
    first = net[2]
    first.set_method("fixed")
    mask_before = first.mask().clone()
    net(torch.randn(1, 3, 8, 8)).sum().backward()
    assert "_fused_engine" not in first.__dict__
    assert len(engine._layers) == 4
    assert torch.equal(first.weight.grad, first.weight.grad * mask_before)  # fixed: pruned grads are zero


@pytest.mark.parametrize("layout", ["native", "grouped"])
def test_moving_the_model_after_attaching_rebuilds_the_buffers(layout):
    net = small_convnet()
    sparsify(net, "2:4", "srste")
    FusedSRSTE(net, layout=layout)
    net(torch.randn(1, 3, 8, 8))
    net.to(torch.float64)
    out = net(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64
    for name, layer in sparse_layers(net):
        assert layer.nm_mask.dtype == torch.bool
        assert torch.equal(layer.mask(), nm_mask(layer.weight, "2:4")), name


@pytest.mark.parametrize("layout", ["native", "grouped"])
def test_non_finite_weight_raises_naming_the_layer(layout):
    net = small_convnet()
    sparsify(net, "2:4", "srste")
    FusedSRSTE(net, layout=layout)
    with torch.no_grad():
        net[5].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer\(s\) 5 hold NaN"):
        net(torch.randn(1, 3, 8, 8))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="no N:M layer with method 'srste' or 'ste'"):
        FusedSRSTE(small_convnet())
    with pytest.raises(TypeError, match="needs an nn.Module"):
        FusedSRSTE("resnet")
    with pytest.raises(ValueError, match="divisible by M=4"):
        flat_nm_mask(torch.randn(6), "2:4")
    with pytest.raises(ValueError, match="unknown layout 'flat'"):
        FusedSRSTE(nn.Sequential(SparseLinear(8, 4)), layout="flat")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        flat_nm_mask(torch.randn(8), "2:4", backend="cuda")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        flat_nm_mask(torch.randn(8), "2:4", backend="triton")


PATTERNS = st.sampled_from(["2:4", "1:4", "2:8", "4:8", "1:2", "3:8", "2:6", "1:1"])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@settings(max_examples=60, deadline=None)
@given(pattern=PATTERNS, dtype=DTYPES, groups=st.integers(1, 40), ties=st.booleans(), seed=st.integers(0, 2**16))
def test_flat_mask_equals_the_core_mask(pattern, dtype, groups, ties, seed):
    m = int(pattern.split(":")[1])
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-2, 3, (groups, m), generator=gen).to(dtype) if ties else torch.randn(groups, m, generator=gen).to(dtype)
    mask, masked, inv = flat_nm_mask(w.reshape(-1), pattern, backend="torch")
    expected = nm_mask(w, pattern)
    assert torch.equal(mask.view(groups, m), expected)
    assert torch.equal(masked.view(groups, m), w * expected)
    assert torch.equal(inv.view(groups, m), (~expected).to(dtype))


TRITON_CHECK = """
import torch
from nm_plugins.core.fused import flat_nm_mask
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for pattern in ("2:4", "1:4", "2:8", "4:8", "1:2"):
        for ties in (False, True):
            n = 8 * 97  # not a multiple of the block: the tail is masked
            w = torch.randint(-2, 3, (n,), generator=gen) if ties else torch.randn(n, generator=gen)
            w = w.to(dtype)
            got = flat_nm_mask(w, pattern, backend="triton-interpret")
            want = flat_nm_mask(w, pattern, backend="torch")
            for a, b, what in zip(got, want, ("mask", "masked", "inv")):
                assert torch.equal(a, b), (dtype, pattern, ties, what)
print("triton kernel matches")
"""


def test_triton_kernel_matches_torch_reference_under_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton kernel matches" in proc.stdout


def test_groups_of_the_flat_buffer_follow_the_core_layout():
    w = torch.randn(8, 12, 3, 3)
    moved = w.movedim(1, -1).reshape(-1)
    assert torch.equal(moved.view(-1, 4), to_groups(w, 4))


@pytest.mark.slow
def test_fused_decay_once_per_step_under_ddp_and_accumulation(tmp_path):
    out = tmp_path / "result.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("fused_ddp_worker.py")), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, diff = out.read_text().split()
    assert ok == "True", f"max difference {diff}"

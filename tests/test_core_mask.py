import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nm_plugins import NMPattern, is_valid_nm_mask, nm_mask

PATTERNS = ["1:2", "2:4", "1:4", "4:8", "2:8", "3:8", "1:1", "4:16"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def reference_mask(weight, pattern):
    """Argsort reference: group M input channels at fixed (out, *kernel), keep the N largest |w|, lower index on ties."""
    p = NMPattern.parse(pattern)
    w = weight.float().abs()
    moved = w.movedim(1, -1) if w.dim() > 2 else w
    groups = moved.reshape(-1, p.m)
    order = torch.argsort(-groups, dim=1, stable=True)[:, : p.n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    keep = keep.reshape(moved.shape)
    return keep.movedim(-1, 1) if w.dim() > 2 else keep


@contextlib.contextmanager
def mask_backend_as(name):
    """Run nm_mask/masked_grad with the compiled kernel ("kernel") or the pure PyTorch path ("torch", as on GPU)."""
    import nm_plugins.core.mask as mask_mod

    saved = mask_mod._KERNEL
    if name == "torch":
        mask_mod._KERNEL = None
    elif saved is None:
        pytest.skip("the compiled kernel is not built here")
    try:
        yield
    finally:
        mask_mod._KERNEL = saved


BACKENDS = ["kernel", "torch"]


@st.composite
def weights(draw):
    pattern = NMPattern.parse(draw(st.sampled_from(PATTERNS)))
    dtype = draw(st.sampled_from(DTYPES))
    out = draw(st.integers(1, 6))
    groups = draw(st.integers(1, 4))
    kernel = draw(st.sampled_from([(), (1, 1), (3, 3), (1, 3), (2, 2, 2)]))
    shape = (out, groups * pattern.m) + kernel
    # few distinct values, so that ties are frequent
    levels = draw(st.sampled_from([3, 1000]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(-levels, levels + 1, shape, generator=gen).to(torch.float32) / levels
    return values.to(dtype), pattern


@settings(max_examples=300, deadline=None)
@given(weights())
def test_mask_matches_argsort_reference(case):
    w, pattern = case
    for backend in BACKENDS:
        with mask_backend_as(backend):
            mask = nm_mask(w, pattern)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert torch.equal(mask, reference_mask(w, pattern)), backend
        assert is_valid_nm_mask(mask, pattern)


@settings(max_examples=200, deadline=None)
@given(weights())
def test_every_group_keeps_exactly_n_largest(case):
    w, pattern = case
    mask = nm_mask(w, pattern)
    moved = (w.movedim(1, -1) if w.dim() > 2 else w).float().abs().reshape(-1, pattern.m)
    keep = (mask.movedim(1, -1) if w.dim() > 2 else mask).reshape(-1, pattern.m)
    assert torch.all(keep.sum(1) == pattern.n)
    if pattern.n < pattern.m:
        smallest_kept = torch.where(keep, moved, torch.full_like(moved, float("inf"))).min(1).values
        largest_pruned = torch.where(~keep, moved, torch.full_like(moved, -1.0)).max(1).values
        assert torch.all(smallest_kept >= largest_pruned)


def test_conv_groups_run_along_input_channels():
    # out=1, in=4, 1x2 kernel: the group at kernel position 0 is w[0, :, 0, 0], not w[0, 0, 0, :]
    w = torch.tensor([[[[4.0, 0.1]], [[3.0, 0.2]], [[0.5, 9.0]], [[0.4, 8.0]]]])
    mask = nm_mask(w, "2:4")
    assert mask[0, :, 0, 0].tolist() == [True, True, False, False]
    assert mask[0, :, 0, 1].tolist() == [False, False, True, True]


def test_linear_groups_are_consecutive_input_features():
    w = torch.tensor([[1.0, 5.0, 2.0, 3.0, -9.0, 0.0, 0.0, 1.0]])
    assert nm_mask(w, "2:4").tolist() == [[False, True, False, True, True, False, False, True]]


def test_ties_keep_lower_index():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert nm_mask(w, "2:4").tolist() == [[True, True, False, False], [True, True, False, False]]


def padded_reference_mask(weight, pattern):
    """Reference for C % M != 0: zero-pad dim 1 to a multiple of M, take the argsort mask, drop the padding."""
    p = NMPattern.parse(pattern)
    c = weight.shape[1]
    pad = -c % p.m
    padded = torch.cat([weight, weight.new_zeros((weight.shape[0], pad) + tuple(weight.shape[2:]))], 1)
    return reference_mask(padded, p)[:, :c]


@st.composite
def partial_weights(draw):
    pattern = NMPattern.parse(draw(st.sampled_from(["2:4", "1:4", "4:8", "2:8", "3:8"])))
    channels = draw(st.integers(1, 3 * pattern.m).filter(lambda c: c % pattern.m))
    kernel = draw(st.sampled_from([(), (1, 1), (3, 3), (1, 3)]))
    shape = (draw(st.integers(1, 5)), channels) + kernel
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    levels = draw(st.sampled_from([2, 1000]))
    w = torch.randint(-levels, levels + 1, shape, generator=gen).float() / levels
    return w.to(draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))), pattern


@settings(max_examples=200, deadline=None)
@given(partial_weights())
def test_partial_groups_are_zero_padded(case):
    """C % M != 0: the last group of r channels keeps min(N, r) of them, exactly as a zero-padded weight would."""
    w, pattern = case
    for backend in BACKENDS:
        with mask_backend_as(backend):
            masked = torch.empty_like(w)
            mask = nm_mask(w, pattern, masked=masked)
        assert torch.equal(mask, padded_reference_mask(w, pattern)), backend
        assert torch.equal(masked, w * mask), backend
        assert is_valid_nm_mask(mask, pattern)
        r = w.shape[1] % pattern.m
        last = (mask.movedim(1, -1) if w.dim() > 2 else mask)[..., -r:]
        assert torch.all(last.sum(-1) == min(pattern.n, r))


def test_partial_group_masks_are_validated():
    mask = torch.tensor([[True, False, False, False, False, True, False]])  # 7 channels, 1:4: a group of 4, one of 3
    assert is_valid_nm_mask(mask, "1:4") and not is_valid_nm_mask(mask, "2:4")
    assert not is_valid_nm_mask(torch.tensor([[True, False, False, False, True, True, False]]), "1:4")
    assert is_valid_nm_mask(torch.tensor([[True, True, False, False, True, True]]), "2:4")  # a last group of 2 keeps 2
    assert not is_valid_nm_mask(torch.ones(2, 6, dtype=torch.bool), "2:4")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_raise(bad):
    w = torch.randn(4, 8)
    w[1, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        nm_mask(w, "2:4")


def test_one_dim_weight_raises():
    with pytest.raises(ValueError, match="at least 2 dims"):
        nm_mask(torch.randn(8), "2:4")


def test_mask_does_not_track_gradients():
    w = torch.randn(4, 8, requires_grad=True)
    assert not nm_mask(w, "2:4").requires_grad


@settings(max_examples=200, deadline=None)
@given(weights())
def test_masked_output_is_weight_times_mask(case):
    w, pattern = case
    for backend in BACKENDS:
        masked = torch.full_like(w, float("nan"))
        with mask_backend_as(backend):
            mask = nm_mask(w, pattern, masked=masked)
        assert torch.equal(masked, w * mask), backend
        assert torch.equal(mask, reference_mask(w, pattern)), backend


def test_masked_output_in_a_non_contiguous_layout():
    w = torch.randn(8, 16, 3, 3).to(memory_format=torch.channels_last)
    masked = torch.empty_like(w)  # channels_last too: written by PyTorch after the kernel
    mask = nm_mask(w, "2:4", masked=masked)
    assert torch.equal(masked, w * mask) and torch.equal(mask, reference_mask(w, "2:4"))


def test_masked_output_of_the_wrong_dtype_or_shape_is_refused():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="masked= must be a torch.float32 tensor of shape \\(4, 8\\)"):
        nm_mask(w, "2:4", masked=torch.empty(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="masked="):
        nm_mask(w, "2:4", masked=torch.empty(8, 4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_masked_grad_is_bit_identical_to_the_torch_formula(backend, dtype, inplace, layout):
    from nm_plugins.core.mask import masked_grad

    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    w = torch.randn(64, 128, 3, 3).to(dtype=dtype, memory_format=fmt)  # large enough for several threads
    g = torch.randn_like(w)
    mask = nm_mask(w, "2:4")
    expected = torch.addcmul(g, w, (~mask).to(dtype), value=2e-4)
    with mask_backend_as(backend):
        got = masked_grad(g.clone() if inplace else g, w, mask, 2e-4, inplace=inplace)
        assert torch.equal(got, expected)
        assert torch.equal(masked_grad(g.clone(), w, mask, fixed=True, inplace=inplace), g * mask)
        assert masked_grad(g, w, mask, 0.0) is g  # STE: the gradient passes through untouched


def test_kernel_shares_torchs_openmp_runtime():
    """The compiled kernel must not load a second libgomp next to torch's (its thread pool would compete)."""
    import sys

    from nm_plugins.core.mask import mask_backend

    if mask_backend() != "kernel" or not sys.platform.startswith("linux"):
        pytest.skip("the compiled kernel is not built here")
    nm_mask(torch.randn(512, 512), "2:4")
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(runtimes) <= 1, runtimes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [(7, 7), (11, 11), (13, 13)])  # up to and past the compiled kernel's tile
@pytest.mark.parametrize("pattern", ["2:4", "2:8", "3:16"])
def test_large_kernels_match_the_reference(dtype, kernel, pattern):
    torch.manual_seed(0)
    p = NMPattern.parse(pattern)
    w = (torch.randint(-3, 4, (5, 2 * p.m) + kernel) / 3).to(dtype)  # ties included
    masked = torch.empty_like(w)
    mask = nm_mask(w, pattern, masked=masked)
    assert torch.equal(mask, reference_mask(w, pattern)) and torch.equal(masked, w * mask)


@pytest.mark.parametrize("kernel", [(), (1, 1), (1, 3), (2, 4), (3, 3), (1, 10), (4, 4), (5, 5), (7, 7)])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8", "2:8", "3:16"])
def test_every_kernel_path_matches_the_reference(kernel, pattern):
    """Each code path of the compiled kernel (per kernel size and M: vectorised rows, the last kernel position
    ranked for eight blocks at once, 1x1 groups transposed, the tiled fallback), at sizes that split over threads
    and leave blocks over: the reference mask, and the masked weight equal to w * mask down to signed zeros."""
    p = NMPattern.parse(pattern)
    gen = torch.Generator().manual_seed(len(kernel) * 31 + p.m)
    shape = (37, 5 * p.m) + kernel  # 37 * 5 blocks: not a multiple of 8
    w = (torch.randint(-4, 5, shape, generator=gen) / 4).to(torch.float32)  # ties and signed zeros included
    w[0, :, ...] = -0.0
    torch.set_num_threads(2)
    masked = torch.empty_like(w)
    mask = nm_mask(w, pattern, masked=masked)
    assert torch.equal(mask, reference_mask(w, pattern))
    expected = w * mask
    assert torch.equal(masked, expected) and torch.equal(masked.signbit(), expected.signbit())
    big = torch.randn((256, 16 * p.m) + kernel, generator=gen)  # several threads' share of work
    assert torch.equal(nm_mask(big, pattern), reference_mask(big, pattern))


@pytest.mark.parametrize("kernel", [(), (3, 3), (1, 8)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_anywhere_raises(kernel, bad):
    """NaN/inf at the first, a middle and the last kernel position of a block, in the eight-block groups and in
    the blocks left over, is reported."""
    shape = (9, 8) + kernel  # 18 blocks of 2:4: two groups of eight and two left over
    last = tuple(s - 1 for s in kernel)
    for where in [(0, 0) + (0,) * len(kernel), (3, 5) + last, (8, 7) + last, (8, 6) + tuple(s // 2 for s in kernel)]:
        w = torch.randn(shape)
        w[where] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            nm_mask(w, "2:4")

import pytest

from nm_plugins import NMPattern


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8), (" 2 : 8 ", 2, 8), ("16:32", 16, 32)])
def test_parse_roundtrip(text, n, m):
    p = NMPattern.parse(text)
    assert p == NMPattern(n=n, m=m)
    assert str(p) == f"{n}:{m}"
    assert p.density == n / m
    assert NMPattern.parse(p) is p


@pytest.mark.parametrize("text,compatible", [
    ("2:4", True), ("1:4", True), ("2:8", True), ("1:2", True), ("1:8", True), ("2:16", True),
    ("4:8", False), ("3:8", False), ("3:4", False), ("4:4", False), ("2:2", False), ("1:1", False), ("3:16", False),
])
def test_tensor_core_compatible(text, compatible):
    assert NMPattern.parse(text).tensor_core_compatible is compatible


def _every_mask_is_2_4(n, m):
    """Brute force: enumerate every N:M mask over a span where both groupings align; check each group of 4."""
    import itertools
    import math
    span = m * 4 // math.gcd(m, 4)
    choices = list(itertools.combinations(range(m), n))
    for picks in itertools.product(choices, repeat=span // m):
        mask = [0] * span
        for g, keep in enumerate(picks):
            for i in keep:
                mask[g * m + i] = 1
        if any(sum(mask[k:k + 4]) > 2 for k in range(0, span, 4)):
            return False
    return True


@pytest.mark.parametrize("n,m", [(n, m) for m in (1, 2, 3, 4, 5, 6, 8) for n in range(1, m + 1)])
def test_tensor_core_compatible_matches_brute_force(n, m):
    assert NMPattern(n, m).tensor_core_compatible == _every_mask_is_2_4(n, m)


@pytest.mark.parametrize("bad", ["4:2", "0:4", "2:0", "a:b", "2-4", "", "2:4:8", "-1:4", "2.0:4"])
def test_bad_strings_raise_with_input_and_form(bad):
    with pytest.raises(ValueError) as err:
        NMPattern.parse(bad)
    assert repr(bad) in str(err.value)
    assert "N:M" in str(err.value)


def test_non_string_raises():
    with pytest.raises(ValueError, match="2:4"):
        NMPattern.parse(24)

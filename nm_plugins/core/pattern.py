"""The N:M sparsity pattern: keep N weights in every group of M."""
from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class NMPattern:
    """An N:M pattern: in every group of ``m`` consecutive weights exactly ``n`` are kept."""

    n: int
    m: int

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise ValueError(f"N:M pattern needs integers, got n={self.n!r}, m={self.m!r}")
        if not (0 < self.n <= self.m):
            raise ValueError(f"N:M pattern '{self.n}:{self.m}' is invalid: expected 0 < N <= M")

    @classmethod
    def parse(cls, value: "str | NMPattern") -> "NMPattern":
        """Parse ``"N:M"`` (e.g. ``"2:4"``) into an :class:`NMPattern`; an NMPattern is returned as is."""
        if isinstance(value, NMPattern):
            return value
        if not isinstance(value, str):
            raise ValueError(f"N:M pattern must be a string like '2:4', got {value!r}")
        match = _PATTERN_RE.match(value)
        if match is None:
            raise ValueError(f"invalid N:M pattern {value!r}: expected the form 'N:M' with integers 0 < N <= M, e.g. '2:4'")
        n, m = int(match.group(1)), int(match.group(2))
        if not (0 < n <= m):
            raise ValueError(f"invalid N:M pattern {value!r}: expected the form 'N:M' with integers 0 < N <= M, e.g. '2:4'")
        return cls(n, m)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        """Fraction of weights kept (N/M)."""
        return self.n / self.m

    @property
    def tensor_core_compatible(self) -> bool:
        """True when every mask of this pattern is also a valid 2:4 mask (sparse tensor cores accept it).

        Each aligned group of 4 must hold at most 2 kept weights whatever the N:M mask chooses. Groups of M
        split into M/4 groups of 4 when 4 divides M, and an N:M group can put all N kept weights into one
        group of 4, so that needs N <= 2. When M divides 4 (M = 1, 2, 4), each group of 4 holds 4/M
        groups of M, so it needs N * 4/M <= 2.
        """
        if self.m % 4 == 0:
            return self.n <= 2
        if 4 % self.m == 0:
            return self.n * (4 // self.m) <= 2
        return False

"""The N:M sparsity pattern: keep N weights in every group of M."""
from __future__ import annotations

import math
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
        if isinstance(value, int) and not isinstance(value, bool) and value >= 60:
            n, m = divmod(value, 60)
            raise ValueError(f"N:M pattern must be a string like '2:4', got the integer {value}: a YAML 1.1 reader "
                             f"(yaml.safe_load) reads {n}:{m} as the base-60 number {value}; quote it ('{n}:{m}') "
                             f"or read the YAML with nm_plugins.runtime.config.load_yaml")
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
        """True when every mask of this pattern is also a valid 2:4 mask (sparse tensor cores accept it):
        no aligned group of 4 weights can hold more than 2 kept ones, wherever the N:M mask puts them.
        2:4, 1:4, 2:8 and 1:2 are; 4:8 and 3:8 are not.
        """
        span = self.m * 4 // math.gcd(self.m, 4)  # both groupings repeat with this period
        worst = 0
        for start in range(0, span, 4):
            # each group of M can put min(N, overlap) of its kept weights into this group of 4
            kept = sum(min(self.n, max(0, min(g + self.m, start + 4) - max(g, start))) for g in range(0, span, self.m))
            worst = max(worst, kept)
        return worst <= 2

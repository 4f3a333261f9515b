"""Where the project's data files are: the folder holding ``configs/`` and ``ci/thresholds/``.

The package (a wheel or a checkout) carries code only; the reproductions read their configs and thresholds from
the project folder: ``$NM_SPARSITY_ROOT`` when set, else the checkout the package is imported from, else the
current directory. The reproduce entry points are set up by environment variables (``SMOKE``, ``RESULTS_DIR``, ...),
so the project folder is one too; their ``--help`` says so.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "NM_SPARSITY_ROOT"
MARKERS = ("configs", "ci/thresholds")
_CHECKOUT = Path(__file__).resolve().parents[2]


def _is_project(path: Path) -> bool:
    return all((path / m).is_dir() for m in MARKERS)


def project_root() -> Path:
    """``$NM_SPARSITY_ROOT``, else the checkout holding this package (it has configs/ and ci/thresholds/),
    else the current directory."""
    if os.environ.get(ENV, "").strip():
        return Path(os.environ[ENV].strip()).resolve()
    return _CHECKOUT if _is_project(_CHECKOUT) else Path.cwd()


def require_project(root: "Path | None" = None) -> Path:
    """The project root, or FileNotFoundError naming the missing folder and how to point at a checkout."""
    root = project_root() if root is None else Path(root)
    for marker in MARKERS:
        if not (root / marker).is_dir():
            raise FileNotFoundError(
                f"{root / marker} does not exist: the reproductions read configs/ and ci/thresholds/ from the "
                f"nm-sparsity project folder; set {ENV}=DIR naming a checkout of the project")
    return root


def project_path(*parts: str) -> Path:
    """``project_root()/parts``; relative when the root is the current directory (recorded paths stay short)."""
    root = project_root()
    return Path(*parts) if root == Path.cwd().resolve() else root.joinpath(*parts)

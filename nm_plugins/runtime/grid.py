"""Resumable reproduction grids: every run of a grid goes through :func:`run_or_reuse`, so that running a killed
grid again reuses the runs that finished, resumes the interrupted one from its last checkpoint, and ends with the
results of an uninterrupted grid.

A run is identified by its *key*: its resolved configuration, the code version (:func:`code_version`) and the
torch version. ``<run_dir>/grid_run.json`` holds the key and the summary of a finished run; ``grid_key.json`` the
key of a started one. A run is reused when ``grid_run.json`` holds its key; resumed (its trainer's checkpoint
loaded) when ``grid_key.json`` holds its key and the checkpoint exists; trained from the start otherwise (after
removing a checkpoint left by another key). Both files are written atomically (:mod:`.results`).

``GRID_ONLY`` (comma-separated shell patterns of run names, e.g. ``dense_s0,srste_2_4_*``) runs a subset of a grid.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from nm_plugins.runtime.results import write_json

PACKAGE = Path(__file__).resolve().parents[1]
# Files that choose rows and write tables but compute no number of a run: editing them keeps finished runs.
NOT_RUN_CODE = {"reproduce.py", "report.py"}
NOT_RUN_PACKAGES = {"report", "verdicts", "methods_harness"}  # methods_harness: picks rows, reads masks, times steps


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A hash of the package code that computes a run's numbers: every .py/.c file of ``nm_plugins`` except the
    report, the verdicts and the grids' own reproduce.py / report.py (which only pick rows and write tables)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        rel = path.relative_to(PACKAGE)
        if path.suffix not in (".py", ".c") or rel.parts[0] in NOT_RUN_PACKAGES or path.name in NOT_RUN_CODE \
                or "__pycache__" in rel.parts:
            continue
        h.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def run_key(config) -> dict:
    """The key of one run: its resolved configuration (as JSON would store it), the code version and torch's."""
    import torch
    return json.loads(json.dumps({"config": config, "code": code_version(), "torch": torch.__version__},
                                 sort_keys=True, default=str))


def _read(path: Path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_or_reuse(run_dir: "str | Path", label: str, config, train: Callable[[bool], dict],
                 checkpoint: "str | Path | None" = None) -> dict:
    """The summary of one grid run: the stored one when ``run_dir`` finished this run (same key) before; else
    ``train(resume)`` with ``resume`` True when an interrupted run of the same key left ``checkpoint`` (None: the
    trainer cannot resume bit-identically, the run starts again), then stored. Prints what it reuses and runs."""
    run_dir = Path(run_dir)
    key = run_key(config)
    done = _read(run_dir / "grid_run.json")
    if done is not None and done.get("key") == key and isinstance(done.get("summary"), dict):
        print(f"grid: {label}: reused (finished before: {run_dir / 'grid_run.json'})", flush=True)
        return done["summary"]
    started = _read(run_dir / "grid_key.json")
    ckpt = Path(checkpoint) if checkpoint is not None else None
    resume = bool(started is not None and started.get("key") == key and ckpt is not None and ckpt.is_file())
    if resume:
        print(f"grid: {label}: resumed from {ckpt}", flush=True)
    else:
        same = started is not None and started.get("key") == key
        why = ("interrupted before its first checkpoint" if ckpt is not None else
               "interrupted; this trainer starts again rather than resume into different numbers") if same else \
            "a different configuration or code version ran here before" if done is not None or started is not None \
            else "not run before"
        print(f"grid: {label}: run ({why})", flush=True)
        (run_dir / "grid_run.json").unlink(missing_ok=True)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        write_json(run_dir / "grid_key.json", {"key": key})
    summary = train(resume)
    write_json(run_dir / "grid_run.json", {"key": key, "summary": summary}, ensure_ascii=True)
    return summary


def only(names: list, env=None) -> "list | None":
    """The run names that ``GRID_ONLY`` selects (in grid order), None when it is unset; SystemExit naming an unknown
    pattern and the grid's run names."""
    env = os.environ if env is None else env
    patterns = [p.strip() for p in env.get("GRID_ONLY", "").split(",") if p.strip()]
    if not patterns:
        return None
    unknown = [p for p in patterns if not fnmatch.filter(names, p)]
    if unknown:
        raise SystemExit(f"GRID_ONLY: {unknown} match no run of this grid; its runs: {', '.join(names)}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

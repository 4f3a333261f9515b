"""Resumable grids (issue 24): every proxy grid's SMOKE version, killed with SIGKILL at a random moment and run
again, ends with the results of an uninterrupted grid (per-seed values and mask digests equal), reusing what
finished and resuming what was interrupted (nm_plugins.runtime.grid). Two runs per grid keep each test short."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nm_plugins.runtime import grid as G

REPO = Path(__file__).resolve().parents[1]

# grid -> (entry point, environment selecting two runs of its SMOKE grid)
GRIDS = {
    "imagenet-proxy": (["nm_plugins.train.reproduce"], {"GRID_ONLY": "dense_s0,asp_2_4_s0"}),
    "coco-det-proxy": (["nm_plugins.mmdet.reproduce", "det"], {"COCO_ROWS": "dense,srste_2:4"}),
    "raft-proxy": (["nm_plugins.raft.reproduce"], {"RAFT_ROWS": "dense,srste_2:4"}),
    "translation-proxy": (["nm_plugins.translation.reproduce"], {"GRID_ONLY": "dense_s0,srste_2_4_s0", "PROXY_WORKERS": "1"}),
}


def _start(grid: str, root: Path, log: Path) -> subprocess.Popen:
    module, extra = GRIDS[grid]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SMOKE": "1", "RUNS_DIR": str(root / "runs"),
           "RESULTS_DIR": str(root / "results"), "WORK_DIRS": str(root / "work_dirs"), "OMP_NUM_THREADS": "1", **extra}
    root.mkdir(parents=True, exist_ok=True)
    # RAFT's run folders are relative to the working directory: give every grid its own; the mmdet configs are
    # relative to the checkout, which they share read-only.
    cwd = REPO if grid == "coco-det-proxy" else root
    return subprocess.Popen([sys.executable, "-m", *module], cwd=cwd, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return log.read_text()


def _digests(obj) -> list:
    """Every ``masks_sha`` in a results.json, in file order."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "masks_sha"] + [d for k, v in obj.items() if k != "masks_sha"
                                                                  for d in _digests(v)]
    if isinstance(obj, list):
        return [d for v in obj for d in _digests(v)]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_grid_killed_and_run_again_equals_an_uninterrupted_grid(tmp_path, grid):
    t0 = time.time()
    _finish(_start(grid, tmp_path / "whole", tmp_path / "whole.log"), tmp_path / "whole.log")
    whole_s = time.time() - t0
    reference = json.loads((tmp_path / "whole" / "results" / "results.json").read_text())

    kill_at = random.uniform(0.2, 0.8) * whole_s
    for attempt in range(4):  # a machine less busy than during the first grid may finish before the kill: earlier
        killed = tmp_path / f"killed{attempt}"
        proc = _start(grid, killed, tmp_path / "killed.log")
        try:
            proc.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the grid and any worker process it started
            proc.wait()
            break
        kill_at /= 2
    assert proc.returncode == -signal.SIGKILL, "the grid always finished before the kill"
    print(f"{grid}: uninterrupted grid {whole_s:.0f} s; killed after {kill_at:.1f} s")
    out = _finish(_start(grid, killed, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    print("\n".join("grid: " + line.split("grid: ", 1)[1] for line in out.splitlines() if "grid: " in line))
    again = json.loads((killed / "results" / "results.json").read_text())
    assert again["per_seed"] == reference["per_seed"]
    assert _digests(again) and _digests(again) == _digests(reference)
    assert out.count("grid: ") >= 2  # what it reused, resumed and ran is printed


def test_run_or_reuse_reuses_resumes_and_restarts(tmp_path, capsys):
    """The decision on its own: same key and a summary -> reused; same key, no summary, a checkpoint -> resumed;
    another configuration -> trained from the start with the other configuration's checkpoint removed."""
    calls = []

    def train(resume):
        calls.append(resume)
        (tmp_path / "ckpt").write_text("state")
        return {"value": len(calls)}
    assert G.run_or_reuse(tmp_path, "a", {"lr": 1}, train, tmp_path / "ckpt") == {"value": 1}
    assert G.run_or_reuse(tmp_path, "a", {"lr": 1}, train, tmp_path / "ckpt") == {"value": 1} and calls == [False]
    (tmp_path / "grid_run.json").unlink()  # killed after its last checkpoint, before the summary
    assert G.run_or_reuse(tmp_path, "a", {"lr": 1}, train, tmp_path / "ckpt") == {"value": 2} and calls == [False, True]
    seen = []
    G.run_or_reuse(tmp_path, "a", {"lr": 2}, lambda resume: seen.append((resume, (tmp_path / "ckpt").exists())) or {},
                   tmp_path / "ckpt")
    assert seen == [(False, False)]
    out = capsys.readouterr().out
    assert "a: reused" in out and "a: resumed from" in out and "different configuration" in out


def test_grid_only_selects_runs():
    names = ["dense_s0", "srste_2_4_s0", "dense_s1"]
    assert G.only(names, {}) is None
    assert G.only(names, {"GRID_ONLY": "dense_*"}) == ["dense_s0", "dense_s1"]
    with pytest.raises(SystemExit, match="nothing_s9"):
        G.only(names, {"GRID_ONLY": "nothing_s9"})

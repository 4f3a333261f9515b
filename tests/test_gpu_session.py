"""The lent-GPU session (benchmarks/gpu_session.sh): its plan fits 8 minutes in order of value, every part's
command line is one its script accepts, a part over budget is stopped, and the first part (Triton vs CPU
equality on the trainers' layer shapes) runs on the CPU under Triton's interpreter."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_equality, gpu_session, gpu_smoke, throughput

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_shows_the_parts_in_order_within_8_minutes(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OUT=str(tmp_path / "s")), timeout=120)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^(\d+)\. (\w+)\s+(\d+) s", out.stdout, re.M)
    assert [name for _, name, _ in rows] == ["env", "equality", "smoke", "throughput"]
    budgets = [int(b) for _, _, b in rows]
    assert all(b > 0 for b in budgets) and sum(budgets) <= 480
    assert f"total {sum(budgets)} s of 480 s" in out.stdout
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


def test_every_part_command_line_is_accepted(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    parts = {name: cmd for name, _, cmd in gpu_session.plan("OUT")}
    for name, module in (("equality", gpu_equality), ("smoke", gpu_smoke)):
        args = parts[name][3:]
        assert parts[name][2] == module.__name__
        assert module.main(args) == 0  # no CUDA here: each parses its arguments, then says it skips
    assert parts["throughput"][2] == "benchmarks.throughput"
    args = throughput.parse_args(parts["throughput"][3:])
    assert args.sections == "train,infer" and args.models == "resnet50" and args.budget_s < 135
    assert "Skipped" in capsys.readouterr().out


def test_a_part_over_budget_is_stopped(tmp_path):
    t0 = time.time()
    result = gpu_session.run_part("sleeper", 1, [sys.executable, "-c", "import time; print('started', flush=True); "
                                                 "time.sleep(60)"], tmp_path)
    assert result["exit"] == "timeout" and time.time() - t0 < 20
    assert "started" in (tmp_path / "sleeper.log").read_text()


@pytest.mark.slow
def test_equality_part_runs_under_the_triton_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_equality", "--tiny", "--out", str(tmp_path)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads((tmp_path / "interpret.json").read_text())
    assert record["interpret"] and record["failed"] == 0 and record["skipped"] == 0
    assert set(record["models"]) == {"resnet", "mmdet", "raft", "translation"}
    for model, r in record["models"].items():
        assert r["cases"] > 0 and r["shapes"], model
    assert any(len(s) == 4 for m in record["models"].values() for s, _ in m["shapes"])  # convs: channels_last too
    assert record["cases"] == sum(len(gpu_equality.cases(m["shapes"])) for m in record["models"].values())


def test_equality_case_names_a_path_that_is_not_triton(monkeypatch):
    """The comparison fails when the device path is not the Triton kernel (here: no interpreter, so the C kernel)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    result = gpu_equality.run_case([4, 8, 3, 3], "2:4", "fp32", False, "cpu", interpret=False)
    assert not result["ok"] and "device path took" in result["problems"][0]

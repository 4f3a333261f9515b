"""Results files (issues 19 and 24): one atomic writer with provenance, a report that renders around an unreadable
results file, and a threshold check that names an unreadable file in one line instead of a traceback."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nm_plugins.report import build_report
from nm_plugins.report.__main__ import main as report_main
from nm_plugins.report.collect import NOT_RECORDED, environment
from nm_plugins.runtime import results as R

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


# ------------------------------------------------------------------------------------------------- writer
def test_writes_replace_the_file_instead_of_rewriting_it(tmp_path):
    """A reader holding the old file (here: a hard link to it) keeps the whole old content: the new content went to
    a temporary file renamed over the target, never into the old file (an in-place write truncates it first)."""
    target = tmp_path / "results.json"
    target.write_text('{"old": 1}\n')
    os.link(target, tmp_path / "reader_view")
    R.write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"new": 2}
    assert (tmp_path / "reader_view").read_text() == '{"old": 1}\n'
    R.write_text(tmp_path / "results.md", "table\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    for name in ("plot.png", "plot.svg"):
        R.save_figure(fig, tmp_path / name)
    plt.close(fig)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "plot.svg").read_bytes()[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "plot.svg", "reader_view", "results.json",
                                                          "results.md"], "a temporary file was left behind"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    R.write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        R.write_json(target, {"a": object()}, default=None)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_results_json_carries_provenance(tmp_path):
    """What the classification grids write (train/report.write_results) records commit, dirty flag, date, command,
    machine, torch and CUDA; the report shows them."""
    import torch

    from nm_plugins.train.report import aggregate, write_results
    summary = {"method": "srste", "pattern": "2:4", "model": "m", "seed": 0, "top1": 80.0, "top5": 99.0, "sad_final": 0.1,
               "sad_curve": [0.1], "params": 1e6, "flops": 1e9, "seconds": 1.0}
    paths = write_results(aggregate([summary], "t"), tmp_path)
    prov = json.loads(paths["json"].read_text())["provenance"]
    assert prov["commit"] == _git("rev-parse", "HEAD")
    assert prov["dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no"))
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(prov["date"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
    assert "python " in prov["command"] and prov["machine"]["cpu_cores"] == os.cpu_count()
    assert prov["torch"] == torch.__version__ and prov["cuda"] == (torch.version.cuda or "none (CPU build of torch)")
    env = dict(environment(json.loads(paths["json"].read_text())))
    assert env["commit"].startswith(prov["commit"]) and ("uncommitted" in env["commit"]) == prov["dirty"]
    assert env["date"] == prov["date"] and env["command"] == prov["command"] and env["torch"] == torch.__version__
    assert prov["machine"]["host"] in env["machine"]


def test_provenance_outside_a_checkout(tmp_path):
    assert R.git_state(tmp_path) == {"commit": R.NOT_A_CHECKOUT, "dirty": None}
    sub = tmp_path / "sub"
    sub.mkdir()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert R.git_state(sub)["commit"] == R.NOT_A_CHECKOUT  # inside someone else's checkout: not ours either


def test_old_results_show_not_recorded():
    """A results.json written before the provenance stamp still renders, with 'not recorded' for what it lacks."""
    env = dict(environment({"metrics": {}}))
    assert env["commit"] == env["date"] == env["command"] == NOT_RECORDED


# ------------------------------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def broken_results(tmp_path_factory):
    """A copy of the committed results with raft-proxy/results.json truncated and one benchmark file of the wrong
    shape (as a crash mid-write or a bad edit would leave them)."""
    dst = tmp_path_factory.mktemp("broken") / "results"
    shutil.copytree(RESULTS, dst, ignore=shutil.ignore_patterns("index.html", "report_top.png"))
    raft = dst / "raft-proxy" / "results.json"
    raft.write_bytes(raft.read_bytes()[:700])
    (dst / "loader" / "cpu.json").write_text('{"env": 3, "runs": "x", "metrics": [1, 2]}\n')
    return dst


def test_report_renders_around_an_unreadable_results_file(broken_results, capsys):
    out = broken_results / "index.html"
    status = report_main(["--results", str(broken_results), "--out", str(out)])
    assert status == 1
    html = out.read_text()
    err = capsys.readouterr().err
    assert "raft-proxy/results.json is not valid JSON" in err and "loader/cpu.json" in err
    assert 'id="raft-proxy" data-status="unreadable"' in html
    assert 'id="loader-cpu" data-status="unreadable"' in html
    assert "raft-proxy/results.json is not valid JSON" in html
    # every other section is rendered as usual
    assert 'id="imagenet-proxy" data-status="ok"' in html and 'id="translation-proxy" data-status="ok"' in html
    assert 'id="coco-det-proxy" data-status="ok"' in html


def test_report_marks_nan_and_wrong_types(tmp_path):
    dst = tmp_path / "results"
    shutil.copytree(RESULTS / "imagenet-proxy", dst / "imagenet-proxy")
    shutil.copytree(RESULTS / "translation-proxy", dst / "translation-proxy")
    (dst / "imagenet-proxy" / "results.json").write_text('{"metrics": {"dense/top1_mean": NaN}}')
    (dst / "translation-proxy" / "results.json").write_text('{"rows": 5, "metrics": {}}')
    problems: list = []
    html = build_report(dst, tmp_path / "index.html", problems=problems).read_text()
    assert len(problems) == 2 and "NaN" in problems[0] and "translation-proxy/results.json" in problems[1]
    assert html.count('data-status="unreadable"') == 2


# ------------------------------------------------------------------------------------------------- check
def _check(*args):
    return subprocess.run([sys.executable, "-m", "ci.check", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_check_names_an_unreadable_results_file_in_one_line(broken_results):
    run = _check(broken_results / "raft-proxy" / "results.json", REPO / "ci" / "thresholds" / "raft_proxy.yaml")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "raft-proxy/results.json is not valid JSON" in lines[0], run.stderr


@pytest.mark.parametrize("text, says", [('{"metrics": {"a": NaN}}', "NaN"), ('{"metrics": [1]}', "not an object"),
                                        ('{"metrics": {"a": "high"}}', "not a number"), ("[1, 2]", "not an object")])
def test_check_names_an_invalid_results_file(tmp_path, text, says):
    bad = tmp_path / "results.json"
    bad.write_text(text)
    run = _check(bad, REPO / "ci" / "thresholds" / "raft_proxy.yaml")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and says in run.stderr and str(bad) in run.stderr


@pytest.mark.parametrize("text", ["checks: [\n  {metric: a", "- just\n- a list\n", "checks: {metric: a}\n"])
def test_check_names_an_unreadable_thresholds_file(tmp_path, text):
    bad = tmp_path / "thresholds.yaml"
    bad.write_text(text)
    run = _check(RESULTS / "raft-proxy" / "results.json", bad)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and str(bad) in run.stderr, run.stderr


def test_command_records_the_settings_read_from_the_environment():
    line = R.command_line(["x.py", "--flag"], {"SMOKE": "1", "COCO_ROWS": "dense,srste_2:4", "PYENV_ROOT": "/p", "HOME": "/h"})
    assert line.startswith("COCO_ROWS=dense,srste_2:4 SMOKE=1 python ") and line.endswith(" --flag")
    assert "PYENV_ROOT" not in line and "HOME" not in line

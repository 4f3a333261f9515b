"""The package works outside its checkout: a wheel built from the sources, installed (not editable) into a fresh
venv and run from a folder that is not a checkout answers every reproduce entry's ``--help``, imports every
module, renders the report and runs the threshold check.

The fresh venv sees the heavy dependencies (torch, timm, mmdet, ...) through a .pth line naming the test
interpreter's site-packages; the project itself is never on that path as a package (its editable-install hook is
a .pth file there, which a .pth line does not run), and the test proves ``nm_plugins`` comes from the fresh venv.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPRODUCE = ["nm_plugins.train.reproduce", "nm_plugins.mmdet.reproduce", "nm_plugins.raft.reproduce",
             "nm_plugins.translation.reproduce"]
ADAPTERS = ["nm_plugins.core", "nm_plugins.timm", "nm_plugins.mmdet", "nm_plugins.raft", "nm_plugins.translation",
            "nm_plugins.train", "nm_plugins.report", "nm_plugins.verdicts", "nm_plugins.runtime", "nm_plugins.data"]
CHECK = ("results/translation-proxy/results.json", "ci/thresholds/translation_proxy.yaml")

# every module of every adapter imported in one process; the list of names is printed for the test to compare
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import nm_plugins
names = []
for pkg in sys.argv[1:]:
    mod = importlib.import_module(pkg)
    names.append(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        if info.name.endswith("__main__") or info.name.endswith("_nm_mask_kernel"):  # the kernel is a ctypes library
            continue
        importlib.import_module(info.name)
        names.append(info.name)
leaks = sorted(m for m in sys.modules if m.split(".")[0] in ("ci", "benchmarks", "tests"))
from nm_plugins.core import mask
print(json.dumps({"file": nm_plugins.__file__, "names": names, "leaks": leaks, "kernel": mask._KERNEL is not None}))
"""

# every reproduce entry run as ``python -m MODULE --help`` does (runpy), in one process: {module: (status, out, err)}
ENTRIES = """
import contextlib, io, json, runpy, sys
got = {}
for module, args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
    got[" ".join([module, *args])] = [status, out.getvalue(), err.getvalue()]
print(json.dumps(got))
"""


def _run(cmd, cwd, env, timeout=120):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return out


def _build_wheel(tmp: Path) -> Path:
    """A wheel of a copy of the sources (no compiled kernel, no caches: the build makes its own)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "nm_plugins", src / "nm_plugins",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info"))
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
                str(src)], tmp, dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wheels = list((tmp / "dist").glob("nm_sparsity-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and the test interpreter's site-packages visible through a .pth line."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    shared = Path(sysconfig.get_paths()["purelib"]).resolve()
    (site / "shared_dependencies.pth").write_text(f"{shared}\n")
    out = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                str(wheel)], tmp, dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return python


@pytest.mark.slow
def test_wheel_works_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    python = _fresh_venv(tmp_path, wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NM_SPARSITY_ROOT", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"

    # every module of every adapter imports, from the fresh venv, without the checkout's top-level folders
    out = _run([str(python), "-c", IMPORT_ALL, *ADAPTERS], outside, env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(python.parent.parent.resolve()), got["file"]
    assert got["leaks"] == []
    assert got["kernel"]  # the wheel built and ships the C mask kernel
    assert {"nm_plugins.verdicts.claims", "nm_plugins.runtime.project", "nm_plugins.train.reproduce",
            "nm_plugins.mmdet.reproduce", "nm_plugins.raft.reproduce", "nm_plugins.translation.reproduce",
            "nm_plugins.report.build"} <= set(got["names"])
    assert (Path(got["file"]).parent / "report" / "templates").is_dir()  # package data shipped
    assert _run([str(python), "-c", "import ci"], outside, env).returncode != 0  # the checkout is not visible

    # every reproduce entry answers --help; without a project folder it stops with the path and the variable
    runs = [(m, ["--help"]) for m in REPRODUCE] + [("nm_plugins.raft.reproduce", [])]
    out = _run([str(python), "-c", ENTRIES, json.dumps(runs)], outside, env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for module in REPRODUCE:
        status, text, err = got[f"{module} --help"]
        assert status == 0 and "usage:" in text and "NM_SPARSITY_ROOT" in text, module + text[-500:] + err[-2000:]
    status, text, err = got["nm_plugins.raft.reproduce"]
    assert status == 2 and str(outside / "configs") in err and "NM_SPARSITY_ROOT" in err, text[-1000:] + err[-2000:]

    # the report on a copy of a results folder
    results = outside / "results"
    shutil.copytree(REPO / "results" / "translation-proxy", results / "translation-proxy")
    shutil.copytree(REPO / "results" / "raft-proxy", results / "raft-proxy")
    out = _run([str(python), "-m", "nm_plugins.report", "--results", str(results), "--thresholds",
                str(REPO / "ci" / "thresholds"), "--reference", str(REPO / "ci" / "reference" / "paper_tables.yaml")],
               outside, env)
    assert out.returncode == 0, out.stderr[-3000:]
    page = (results / "index.html").read_text()
    assert "translation-proxy" in page and "raft-proxy" in page

    # the threshold check gives the installed package the same verdict as the checkout
    args = ["-m", "nm_plugins.verdicts.check", str(REPO / CHECK[0]), str(REPO / CHECK[1])]
    installed = _run([str(python), *args], outside, env)
    here = _run([sys.executable, *args], REPO, {**env, "PYTHONPATH": str(REPO)})
    assert installed.returncode == here.returncode and installed.returncode in (0, 1), installed.stderr[-2000:]
    assert installed.stdout == here.stdout and "Threshold check" in installed.stdout

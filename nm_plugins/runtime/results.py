"""The one writer of results files (results.json / .md, plots, per-run summaries) for every reproduction and
benchmark: each file is written to a temporary file in its own folder and renamed over the target, so a crash or a
full disk leaves the old file or the new one, never half of one. Every results.json gets a ``provenance`` record:
git commit and dirty flag of the checkout the code runs from, UTC date, command line, machine, torch/CUDA."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

NOT_A_CHECKOUT = "not a git checkout"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding nm_plugins


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_bytes(path: "str | Path", data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: "str | Path", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def append_text(path: "str | Path", text: str) -> Path:
    """Rewrite ``path`` atomically with ``text`` appended to what it holds (a missing file counts as empty)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    return write_text(path, old + text)


def write_json(path: "str | Path", obj, indent: int = 1, **dumps_kwargs) -> Path:
    """``obj`` as JSON (non-ASCII kept, numpy-like numbers as floats), written atomically; returns the path."""
    dumps_kwargs.setdefault("ensure_ascii", False)
    dumps_kwargs.setdefault("default", float)
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


def write_results_json(path: "str | Path", results: dict, indent: int = 1, **dumps_kwargs) -> Path:
    """A results.json: ``results`` stamped with :func:`provenance` (kept when it already has one, e.g. a result
    re-finished from its file), written atomically; returns the path."""
    if not isinstance(results.get("provenance"), dict):
        results["provenance"] = provenance()
    return write_json(path, results, indent=indent, **dumps_kwargs)


def save_figure(fig, path: "str | Path", **savefig_kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically (the format from the file's suffix); returns the path."""
    import io
    path = Path(path)
    buf = io.BytesIO()
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    fig.savefig(buf, **savefig_kwargs)
    return write_bytes(path, buf.getvalue())


def read_json(path: "str | Path", nonfinite_under: tuple = ("per_seed",)) -> dict:
    """The JSON object in ``path``; ValueError naming the file and what is wrong (missing, truncated or invalid
    JSON, not an object, NaN/Infinity outside the top-level keys ``nonfinite_under``: per-seed values may hold a
    diverged run's NaN, which the claim rules judge "invalid" naming the run)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        cut = "truncated? " if e.pos >= len(text.rstrip()) else ""
        raise ValueError(f"{path} is not valid JSON ({cut}{e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    for key, value in data.items():
        where = None if key in nonfinite_under else _nonfinite_at(value, key)
        if where is not None:
            raise ValueError(f"{path} holds {where[1]} at {where[0]}, which is not JSON")
    return data


def _nonfinite_at(value, where: str):
    """(path, 'NaN'/'Infinity'/'-Infinity') of the first non-finite float inside ``value``; None if there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _nonfinite_at(v, f"{where}/{k}")
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------- provenance
def git_state(root: "str | Path" = PACKAGE_ROOT) -> dict:
    """{"commit": HEAD's hash, "dirty": whether tracked files differ from it} of the checkout ``root`` belongs to;
    {"commit": "not a git checkout", "dirty": None} outside a checkout or without git."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "--verify", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        if head.returncode != 0 or top.returncode != 0 or Path(top.stdout.strip()).resolve() != Path(root).resolve():
            return {"commit": NOT_A_CHECKOUT, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": NOT_A_CHECKOUT, "dirty": None}


def machine_info() -> dict:
    """Where the numbers were measured: host, CPU, core count, python, torch version, OS, GPU if any."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"host": platform.node(), "cpu": cpu, "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "os": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# the environment variables the reproductions and benchmarks read (recorded with the command line)
SETTINGS = re.compile(r"^(SMOKE|GRID_ONLY|RESULTS_DIR|RUNS_DIR|WORK_DIRS|PROXY_WORKERS|NPROC_PER_NODE|NNODES|"
                      r"THROUGHPUT_BUDGET_S|(IMAGENET|COCO|WMT|CHAIRS|THINGS|SINTEL|KITTI|RAFT)_[A-Z_]+)$")


def command_line(argv: "list | None" = None, env=None) -> str:
    """This process's command line as a shell would take it, with the settings it read from the environment:
    ``SMOKE=1 python -m MODULE ARGS`` when run with ``-m``."""
    argv = list(sys.argv if argv is None else argv)
    env = os.environ if env is None else env
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name != "__main__" else ["python", *argv[:1]]
    settings = [f"{k}={shlex.quote(env[k])}" for k in sorted(env) if SETTINGS.match(k)]
    return " ".join(settings + [shlex.join(head + argv[1:])])


def provenance(argv: "list | None" = None) -> dict:
    """Where a result comes from: commit + dirty flag, UTC date, command line, machine, torch and CUDA versions."""
    import torch
    return {**git_state(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(argv), "cwd": os.getcwd(), "machine": machine_info(), "torch": torch.__version__,
            "cuda": torch.version.cuda or "none (CPU build of torch)", "cuda_available": torch.cuda.is_available()}

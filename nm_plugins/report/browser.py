"""Headless Chromium (Debian's ``chromium``) for looking at the report as a browser renders it: the DOM after
rendering, and a screenshot. No network is needed: the page is a local file."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> "str | None":
    """The Chromium executable (``$CHROMIUM``, else /usr/bin/chromium and friends on PATH); None when there is none."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"] if shutil.which(os.environ["CHROMIUM"]) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(page: Path, extra: list, timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("report: no Chromium found (Debian: apt-get install chromium, or set CHROMIUM=/path)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--mute-audio",
               "--disable-extensions", "--disable-background-networking", "--disable-component-update",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *extra, Path(page).resolve().as_uri()]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.insert(2, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"report: chromium exited with {proc.returncode} on {page}: {proc.stderr[-2000:]}")
    return proc


def dump_dom(page: Path, timeout: float = 60) -> str:
    """The DOM of ``page`` after Chromium has parsed and rendered it (``--dump-dom``)."""
    return _run(page, ["--dump-dom"], timeout).stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1000, timeout: float = 60) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of ``page`` as Chromium draws it; returns ``png``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    _run(page, [f"--screenshot={png}", f"--window-size={width},{height}"], timeout)
    if not png.is_file():
        raise RuntimeError(f"report: chromium wrote no screenshot {png}")
    return png

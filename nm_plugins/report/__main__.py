"""``make report``: ``python -m nm_plugins.report [--results results] [--out results/index.html] [--screenshot PNG]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nm_plugins.report.build import DEFAULT_REFERENCE, build_report
from nm_plugins.report.collect import REPO


def main(argv=None) -> int:
    """Render the report; with ``--screenshot``, also a PNG of its top through headless Chromium (when installed)."""
    ap = argparse.ArgumentParser(description="Render the static HTML report of every experiment against the paper.")
    ap.add_argument("--results", type=Path, default=REPO / "results", help="the results folder (default results/)")
    ap.add_argument("--out", type=Path, default=None, help="the page to write (default RESULTS/index.html)")
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="the paper's reference numbers (YAML)")
    ap.add_argument("--thresholds", type=Path, default=REPO / "ci" / "thresholds", help="folder of thresholds YAMLs")
    ap.add_argument("--screenshot", type=Path, default=None, help="also write a PNG of the page's top (needs chromium)")
    args = ap.parse_args(argv)
    bad: list = []
    out = build_report(args.results, args.out, args.reference, args.thresholds, problems=bad)
    print(f"report: wrote {out} ({out.stat().st_size / 1024:.0f} kB)")
    for error in bad:
        print(f"report: unreadable results file, marked on the page: {error}", file=sys.stderr)
    if args.screenshot:
        from nm_plugins.report.browser import find_chromium, screenshot
        if find_chromium() is None:
            print("report: no chromium on this machine (Debian: apt-get install chromium): no screenshot taken",
                  file=sys.stderr)
        else:
            print(f"report: wrote {screenshot(out, args.screenshot)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

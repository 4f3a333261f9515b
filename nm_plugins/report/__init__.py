"""The static HTML report of every experiment against the paper (``make report``, ``python -m nm_plugins.report``).

Reads only committed files (results.json, PNGs, the thresholds YAMLs, ``ci/reference/paper_tables.yaml``) and
judges them with the code CI uses (``nm_plugins.verdicts``); imports no other adapter.
"""
from nm_plugins.report.build import build_report

__all__ = ["build_report"]

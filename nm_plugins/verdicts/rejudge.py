"""Judge a finished run's claims again with the current rules, without training: the stored ``claims`` of its
results.json, the claims and threshold-check sections of its results.md and its claims.png are rewritten from
its per-seed values and the thresholds file, then the check's exit status is returned.

Usage: python -m nm_plugins.verdicts.rejudge RESULTS_JSON THRESHOLDS_YAML
(the COCO reproductions have their own ``--from-results``, which redoes their tables too)."""
from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

from nm_plugins.runtime.config import load_yaml
from nm_plugins.verdicts import check, claims as claims_mod

HEADER = ("## Paper claims: paired differences over seeds (same seed = same init and data order), 95% t-interval, "
          "power at the smallest effect of interest, Holm-adjusted p")


def _indent(text: str) -> "int | None":
    second = text.split("\n", 2)[1] if "\n" in text else ""
    return len(second) - len(second.lstrip(" ")) or None


def replace_section(md: str, prefix: str, body: str) -> str:
    """``md`` with the section whose heading starts with ``prefix`` (up to the next ``## `` heading) replaced by
    ``body``; appended when there is none."""
    lines = md.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)
    if start is None:
        return md.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "\n".join(lines[end:])
    return "\n".join(lines[:start]) + "\n" + body.rstrip("\n") + "\n" + ("\n" + tail if tail else "")


def rejudge(results_path: Path, thresholds: Path) -> int:
    """Rewrite the stored claims, results.md sections and claims.png of ``results_path``; the check's status."""
    text = results_path.read_text()
    res = json.loads(text)
    spec = load_yaml(thresholds.read_text()) or {}
    rows = claims_mod.evaluate_claims(res.get("per_seed", {}) or {}, spec.get("claims", []) or [])
    res["claims"] = rows
    results_path.write_text(json.dumps(res, indent=_indent(text), ensure_ascii=False, default=float)
                            + ("\n" if text.endswith("\n") else ""))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = check.main([str(results_path), str(thresholds)])
    md_path = results_path.parent / "results.md"
    if md_path.is_file():
        md = md_path.read_text()
        if rows:
            md = replace_section(md, "## Paper claims", f"{HEADER} ({thresholds.as_posix()})\n\n"
                                 + claims_mod.markdown_claims(rows))
        if re.search(r"^## Threshold check", md, re.M):
            md = replace_section(md, "## Threshold check", f"## Threshold check (exit status {status})\n\n```\n"
                                 + out.getvalue().rstrip("\n") + "\n```")
        md_path.write_text(md)
    if any(r["mean"] is not None for r in rows) and (results_path.parent / "claims.png").is_file():
        claims_mod.plot_claims(rows, results_path.parent / "claims.png")
    print(out.getvalue(), end="")
    return status


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    paths = [Path(a) for a in argv]
    for p in paths:
        if not p.is_file():
            print(f"rejudge: {p} does not exist", file=sys.stderr)
            return 2
    return rejudge(*paths)


if __name__ == "__main__":
    sys.exit(main())

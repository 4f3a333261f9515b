"""Check a results.json against a thresholds YAML; print a table; exit 1 when a figure falls short.

Usage: python -m ci.check RESULTS_JSON THRESHOLDS_YAML

results.json holds a flat ``"metrics": {name: number}`` mapping (plus anything else). A thresholds file:

    name: imagenet_proxy
    description: what the numbers are and how they were obtained
    checks:
      - {metric: "srste_2:4/top1", min: 80.0}                      # absolute bounds (min and/or max)
      - {metric: "srste_2:4/top1", ge: "dense/top1", margin: -1.5}  # metric >= other + margin
      - {metric: "srste_2:4/sad", le: "ste_2:4/sad", margin: 0.0}   # metric <= other + margin
      - {metric: "x", min: 1.0, claim: "text shown in the table"}

A check names one of min/max/ge/le; ``margin`` (default 0) shifts the reference. A metric missing from
the results fails its check.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def evaluate(metrics: dict, checks: list) -> list:
    """One row per check: (description, value, requirement, passed)."""
    rows = []
    for check in checks:
        name = check["metric"]
        value = metrics.get(name)
        margin = float(check.get("margin", 0.0))
        if "min" in check or "max" in check:
            lo, hi = check.get("min"), check.get("max")
            need = " and ".join(s for s in ([f">= {lo}"] if lo is not None else []) + ([f"<= {hi}"] if hi is not None else []))
            ok = value is not None and (lo is None or value >= lo) and (hi is None or value <= hi)
        elif "ge" in check or "le" in check:
            op = "ge" if "ge" in check else "le"
            other = metrics.get(check[op])
            ref = None if other is None else other + margin
            sign = ">=" if op == "ge" else "<="
            need = f"{sign} {check[op]}{'' if margin == 0 else f' {margin:+g}'}" + ("" if ref is None else f" = {ref:.4g}")
            ok = value is not None and ref is not None and (value >= ref if op == "ge" else value <= ref)
        else:
            raise ValueError(f"check on {name!r} needs one of min, max, ge, le: {check}")
        rows.append((check.get("claim", name), value, need, bool(ok)))
    return rows


def format_table(rows: list) -> str:
    """A readable fixed-width table of evaluated checks."""
    head = ("check", "value", "required", "result")
    body = [(d, "missing" if v is None else f"{v:.4g}", n, "ok" if ok else "FAIL") for d, v, n, ok in rows]
    widths = [max(len(r[i]) for r in body + [head]) for i in range(4)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    results_path, thresholds_path = map(Path, argv)
    for p in (results_path, thresholds_path):
        if not p.is_file():
            print(f"ci.check: {p} does not exist", file=sys.stderr)
            return 2
    metrics = json.loads(results_path.read_text()).get("metrics", {})
    spec = yaml.safe_load(thresholds_path.read_text())
    rows = evaluate(metrics, spec.get("checks", []))
    print(f"Threshold check: {results_path} against {thresholds_path} ({spec.get('name', '')})")
    print(format_table(rows))
    failed = [r for r in rows if not r[3]]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; {len(failed)} FELL SHORT" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

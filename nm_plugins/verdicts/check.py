"""Check a results.json against a thresholds YAML; print a table; exit 1 when a figure falls short.

Usage: python -m nm_plugins.verdicts.check RESULTS_JSON THRESHOLDS_YAML  (python -m ci.check in a checkout)

results.json holds a flat ``"metrics": {name: number}`` mapping (plus anything else). A thresholds file:

    name: imagenet_proxy
    description: what the numbers are and how they were obtained
    checks:
      - {metric: "srste_2:4/top1", min: 80.0}                      # absolute bounds (min and/or max)
      - {metric: "srste_2:4/top1", ge: "dense/top1", margin: -1.5}  # metric >= other + margin
      - {metric: "srste_2:4/sad", le: "ste_2:4/sad", margin: 0.0}   # metric <= other + margin
      - {metric: "x", min: 1.0, claim: "text shown in the table"}

A check names one of min/max/ge/le; ``margin`` (default 0) shifts the reference. A metric missing from
the results fails its check. Checks are for regressions against committed figures and for facts (valid
masks, parameter ratios), not for the paper's claims.

The paper's claims go under ``claims:`` and are judged on the results' per-seed values (``"per_seed":
{row: {metric: {seed: value}}}``) by paired differences with a 95% t-interval, the power of the seeds run and a
Holm adjustment over the file's claims (nm_plugins/verdicts/claims.py, whose docstring is the schema):

    claims:
      - {claim: "SR-STE > STE at 2:4", a: "srste_2:4", b: "ste_2:4", metric: top1, kind: greater,
         smallest_effect: 0.3, smallest_effect_source: "a published gap / a stated tolerance / a fraction, why"}
      - {claim: "2:4 ~ dense", a: "srste_2:4", b: "dense", metric: top1, kind: noninferior, better: higher,
         smallest_effect_rel: 0.01, reference: {value: 77.3, source: "paper_tables.yaml"}, smallest_effect_source: "..."}

A claim fails when it is invalid (a NaN/inf per-seed value: the message names the run), missing, or
contradicted after the Holm adjustment; every other verdict is reported, not failed.
"""
from __future__ import annotations

import sys
from pathlib import Path

from nm_plugins.runtime.config import load_yaml
from nm_plugins.verdicts import claims as claims_mod


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


def read_inputs(results_path: Path, thresholds_path: Path) -> tuple:
    """(results, its metrics, thresholds spec); ValueError naming the file and what is wrong when either file is
    unreadable or of the wrong shape (truncated JSON, NaN, not a mapping, non-numeric metrics)."""
    import yaml

    from nm_plugins.runtime.results import read_json
    results = read_json(results_path)
    metrics = results.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ValueError(f"{results_path}: 'metrics' is a JSON {type(metrics).__name__}, not an object")
    bad = [k for k, v in metrics.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    if bad:
        raise ValueError(f"{results_path}: metric {bad[0]!r} is {metrics[bad[0]]!r}, not a number")
    try:
        spec = load_yaml(thresholds_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"thresholds file {thresholds_path} cannot be read: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"thresholds file {thresholds_path} holds a {type(spec).__name__}, not a mapping")
    for key in ("checks", "claims"):
        if not isinstance(spec.get(key) or [], list):
            raise ValueError(f"thresholds file {thresholds_path}: {key!r} is a {type(spec[key]).__name__}, not a list")
    return results, metrics, spec


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
    try:
        results, metrics, spec = read_inputs(results_path, thresholds_path)
        rows = evaluate(metrics, spec.get("checks", []) or [])
        claim_rows = claims_mod.evaluate_claims(results.get("per_seed", {}) or {}, spec.get("claims", []) or [])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        print(f"ci.check: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"Threshold check: {results_path} against {thresholds_path} ({spec.get('name', '')})")
    print(format_table(rows))
    failed = [r for r in rows if not r[3]]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; {len(failed)} FELL SHORT" if failed else ""))
    bad_claims = claims_mod.failed(claim_rows)
    if claim_rows:
        print("\nPaper claims (paired differences over seeds, 95% t-interval, power 80%, Holm-adjusted p):")
        print(claims_mod.format_claims(claim_rows))
        counts = {v: sum(r["verdict"] == v for r in claim_rows) for v in claims_mod.VERDICTS}
        print(", ".join(f"{n} {v}" for v, n in counts.items() if n) + (f"; {len(bad_claims)} FAIL" if bad_claims else ""))
    for r in bad_claims:
        why = r["note"] if r["verdict"] != claims_mod.CONTRADICTED else f"Holm-adjusted p {r['p_holm']:.3g}"
        print(f"FAIL: {r['claim']}: {r['verdict']}: {why}", file=sys.stderr)
    return 1 if failed or bad_claims else 0


if __name__ == "__main__":
    sys.exit(main())

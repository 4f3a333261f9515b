"""The methods leaderboard (issue 25): method x pattern with each metric's mean and 95% t-interval over seeds, the
paired difference against SR-STE at the same pattern, the verdicts of the thresholds file's claims on that row, SAD,
CPU step time relative to dense, what the trained masks are good for (valid 2:4 for sparse tensor cores,
transposable), and each paper's published ImageNet ResNet-50 top-1 at that pattern.

Computed from a results.json of ``make reproduce-methods`` (``per_seed``, ``masks``, ``bench``, ``runs``) and its
thresholds file (``claims``, ``published``), so the harness's results.md and the report page show the same table.
"""
from __future__ import annotations

import math

from nm_plugins.verdicts.claims import evaluate_claims, t_interval

BASELINE = "srste"


def _interval(values: list) -> dict:
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        return {"n": len(values), "mean": None, "lo": None, "hi": None,
                "invalid": bool(values)}
    ci = t_interval(values)
    return {"n": ci["n"], "mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]}


def _seeds(values: dict) -> list:
    return sorted(values, key=lambda s: (len(str(s)), str(s)))


def _count(masks: dict, key: str) -> str:
    """yes (every run with recorded masks, and all runs recorded) / no / k of n / not recorded."""
    if not masks or not masks.get("recorded"):
        return "not recorded"
    k, n, runs = masks.get(key), masks["recorded"], masks.get("runs", masks["recorded"])
    if k is None:
        return "n/a"
    text = "yes" if k == n else "no" if k == 0 else f"{k} of {n} runs"
    return text + (f" ({n} of {runs} runs recorded)" if n < runs else "")


def mask_cells(masks: dict, pattern: str) -> dict:
    """The mask columns of a row: valid N:M, valid 2:4 for sparse tensor cores (2:4 only; other patterns: n/a and
    whether the masks fit the 2:4 format), transposable."""
    two_four = _count(masks, "valid_2_4") if pattern == "2:4" else \
        "n/a" + ("" if _count(masks, "fits_2_4") == "not recorded" else f" (fits the 2:4 format: {_count(masks, 'fits_2_4')})")
    return {"valid_nm": _count(masks, "valid_nm"), "valid_2_4": two_four, "transposable": _count(masks, "transposable")}


def leaderboard(results: dict, spec: dict, metrics: list, baseline: str = BASELINE) -> list:
    """One dict per row of ``results["per_seed"]`` (``<method>_<pattern>``), in that order: method, pattern, seeds,
    ``metrics`` ({metric: interval}) for each (metric, label) of ``metrics``, ``vs_baseline`` ({metric: paired
    interval of row - baseline}, None for the baseline row), claims (the thresholds' claims with this row as A:
    claim, metric, verdict, note), sad (interval), step_ratio (median step time / dense's), masks (cells),
    published (the method's published ImageNet ResNet-50 top-1 at this pattern, or None) and its source."""
    per_seed = results.get("per_seed") or {}
    claims = evaluate_claims(per_seed, spec.get("claims") or [])
    published = spec.get("published") or {}
    bench = (results.get("bench") or {}).get("rows") or {}
    reused = results.get("reused_seeds") or {}
    out = []
    for row, values in per_seed.items():
        method, _, pattern = row.rpartition("_")
        base = per_seed.get(f"{baseline}_{pattern}") or {}
        entry = {"row": row, "method": method, "pattern": pattern, "metrics": {}, "vs_baseline": None,
                 "seeds": max((len(v) for v in values.values()), default=0), "reused": len(reused.get(row) or [])}
        for metric, _label in metrics:
            vals = values.get(metric) or {}
            entry["metrics"][metric] = _interval([vals[s] for s in _seeds(vals)])
        if method != baseline and base:
            entry["vs_baseline"] = {}
            for metric, _label in metrics:
                a, b = values.get(metric) or {}, base.get(metric) or {}
                shared = [s for s in _seeds(a) if s in b]
                entry["vs_baseline"][metric] = _interval([float(a[s]) - float(b[s]) for s in shared])
        sad = values.get("sad") or {}
        entry["sad"] = _interval([sad[s] for s in _seeds(sad)])
        entry["claims"] = [{"claim": c["claim"], "metric": c["metric"], "verdict": c["verdict"], "note": c.get("note", ""),
                            "b": c["b"]} for c in claims if c["a"] == row]
        ratio = bench.get(row) or {}
        entry["step_ratio"] = ratio.get("ratio_vs_dense")
        entry["masks"] = mask_cells((results.get("masks") or {}).get(row) or {}, pattern)
        pub = published.get(method) or {}
        entry["published"] = (pub.get("top1") or {}).get(pattern)
        entry["published_source"] = pub.get("source", "")
        out.append(entry)
    return out


def fmt_interval(iv: "dict | None", spec: str = ".2f", signed: bool = False) -> str:
    """``mean [lo, hi]`` (``mean`` alone for one seed, ``-`` when absent)."""
    if not iv or iv.get("mean") is None:
        return "invalid (NaN/inf)" if iv and iv.get("invalid") else "-"
    f = ("+" if signed else "") + spec
    if iv.get("lo") is None:
        return f"{iv['mean']:{f}} (1 seed)"
    return f"{iv['mean']:{f}} [{iv['lo']:{f}}, {iv['hi']:{f}}]"


def table(rows: list, metrics: list, specs: "dict | None" = None, baseline: str = BASELINE) -> "tuple[list, list]":
    """(header, rows of strings) of the leaderboard: the shared form of results.md and the report page."""
    specs = specs or {}
    head = ["method", "pattern", "seeds"] + [f"{label} (95% CI)" for _m, label in metrics] + \
        [f"{label}: minus {baseline}, paired (95% CI)" for _m, label in metrics[:2]] + \
        ["verdicts (claims on this row)", "SAD (final)", "CPU step time / dense", "valid N:M",
         "valid 2:4 (sparse tensor cores)", "transposable", "published ResNet-50 top-1 (ImageNet)"]
    body = []
    for r in rows:
        cells = [r["method"], r["pattern"], str(r["seeds"]) + (f" ({r['reused']} committed)" if r.get("reused") else "")]
        cells += [fmt_interval(r["metrics"].get(m), specs.get(m, ".2f")) for m, _ in metrics]
        cells += ["(baseline)" if r["vs_baseline"] is None else fmt_interval(r["vs_baseline"].get(m), specs.get(m, ".2f"), True)
                  for m, _ in metrics[:2]]
        verdicts = "; ".join(f"{c['metric']}: {c['verdict']}" + (f" ({c['note']})" if c.get("note") else "") for c in r["claims"])
        cells.append(verdicts or ("-" if r["vs_baseline"] is None else "no claim"))
        cells.append(fmt_interval(r["sad"], ".4f"))
        cells.append("-" if r["step_ratio"] is None else f"{r['step_ratio']:.2f}x")
        cells += [r["masks"]["valid_nm"], r["masks"]["valid_2_4"], r["masks"]["transposable"]]
        cells.append("-" if r["published"] is None else f"{r['published']:.1f}")
        body.append(cells)
    return head, body


def markdown(rows: list, metrics: list, specs: "dict | None" = None) -> str:
    """The leaderboard as a markdown table."""
    head, body = table(rows, metrics, specs)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"

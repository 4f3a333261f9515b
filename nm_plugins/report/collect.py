"""Reading what the reproductions committed: results.json files, thresholds YAMLs and the paper's reference
YAML, judged with the code CI uses (``nm_plugins.verdicts``: ``check.evaluate`` and ``claims.evaluate_claims``).

Everything here returns plain dicts and lists ("cells" and "tables") that the template lays out; a number
cell carries the relative link to the results.json (or reference YAML) it was read from.
"""
from __future__ import annotations

import fnmatch
import json
import os
import sys
from pathlib import Path

from nm_plugins.runtime.config import load_yaml as _yaml

REPO = Path(__file__).resolve().parents[2]
NOT_RUN = "not run"
NOT_RECORDED = "not recorded"
INVALID = "unreadable"
# what a results or thresholds file of the wrong shape raises in the code that reads it
BAD_FILE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def invalid_section(sec: dict, path: Path, error: Exception) -> dict:
    """``sec`` marked unreadable: the page names ``path`` (relative to the checkout when inside it) and the error."""
    try:
        shown = Path(path).resolve().relative_to(REPO)
    except ValueError:
        shown = Path(path)
    message = str(error).removeprefix("report: ")
    return {**sec, "status": INVALID, "error": f"{shown}: {type(error).__name__}: {message}"
            if str(path) not in message else f"{type(error).__name__}: {message}"}


def load_json(path: Path) -> dict:
    """The parsed JSON object at ``path``; ValueError naming the file and the error when it is unreadable, not
    valid JSON (truncated, NaN) or not a JSON object."""
    from nm_plugins.runtime.results import read_json
    try:
        return read_json(path)
    except ValueError as e:
        raise ValueError(f"report: {e}") from None


def load_yaml(path: Path) -> dict:
    """The parsed YAML mapping at ``path`` ({} for an empty file); ValueError naming the file otherwise."""
    data = _yaml(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"report: {path} holds a {type(data).__name__}, not a mapping")
    return data


def header_comments(path: Path) -> list:
    """The comment lines at the top of a YAML file (where the reference file names its sources), without '# '."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def rel_href(target: Path, out_dir: Path) -> str:
    """A relative link from the folder of the page to ``target`` (forward slashes)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(out_dir).resolve())).as_posix()


# ------------------------------------------------------------------------------------------------- cells
def fmt(value, spec: str = "") -> str:
    """A number as the report prints it (``spec``: a format spec, else a precision chosen by magnitude)."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return str(value)
    if spec:
        return format(value, spec)
    if isinstance(value, int):
        return str(value)
    a = abs(value)
    return f"{value:.1f}" if a >= 1000 else f"{value:.2f}" if a >= 10 else f"{value:.3f}" if a >= 0.1 else f"{value:.4g}"


def cell(value, href: str | None = None, key: str | None = None, spec: str = "", text: str | None = None) -> dict:
    """A table cell: a number linked to the file it comes from (``key`` says where in it), or plain text."""
    if value is None and text is None:
        return {"text": NOT_RECORDED, "cls": "missing"}
    return {"text": text if text is not None else fmt(value, spec), "href": href, "title": key, "cls": "num"}


def text_cell(text, cls: str = "") -> dict:
    """A cell of plain text (never blank: an empty value prints as 'not recorded')."""
    text = "" if text is None else str(text)
    return {"text": text or NOT_RECORDED, "cls": cls or ("" if text else "missing")}


def table(columns: list, rows: list, caption: str = "", note: str = "") -> dict:
    """A table for the template: column labels, rows of cells, a caption and a note under it."""
    return {"columns": columns, "rows": rows, "caption": caption, "note": note}


# ------------------------------------------------------------------------------------------- judgements
def judge(results: dict, thresholds: Path, results_href: str, thresholds_href: str) -> dict:
    """The thresholds file's checks (``verdicts.check.evaluate`` on ``metrics``) and the paper's claims
    (``verdicts.claims.evaluate_claims`` on ``per_seed``) as tables, with counts and stale stored verdicts."""
    from nm_plugins.verdicts import check, claims as claims_mod
    spec = load_yaml(thresholds)
    checks = check.evaluate(results.get("metrics", {}) or {}, spec.get("checks", []) or [])
    claim_rows = claims_mod.evaluate_claims(results.get("per_seed", {}) or {}, spec.get("claims", []) or [])
    metrics = results.get("metrics", {}) or {}
    check_rows = []
    for spec_row, (desc, value, need, ok) in zip(spec.get("checks", []) or [], checks):
        key = spec_row["metric"]
        check_rows.append([text_cell(desc), cell(value, results_href, f'metrics["{key}"]') if key in metrics
                           else {"text": NOT_RUN, "cls": "notrun"}, text_cell(need),
                           {"text": "ok" if ok else "FAIL", "cls": "ok" if ok else "fail"}])
    claim_cells = []
    for r, t in zip(claim_rows, claims_mod.table_rows(claim_rows)):
        diff = (cell(r["mean"], results_href, f'per_seed["{r["a"]}"]["{r["metric"]}"] - per_seed["{r["b"]}"]'
                     f'["{r["metric"]}"]', "+.4g") if r["mean"] is not None else {"text": NOT_RUN, "cls": "notrun"})
        claim_cells.append([text_cell(r["claim"]), text_cell(r["a"]), text_cell(r["b"]), text_cell(r["metric"]),
                            text_cell(t["rule"]), text_cell(t["smallest effect"]), diff, text_cell(t["95% interval"]),
                            text_cell(t["seeds"]), text_cell(t["MDE (80%)"]), text_cell(t["seeds needed"]),
                            text_cell(t["p"]), text_cell(t["Holm p"]),
                            {"text": t["verdict"], "cls": "verdict-" + r["verdict"].replace(" ", "-")}])
    stored = {c.get("claim"): c.get("verdict") for c in results.get("claims", []) or [] if isinstance(c, dict)}
    stale = [f"{r['claim']}: stored '{stored[r['claim']]}', now '{r['verdict']}'" for r in claim_rows
             if r["claim"] in stored and stored[r["claim"]] != r["verdict"]]
    counts = {v: sum(r["verdict"] == v for r in claim_rows) for v in claims_mod.VERDICTS}
    passed = sum(1 for *_, ok in checks if ok)
    return {"thresholds": thresholds.name, "thresholds_href": thresholds_href, "name": spec.get("name", ""),
            "description": spec.get("description", ""), "passed": passed, "total": len(checks),
            "checks": table(["check", "value", "required", "result"], check_rows) if check_rows else None,
            "claims": table(["claim", "A", "B", "metric", "rule", "smallest effect", "A - B (mean over seeds)",
                             "95% t-interval", "seeds", "MDE (80% power)", "seeds needed", "p", "Holm p", "verdict"],
                            claim_cells, note=CLAIMS_NOTE) if claim_cells else None,
            "claim_rows": claim_rows, "counts": {k: v for k, v in counts.items() if v}, "stale": stale,
            "failing": [r["claim"] for r in claims_mod.failed(claim_rows)], "can_tell": can_tell(claim_rows),
            "sources": [(r["claim"], r["smallest_effect_source"]) for r in claim_rows]}


CLAIMS_NOTE = ("rule: what A - B must do for the claim to hold; smallest effect: the smallest effect of interest, fixed in "
               "the thresholds file before the run (its source under 'where the smallest effects come from'); MDE: the "
               "smallest distance from the rule's boundary that these seeds detect at 80% power, from the paired SD; "
               "seeds needed: the seeds that detect the smallest effect; p: paired t-test against the boundary; Holm p: "
               "adjusted over the claims of this file. CI fails on a contradicted claim only when its Holm p < 0.05.")


def _names(rows: list) -> str:
    return "; ".join(f"'{r['claim']}'" for r in rows)


def can_tell(rows: list) -> list:
    """Sentences, computed from the verdicts and minimum detectable effects, on what this run can and cannot tell
    about the paper's claims."""
    from nm_plugins.verdicts import claims as V
    by = {v: [r for r in rows if r["verdict"] == v] for v in V.VERDICTS}
    judged = [r for r in rows if r["verdict"] not in (V.MISSING, V.INVALID, V.SINGLE_RUN)]
    out = []
    decided = by[V.HOLDS] + by[V.CONTRADICTED] + by[V.BELOW_SESOI]
    if judged:
        out.append(f"This run decides {len(decided)} of its {len(rows)} claims" + (": " + "; ".join(
            f"'{r['claim']}' {r['verdict']}" + (" (not after Holm adjustment)" if r["verdict"] in (V.HOLDS, V.CONTRADICTED)
                                                 and r["p_holm"] is not None and r["p_holm"] >= V.ALPHA else "")
            for r in decided) if decided else "") + ".")
    if by[V.BELOW_SESOI]:
        out.append("Where it rules out the claimed effect: " + "; ".join(
            f"'{r['claim']}': the whole interval [{r['lo']:+.3g}, {r['hi']:+.3g}] lies within the smallest effect of "
            f"interest {r['smallest_effect']:.3g} of the boundary" for r in by[V.BELOW_SESOI]) + ".")
    if by[V.UNDERPOWERED]:
        out.append("It cannot tell: " + "; ".join(
            f"'{r['claim']}' (detects {r['mde']:.3g} at {r['n']} seeds, the smallest effect of interest is "
            f"{r['smallest_effect']:.3g}: {r['seeds_needed']} seeds would)" for r in by[V.UNDERPOWERED]) + ".")
    if by[V.NOT_SIGNIFICANT]:
        out.append("Enough seeds to detect the smallest effect, still undecided (the estimate sits near the boundary): "
                   + _names(by[V.NOT_SIGNIFICANT]) + ".")
    if by[V.SINGLE_RUN]:
        out.append("One seed: nothing judged for " + _names(by[V.SINGLE_RUN]) + "; a second seed gives an interval.")
    for v in (V.INVALID, V.MISSING):
        if by[v]:
            out.append(f"{v.capitalize()}: " + "; ".join(f"'{r['claim']}' ({r['note']})" for r in by[v]) + ".")
    return out


# ------------------------------------------------------------------------------------------ environment
def environment(results: dict) -> list:
    """(label, value) pairs of where and when the numbers were measured, 'not recorded' where the file says nothing."""
    prov = results.get("provenance") if isinstance(results.get("provenance"), dict) else {}
    m = {**(prov.get("machine") or {}), **(results.get("machine") or {})}
    env = results.get("env") or {}
    info = results.get("machine_info") or {}
    host = m.get("host") or info.get("node")
    cpu = m.get("cpu") or env.get("cpu") or (info.get("cpu") or {}).get("brand_raw")
    cores = m.get("cpu_cores") or m.get("cpu_count") or env.get("cores") or (info.get("cpu") or {}).get("count")
    machine = ", ".join(x for x in [host and f"host {host}", cpu, cores and f"{cores} cores",
                                    m.get("threads") and f"{m['threads']} torch threads", m.get("platform") or m.get("os")] if x)
    gpu = m.get("gpu") or env.get("gpu")
    if not gpu and isinstance(m.get("cuda"), str):
        gpu = m["cuda"]
    if gpu == "cpu" or (not gpu and ("cuda" in m and not m["cuda"])):
        gpu = "none (CPU run)"
    cuda = env.get("cuda") or (None if "cuda" not in m or isinstance(m.get("cuda"), str) else
                               ("not available" if not m["cuda"] else None))
    commit = prov.get("commit") or results.get("commit") or (results.get("commit_info") or {}).get("id")
    dirty = prov.get("dirty") if prov else (results.get("commit_info") or {}).get("dirty")
    if commit and dirty:
        commit += " (with uncommitted changes)"
    elif commit and dirty is False:
        commit += " (clean tree)"
    date = prov.get("date") or results.get("date") or results.get("datetime")
    if prov.get("cuda"):
        cuda = prov["cuda"] + ("" if prov.get("cuda_available") else " (no GPU used)")
    versions = ", ".join(f"{k} {env[k]}" for k in ("cudnn", "cusparselt", "triton", "torchvision") if env.get(k))
    wall = (results.get("wall_seconds") or (results.get("total_minutes") or 0) * 60 or results.get("total_time_s"))
    load = results.get("load_average") or {}
    pairs = [("machine", machine), ("GPU", gpu), ("torch", prov.get("torch") or m.get("torch") or env.get("torch")),
             ("CUDA", cuda), ("python", m.get("python") or env.get("python") or info.get("python_version")),
             ("other versions", versions), ("commit", commit), ("date", date), ("command", prov.get("command")),
             ("wall time", wall and f"{wall / 60:.1f} min"),
             ("load average (start / end)", load and f"{load.get('start', 0):.2f} / {load.get('end', 0):.2f}")]
    keep_optional = {"other versions", "wall time", "load average (start / end)"}
    return [(k, v if v not in (None, "") else NOT_RECORDED) for k, v in pairs if v or k not in keep_optional]


# --------------------------------------------------------------------------------------------- metrics
def split_rows(metrics: dict, rows: list) -> dict:
    """{row: {metric suffix: value}}: each flat ``row/metric`` key under the longest known row prefix, else its
    first path element."""
    out: dict = {r: {} for r in rows}
    for key, value in metrics.items():
        row = max((r for r in rows if key.startswith(r + "/")), key=len, default=None)
        if row is None:
            row = key.split("/", 1)[0] if "/" in key else ""
        out.setdefault(row, {})[key[len(row) + 1:] if row else key] = value
    return out


def pivot(results: dict, rows: list, columns: list, href: str, caption: str = "", label: str = "row",
          seeds: bool = True) -> dict:
    """A rows x metrics table of ``results['metrics']``: ``columns`` are (suffix pattern, label, format)
    with fnmatch patterns; a row without a metric shows 'not recorded'; a column no row has is left out."""
    metrics = results.get("metrics", {}) or {}
    by_row = split_rows(metrics, rows)
    cols, seen = [], set()
    for pattern, name, spec in columns:
        found = [s for r in rows for s in by_row.get(r, {}) if fnmatch.fnmatchcase(s, pattern) and s not in seen]
        for suffix in dict.fromkeys(found):
            seen.add(suffix)
            cols.append((suffix, name if not any(c in pattern for c in "*?[") else (name or suffix), spec))
    per_seed = results.get("per_seed", {}) or {}
    out_rows = []
    for r in rows:
        line = [text_cell(r)]
        if seeds and per_seed:
            n = max((len(v) for v in per_seed.get(r, {}).values()), default=0)
            line.append(text_cell(str(n) if n else "-"))
        for suffix, _, spec in cols:
            v = by_row.get(r, {}).get(suffix)
            line.append(cell(v, href, f'metrics["{r}/{suffix}"]', spec) if v is not None else text_cell(None))
        out_rows.append(line)
    head = [label] + (["seeds"] if seeds and per_seed else []) + [c[1] for c in cols]
    return table(head, out_rows, caption)


def all_metrics(results: dict, href: str) -> dict:
    """Every flat metric of a results.json, each linked to the file (for auditing)."""
    rows = [[text_cell(k), cell(v, href, f'metrics["{k}"]') if isinstance(v, (int, float)) else text_cell(v)]
            for k, v in (results.get("metrics", {}) or {}).items()]
    return table(["metric", "value"], rows)


def flatten(obj, prefix: str = "") -> list:
    """(dotted path, value) of every leaf of nested dicts/lists (lists of scalars stay whole)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        return [p for i, v in enumerate(obj) for p in flatten(v, f"{prefix}[{i}]")]
    return [(prefix, obj)]

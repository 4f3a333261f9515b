"""Render ``results/index.html``: one self-contained page (inline CSS, plots as data URIs, no JavaScript) of every
reproduction and measurement against the paper's reference numbers."""
from __future__ import annotations

from pathlib import Path

from nm_plugins.report import benches as B
from nm_plugins.report import collect as C
from nm_plugins.report import experiments as E

DEFAULT_REFERENCE = C.REPO / "ci" / "reference" / "paper_tables.yaml"
GROUP_ORDER = ["ImageNet classification", "COCO detection", "COCO instance segmentation", "RAFT optical flow", "Translation", "N:M training methods",
               "CPU benchmarks", "GPU throughput", "GPU smoke"]


def sections(results_dir: Path, out_dir: Path, reference: Path = DEFAULT_REFERENCE,
             thresholds_dir: Path = C.REPO / "ci" / "thresholds") -> list:
    """Every section of the page, in page order (a reproduction whose folder is absent is a 'not run' section)."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not Path(reference).is_file():
        raise FileNotFoundError(f"report: the paper's reference numbers {reference} do not exist")
    ctx = {"results_dir": results_dir, "out_dir": out_dir, "ref": C.load_yaml(reference),
           "ref_href": C.rel_href(reference, out_dir), "thresholds_dir": Path(thresholds_dir)}
    out = []
    for spec in E.REPRODUCTIONS:
        sec = E.reproduction_section(spec, ctx)
        if spec.get("replaced_by") and (results_dir / spec["replaced_by"] / "results.json").is_file():
            continue  # the real rows are there: the proxy stands aside
        out.append(sec)
    out.append(B.bench_section(ctx))
    out += B.loader_sections(ctx)
    out += B.throughput_sections(ctx)
    out += B.gpu_smoke_sections(ctx)
    return out


def summary_rows(secs: list) -> list:
    """One line per section for the table at the top: status, checks passed, claim verdicts, command."""
    rows = []
    for s in secs:
        j = s.get("judgement")
        status = {"text": C.NOT_RUN, "cls": "notrun"} if s["status"] == C.NOT_RUN else \
            {"text": f"{C.INVALID}: {s['error']}", "cls": "fail"} if s["status"] == C.INVALID else \
            {"text": "smoke run" if s.get("smoke") else "results", "href": s.get("json_href"), "cls": "ok"}
        checks = {"text": "-"} if not j or not j["total"] else \
            {"text": f"{j['passed']} / {j['total']} passed", "href": j["thresholds_href"],
             "cls": "ok" if j["passed"] == j["total"] else "fail"}
        if s.get("targets") and s["targets"][1]:
            met, total = s["targets"]
            checks = {"text": f"{met} / {total} targets met", "href": s.get("json_href"),
                      "cls": "ok" if met == total else "fail"}
        claims = {"text": "-"} if not j or not j["counts"] else \
            {"text": ", ".join(f"{n} {v}" for v, n in j["counts"].items()), "href": j["thresholds_href"],
             "cls": "fail" if j["failing"] else "ok"}
        rows.append({"id": s["id"], "group": s["group"], "title": s["title"], "status": status, "checks": checks,
                     "claims": claims, "command": s["command"]})
    return rows


def render(secs: list, reference: Path, out_dir: Path, ref_extra: "dict | None" = None) -> str:
    """The page's HTML for these sections (Jinja2 template ``templates/report.html.j2``, autoescaped)."""
    import jinja2
    env = jinja2.Environment(loader=jinja2.PackageLoader("nm_plugins.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    groups = []
    for name in GROUP_ORDER:
        members = [s for s in secs if s["group"] == name]
        if members:
            groups.append({"name": name, "sections": members, "reference": (ref_extra or {}).get(name, [])})
    return env.get_template("report.html.j2").render(
        groups=groups, summary=summary_rows(secs), reference_href=C.rel_href(reference, out_dir),
        reference_sources=C.header_comments(reference), not_run=C.NOT_RUN, invalid=C.INVALID)


def build_report(results_dir: Path = C.REPO / "results", out: "Path | None" = None, reference: Path = DEFAULT_REFERENCE,
                 thresholds_dir: Path = C.REPO / "ci" / "thresholds", problems: "list | None" = None) -> Path:
    """Write the report of ``results_dir`` to ``out`` (default ``results_dir/index.html``); returns its path.
    ``problems``, when given, receives the errors of the unreadable results files the page marks."""
    results_dir = Path(results_dir)
    out = Path(out) if out else results_dir / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    secs = sections(results_dir, out.parent, reference, thresholds_dir)
    if problems is not None:
        problems.extend(invalid_files(secs))
    ctx_ref = {"GPU throughput": B.throughput_reference({"ref": C.load_yaml(reference),
                                                         "ref_href": C.rel_href(reference, out.parent)})}
    from nm_plugins.runtime.results import write_text
    write_text(out, render(secs, Path(reference), out.parent, ctx_ref))
    return out


def invalid_files(secs: list) -> list:
    """The errors (file and what is wrong) of the sections whose results file is unreadable."""
    return [s["error"] for s in secs if s["status"] == C.INVALID]

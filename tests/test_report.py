"""``make report``: the static HTML page of every experiment against the paper (nm_plugins/report).

Rendered from the committed results into tmp_path; checked with html.parser (sections, tables, links, no
external resource, no script) and in headless Chromium (rendered DOM and a screenshot) when it is installed.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from nm_plugins.report import build_report
from nm_plugins.report import browser
from nm_plugins.report import experiments as E
from nm_plugins.report.build import render, sections
from nm_plugins.verdicts.check import evaluate as evaluate_checks

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
REFERENCE = REPO / "ci" / "reference" / "paper_tables.yaml"
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "paper_tables.yaml"


class Page(HTMLParser):
    """Every element with its attributes, the sections (id, status, tags and text inside) and the table cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements, self.sections, self._open = [], {}, []
        self._depth, self._sec = 0, None
        self.cells, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag == "section" and "exp" in (attrs.get("class") or ""):
            self._sec = {"id": attrs.get("id"), "status": attrs.get("data-status"), "tags": [], "text": [], "hrefs": []}
            self.sections[attrs.get("id")] = self._sec
        if self._sec is not None:
            self._sec["tags"].append(tag)
            if tag == "a":
                self._sec["hrefs"].append(attrs.get("href"))
        if tag == "td":
            self._cell = {"cls": attrs.get("class") or "", "hrefs": [], "text": "", "section": self._sec and self._sec["id"]}
            self.cells.append(self._cell)
        if tag == "a" and self._cell is not None:
            self._cell["hrefs"].append(attrs.get("href"))

    def handle_endtag(self, tag):
        if tag == "section":
            self._sec = None
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._sec is not None:
            self._sec["text"].append(data)
        if self._cell is not None:
            self._cell["text"] += data


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def expected_sections(results: Path) -> dict:
    """{section id: True when its results file exists} from the results folder itself, not from the report code."""
    out = {}
    for spec in E.REPRODUCTIONS:
        if spec.get("replaced_by") and (results / spec["replaced_by"] / "results.json").is_file():
            continue
        out[spec["id"]] = (results / spec["dir"] / "results.json").is_file()
    out["bench-cpu"] = (results / "bench" / "cpu.json").is_file()
    for folder, prefix in (("loader", "loader"), ("throughput", "throughput"), ("gpu-smoke", "gpu-smoke")):
        files = sorted((results / folder).glob("*.json"))
        out.update({f"{prefix}-{f.stem}": True for f in files} or {prefix: False})
    return out


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """The report of the committed results, written into a temporary folder: (path, html, parsed)."""
    out = build_report(RESULTS, tmp_path_factory.mktemp("report") / "index.html")
    html = out.read_text()
    return out, html, parse(html)


def copy_results(tmp_path: Path) -> Path:
    dst = tmp_path / "results"
    shutil.copytree(RESULTS, dst, ignore=shutil.ignore_patterns("index.html", "report_top.png"))
    return dst


def section_text(page: Page, sid: str) -> str:
    return " ".join(" ".join(page.sections[sid]["text"]).split())


# ------------------------------------------------------------------------------------------------------------
def test_reference_copy_in_the_repository_equals_shared():
    """The paper's numbers live in the repository (ci/reference/) and are the shared reference file, byte for byte."""
    assert REFERENCE.is_file(), "ci/reference/paper_tables.yaml is missing"
    ref = yaml.safe_load(REFERENCE.read_text())
    assert ref["imagenet"]["resnet50"][1]["top1"] == 77.0 and ref["raft"]["flyingchairs_val_epe"]["sparse_2_4"] == 0.88
    if not SHARED_REFERENCE.is_file():
        pytest.skip(f"{SHARED_REFERENCE} does not exist on this machine: nothing to compare the copy with")
    assert REFERENCE.read_bytes() == SHARED_REFERENCE.read_bytes(), \
        "ci/reference/paper_tables.yaml differs from ../shared/reference/paper_tables.yaml: copy it again"


def test_every_experiment_has_its_section_and_table(committed):
    _, _, page = committed
    expected = expected_sections(RESULTS)
    assert set(page.sections) == set(expected), "sections differ from the experiments in results/"
    for sid, present in expected.items():
        sec = page.sections[sid]
        text = section_text(page, sid)
        if present:
            assert sec["status"] == "ok" and "table" in sec["tags"], f"{sid}: no table"
            assert "Environment machine" in text and " date " in text  # where and when, or 'not recorded'
            assert "Reproduce: " in text and "make " in text
        else:
            assert sec["status"] == "not run" and "not run" in text and "table" not in sec["tags"], sid


def test_no_external_resource_and_no_script(committed):
    out, html, page = committed
    tags = {t for t, _ in page.elements}
    assert not tags & {"script", "iframe", "object", "embed", "link", "base", "form"}, tags
    assert "@import" not in html and "url(" not in html
    for tag, attrs in page.elements:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        for key in ("src", "href", "srcset", "poster", "action", "data"):
            value = attrs.get(key)
            if value is None:
                continue
            assert not re.match(r"^\s*([a-z][a-z0-9+.-]*:|//)", value, re.I) or value.startswith("data:image/"), \
                f"<{tag} {key}={value[:80]!r}> points outside the page"
            if key == "src":
                assert value.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")), value[:60]
                if value.startswith("data:image/svg+xml"):
                    svg = base64.b64decode(value.split(",", 1)[1]).decode()
                    assert not re.search(r"""(?:href|src)\s*=\s*["'](?!#|data:)""", svg), "an SVG refers to a file or URL"
                    assert "<script" not in svg
            elif key == "href" and not value.startswith("#"):
                target = (out.parent / unquote(value)).resolve()
                assert target.is_file(), f"link {value} leads nowhere"
                assert target.is_relative_to(REPO), value


def test_numbers_link_to_their_results_json(committed):
    """Every number of a section links to that section's results.json (ours) or the reference YAML (the paper's)."""
    out, _, page = committed
    numbers = [c for c in page.cells if "num" in c["cls"].split() and c["section"]]
    assert len(numbers) > 200
    for c in numbers:
        assert len(c["hrefs"]) == 1, c
        target = (out.parent / c["hrefs"][0]).resolve()
        assert target.suffix == ".json" or target == REFERENCE.resolve(), (c, target)
        if target.suffix == ".json":
            assert target.parent.name in c["section"] or target.stem in c["section"], (c["section"], target)
    paper = [c for c in numbers if (out.parent / c["hrefs"][0]).resolve() == REFERENCE.resolve()]
    assert any(c["text"] == "77.0" for c in paper) and any(c["text"] == "0.88" for c in paper)


def test_claims_and_checks_are_the_ci_verdicts(committed):
    """The verdicts shown are those of ci.check / ci.claims on the committed file (here the RAFT proxy)."""
    import sys
    sys.path.insert(0, str(REPO))
    from nm_plugins.verdicts.check import evaluate
    from nm_plugins.verdicts.claims import evaluate_claims
    _, _, page = committed
    res = json.loads((RESULTS / "raft-proxy" / "results.json").read_text())
    spec = yaml.safe_load((REPO / "ci" / "thresholds" / "raft_proxy.yaml").read_text())
    text = section_text(page, "raft-proxy")
    rows = evaluate(res["metrics"], spec.get("checks", []))
    assert f"{sum(r[3] for r in rows)} of {len(rows)} checks passed" in text
    for r in evaluate_claims(res["per_seed"], spec.get("claims", [])):
        assert re.search(re.escape(r["claim"]) + r".*?" + re.escape(r["verdict"]), text), r["claim"]


def test_missing_experiment_shows_not_run(tmp_path):
    results = copy_results(tmp_path)
    shutil.rmtree(results / "coco-seg-proxy")
    shutil.rmtree(results / "bench")
    page = parse(build_report(results).read_text())
    for sid in ("coco-seg-proxy", "bench-cpu"):
        sec = page.sections[sid]
        assert sec["status"] == "not run" and "table" not in sec["tags"]
        assert "not run" in section_text(page, sid)
    assert "make reproduce-coco-seg" in section_text(page, "coco-seg-proxy")
    summary = [c for c in page.cells if c["section"] is None and c["text"].strip() == "not run"]
    assert len(summary) >= 2 + sum(not v for v in expected_sections(RESULTS).values())
    assert page.sections["coco-det-proxy"]["status"] == "ok"


def test_a_changed_number_changes_the_page(committed, tmp_path):
    """Numbers, checks and claim verdicts come from the files: change one, the page follows."""
    results = copy_results(tmp_path)
    before = committed[2]
    path = results / "translation-proxy" / "results.json"
    res = json.loads(path.read_text())
    seeds, bleu = len(res["per_seed"]["srste_2:4"]["bleu"]), res["metrics"]["srste_2:4/bleu_mean"]
    res["metrics"]["srste_2:4/bleu_mean"] = 0.0424242
    res["metrics"]["srste_2:4/chrf_mean"] = 0.0424242  # below its regression floor: 1 check fails
    path.write_text(json.dumps(res))
    checks = yaml.safe_load((REPO / "ci" / "thresholds" / "translation_proxy.yaml").read_text())["checks"]
    n_checks = len(checks)
    n_ok = sum(row[3] for row in evaluate_checks(json.loads((RESULTS / "translation-proxy" / "results.json").read_text())
                                                 ["metrics"], checks))  # the committed run's own count
    path = results / "imagenet-proxy" / "results.json"
    res = json.loads(path.read_text())
    ste = res["per_seed"]["ste_2:4"]["top1"]
    res["per_seed"]["srste_2:4"]["top1"] = {s: v + 1.0 + 0.01 * int(s) for s, v in ste.items()}  # SR-STE now clearly ahead
    path.write_text(json.dumps(res))
    after = parse(build_report(results, tmp_path / "after.html").read_text())
    t0, t1 = section_text(before, "translation-proxy"), section_text(after, "translation-proxy")
    assert f"srste_2:4 {seeds} {bleu:.2f} " in t0 and f"srste_2:4 {seeds} 0.04 " in t1  # the BLEU column of our table
    assert "srste_2:4/bleu_mean 0.04242" in t1 and "0.04242" not in t0  # all metrics
    assert f"{n_ok} of {n_checks} checks passed" in t0 and f"{n_ok - 1} of {n_checks} checks passed" in t1
    i0, i1 = section_text(before, "imagenet-proxy"), section_text(after, "imagenet-proxy")
    assert re.search(r"SR-STE beats STE at 2:4 .*?effect below the smallest effect of interest", i0)
    assert re.search(r"SR-STE beats STE at 2:4 srste_2:4 ste_2:4 top1 A - B > 0 0\.3 \+1\.02 .*?holds", i1)
    assert "Stored verdict differs" in i1 and "Stored verdict differs" not in i0


def test_committed_page_is_current():
    """results/index.html is what make report renders from the committed results now (rerun make report if not)."""
    page = RESULTS / "index.html"
    if not page.is_file():
        pytest.fail("results/index.html is missing: run make report")
    secs = sections(RESULTS, RESULTS, REFERENCE)
    from nm_plugins.report.benches import throughput_reference
    from nm_plugins.report.collect import load_yaml, rel_href
    html = render(secs, REFERENCE, RESULTS, {"GPU throughput": throughput_reference(
        {"ref": load_yaml(REFERENCE), "ref_href": rel_href(REFERENCE, RESULTS)})})
    assert html == page.read_text(), "results/index.html is stale: run make report"


def test_report_imports_no_other_adapter():
    for path in (REPO / "nm_plugins" / "report").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"nm_plugins\.(timm|mmdet|raft|train|translation|data)\b", text), path
    assert (REPO / "nm_plugins" / "report" / "templates" / "report.html.j2").is_file()
    assert "nm_plugins.report" in (REPO / "pyproject.toml").read_text()  # the template ships as package data


@pytest.mark.skipif(browser.find_chromium() is None,
                    reason="headless Chromium is not installed (Debian: apt-get install chromium; make install does it "
                           "where apt-get exists): the page could not be rendered in a real browser")
def test_chromium_renders_every_section_and_a_screenshot(committed, tmp_path):
    from PIL import Image
    out, _, _ = committed
    dom = browser.dump_dom(out)
    page = parse(dom)
    expected = expected_sections(RESULTS)
    assert set(page.sections) == set(expected) and "raft-proxy-bf16" in page.sections
    for sid, present in expected.items():
        assert ("table" in page.sections[sid]["tags"]) == present, sid
    # issue 20: every claims table has the smallest effect, MDE, Holm p and verdict columns, and every judged
    # experiment says what its run can and cannot tell
    heads = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<thead>(.*?)</thead>", dom, re.S)]
    claim_heads = [h for h in heads if "Holm p" in h]
    assert len(claim_heads) >= 6, heads
    for h in claim_heads:
        for col in ("smallest effect", "MDE (80% power)", "seeds needed", "Holm p", "verdict"):
            assert col in h, (col, h)
    for sid in ("imagenet-proxy", "imagenet-proxy-study", "coco-det-proxy", "raft-proxy", "raft-proxy-bf16"):
        assert "What this run can and cannot tell." in section_text(page, sid), sid
    assert sum(t == "img" for t, _ in page.elements) >= 10
    png = browser.screenshot(out, tmp_path / "top.png", width=1280, height=1000)
    with Image.open(png) as im:
        assert im.size == (1280, 1000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"


def _summary(model, method, pattern, seed, top1):
    return {"row_model": model, "model": model, "method": method, "pattern": pattern, "variant": "", "seed": seed,
            "top1": top1, "top5": 93.0, "sad_final": 0.01, "sad_curve": [0.01, 0.01], "params": 13.83e6,
            "flops": 2.1e9, "seconds": 1.0}


def test_real_imagenet_rows_replace_the_proxy_and_gpu_smoke_files_get_sections(tmp_path):
    """results/imagenet/ (written by the trainer's own aggregate) stands beside the paper row by row and hides the
    proxy; a results/gpu-smoke/<gpu>.json (flattened by benchmarks.gpu_smoke) gets its section, plot and checks."""
    import sys
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu_smoke import flatten
    from nm_plugins.train.report import aggregate
    results = copy_results(tmp_path)
    summaries = [_summary("resnet50", "srste", "2:4", s, 76.25 + s) for s in (0, 1)]
    real = aggregate(summaries, "imagenet", with_model=True)
    (results / "imagenet").mkdir()
    (results / "imagenet" / "results.json").write_text(json.dumps(real, default=float))
    method = {"images_per_s": 2000.0, "peak_mem_gib": 30.0, "loss_first": 7.0, "loss_last": 6.0, "loss_finite": True,
              "loss_fell": True, "masks_valid": True, "sparse_layers": 52}
    smoke = {"env": {"gpu": "NVIDIA H200", "torch": "2.14.1", "cuda": "13.0"}, "toy": False, "world_size": 8,
             "trainers": {t: {"srste_over_dense": 1.0312, "dense": dict(method), "srste": dict(method)}
                          for t in ("classify", "mmdet", "raft")}}
    smoke["metrics"] = flatten(smoke)
    (results / "gpu-smoke").mkdir()
    (results / "gpu-smoke" / "h200.json").write_text(json.dumps(smoke))
    page = parse(build_report(results).read_text())
    assert "imagenet-proxy" not in page.sections and page.sections["imagenet"]["status"] == "ok"
    text = section_text(page, "imagenet")
    # our 2:4 row (mean 76.75 over 2 seeds) beside the paper's 77.0 / 13.8M / 2.15G; rows we did not run say so
    assert re.search(r"resnet50/srste_2:4 2 76\.75 ± 0\.71 13\.83 2\.1 0\.0100 77\.0 13\.8 2\.15 paper", text), text[:3000]
    assert re.search(r"resnet50/dense not run .*? 77\.3 25\.6 4\.09 paper", text)
    assert "IMAGENET_ROWS=resnet50_srste_2_4 IMAGENET_ROOT=" in text
    assert "ResNet-50 SR-STE 2:4 >= 77.0 - 0.5" in text  # ci/thresholds/imagenet.yaml's checks
    sec = page.sections["gpu-smoke-h200"]
    assert sec["status"] == "ok" and "table" in sec["tags"] and "img" in sec["tags"]
    text = section_text(page, "gpu-smoke-h200")
    assert "classify 1.031" in text and "NVIDIA H200" in text and "checks passed" in text


def test_bad_results_json_is_named(tmp_path):
    results = copy_results(tmp_path)
    (results / "raft-proxy" / "results.json").write_text("{not json")
    problems: list = []
    html = build_report(results, problems=problems).read_text()  # the page is written around the bad file
    assert len(problems) == 1 and "raft-proxy/results.json is not valid JSON" in problems[0]
    assert 'id="raft-proxy" data-status="unreadable"' in html and "raft-proxy/results.json is not valid JSON" in html


# ------------------------------------------------------------------------------------------ methods (issue 25)
METHODS_COLUMNS = ("top-1 (%) (95% CI)", "top-1 (%): minus srste, paired (95% CI)", "verdicts (claims on this row)",
                   "SAD (final)", "CPU step time / dense", "valid N:M", "valid 2:4 (sparse tensor cores)", "transposable",
                   "published ResNet-50 top-1 (ImageNet)")


def write_methods_results(results: Path) -> None:
    """A results.json of make reproduce-methods on the ImageNet proxy with synthetic per-seed values: Bi-Mask 1 point
    above SR-STE at 1:16 on every seed (its noninferiority claim holds)."""
    from nm_plugins.runtime.results import provenance
    base = {str(s): 85.0 + 0.3 * ((s * 7) % 5) for s in range(5)}
    per_seed = {f"{m}_{p}": {"top1": {s: v + d + 0.01 * int(s) for s, v in base.items()}, "sad": {s: 0.05 for s in base}}
                for m, d in (("srste", 0.0), ("bimask", 1.0)) for p in ("1:8", "1:16")}
    masks = {row: {"runs": 5, "recorded": 5, "valid_nm": 5, "valid_2_4": None, "fits_2_4": 5, "transposable": 0}
             for row in per_seed}
    res = {"name": "methods-imagenet-proxy", "proxy": "imagenet_proxy", "smoke": False, "description": "synthetic",
           "per_seed": per_seed, "masks": masks, "metrics": {}, "reused_seeds": {},
           "bench": {"rows": {r: {"ratio_vs_dense": 1.5} for r in per_seed}, "what": "interleaved"},
           "leaderboard_metrics": [["top1", "top-1 (%)"], ["top5", "top-5 (%)"]], "provenance": provenance()}
    (results / "methods-imagenet-proxy").mkdir(parents=True, exist_ok=True)
    (results / "methods-imagenet-proxy" / "results.json").write_text(json.dumps(res))


def test_methods_section_renders_not_run_and_its_leaderboard(tmp_path):
    """Without results the methods sections say 'not run' with their command; with a results file the leaderboard
    shows the paired difference vs SR-STE, the claim's verdict, masks, step time and the published number."""
    results = copy_results(tmp_path)
    for d in ("methods-imagenet-proxy", "methods-translation-proxy"):
        shutil.rmtree(results / d, ignore_errors=True)
    page = parse(build_report(results, tmp_path / "a.html").read_text())
    assert page.sections["methods-imagenet-proxy"]["status"] == "not run"
    assert "make reproduce-methods" in section_text(page, "methods-translation-proxy")
    write_methods_results(results)
    page = parse(build_report(results, tmp_path / "b.html").read_text())
    text = section_text(page, "methods-imagenet-proxy")
    assert page.sections["methods-imagenet-proxy"]["status"] == "ok"
    assert re.search(r"bimask 1:16 5 86\.62 \[86\.02, 87\.22\] - \+1\.00 \[\+1\.00, \+1\.00\] - "
                     r"top1: holds 0\.0500 \[0\.0500, 0\.0500\] 1\.50x yes n/a \(fits the 2:4 format: yes\) no 71\.4", text), text
    assert "Bi-Mask not worse than SR-STE at 1:16" in text and "MaxQ beats SR-STE at 1:16" in text  # the claims table


@pytest.mark.skipif(browser.find_chromium() is None, reason="headless Chromium is not installed")
def test_chromium_shows_the_methods_leaderboard_columns(tmp_path):
    results = copy_results(tmp_path)
    for d in ("methods-imagenet-proxy", "methods-translation-proxy"):  # only the synthetic ImageNet board below
        shutil.rmtree(results / d, ignore_errors=True)
    write_methods_results(results)
    dom = browser.dump_dom(build_report(results, tmp_path / "index.html"))
    heads = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<thead>(.*?)</thead>", dom, re.S)]
    board = [h for h in heads if "CPU step time / dense" in h]
    assert len(board) == 1, heads
    for col in METHODS_COLUMNS:
        assert col in board[0], col
    assert any("published ImageNet" not in h and "1:16" in h and "source" in h for h in heads)  # the published table

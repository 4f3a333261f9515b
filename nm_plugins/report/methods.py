"""The report's section of ``make reproduce-methods`` (issue 25): the leaderboard of method x pattern
(nm_plugins.verdicts.leaderboard, recomputed from the per-seed values and the thresholds file) and each paper's
published ImageNet ResNet-50 top-1 beside it."""
from __future__ import annotations

from nm_plugins.report import collect as C

# (metric, label) when a results file does not name its leaderboard metrics
DEFAULT_METRICS = {"imagenet_proxy": [["top1", "top-1 (%)"], ["top5", "top-5 (%)"]],
                   "translation_proxy": [["test_nll", "test NLL"], ["chrf", "chrF"], ["bleu", "BLEU"]]}
SPECS = {"top1": ".2f", "top5": ".2f", "test_nll": ".3f", "chrf": ".2f", "bleu": ".2f"}


def methods(sec: dict, res: dict, href: str, spec: dict, ctx: dict) -> None:
    """The leaderboard table and the published numbers of the section of one proxy of the methods harness."""
    from nm_plugins.verdicts.leaderboard import leaderboard, table
    thresholds = ctx["thresholds_dir"] / f"{spec['thresholds']}{'_smoke' if res.get('smoke') else ''}.yaml"
    if not thresholds.is_file():
        thresholds = ctx["thresholds_dir"] / f"{spec['thresholds']}.yaml"
    tspec = C.load_yaml(thresholds) if thresholds.is_file() else {}
    if not tspec.get("published") and thresholds.name.endswith("_smoke.yaml"):
        full = ctx["thresholds_dir"] / f"{spec['thresholds']}.yaml"
        tspec = {**tspec, "published": (C.load_yaml(full) if full.is_file() else {}).get("published")}
    metrics = [tuple(m) for m in res.get("leaderboard_metrics") or DEFAULT_METRICS.get(res.get("proxy"), [])]
    rows = leaderboard(res, tspec, metrics)
    head, body = table(rows, metrics, SPECS)
    cells = [[C.text_cell(c) if i else C.cell(None, href, f'per_seed["{r["row"]}"]', text=c)
              for i, c in enumerate(line)] for r, line in zip(rows, body)]
    sec["tables"].append(C.table(head, cells, "leaderboard: mean over seeds [95% t-interval]; paired differences vs "
                                              "SR-STE at the same pattern; verdicts of this file's claims (Holm over the file)",
                                 (res.get("bench") or {}).get("what", "CPU step time not measured")))
    published = tspec.get("published") or {}
    if published:
        patterns = sorted({p for v in published.values() for p in ((v or {}).get("top1") or {})},
                          key=lambda p: (int(p.split(":")[1]), int(p.split(":")[0])))
        lines = [[C.text_cell(m)] + [C.text_cell(_pub((v or {}).get("top1") or {}, p)) for p in patterns]
                 + [C.text_cell((v or {}).get("source", "")), C.text_cell((v or {}).get("note") or "-")]
                 for m, v in published.items()]
        sec["reference"].append(C.table(["method"] + patterns + ["source", "note"], lines,
                                        "published ImageNet ResNet-50 top-1 (%) per pattern (issue 25's list, from the "
                                        "thresholds file): beside ours, not compared with the proxy's numbers"))
    sec["notes"].append("Seeds marked 'committed' are SR-STE/STE per-seed values taken from the committed "
                        f"results ({res.get('committed') or 'none'}) after a verification run reproduced them exactly: "
                        f"{_verified(res)}.")


def _pub(top1: dict, pattern: str) -> str:
    value = top1.get(pattern)
    return "-" if value is None else f"{value:.1f}"


def _verified(res: dict) -> str:
    v = res.get("verification")
    if not v:
        return "no verification run (nothing reused)"
    return f"{v['name']} equal in " + ", ".join(sorted(v.get("fields") or {}))

"""The reproductions the report covers, and the section of the page each results.json becomes: our table beside
the paper's (from the reference YAML), the thresholds' checks and claims, plots, environment and command."""
from __future__ import annotations

from nm_plugins.report import collect as C
from nm_plugins.report import plots as P
from nm_plugins.report.methods import methods

# One entry per results folder of a reproduction. ``replaced_by``: shown only while that (real) folder is absent.
REPRODUCTIONS = [
    {"group": "ImageNet classification", "id": "imagenet", "dir": "imagenet", "thresholds": "imagenet", "kind": "classification",
     "title": "ImageNet (ResNet-50 / ResNet-18 table)", "command": "IMAGENET_ROOT=/path/to/imagenet make reproduce-imagenet",
     "rows_env": "IMAGENET_ROWS", "paper": "imagenet"},
    {"group": "ImageNet classification", "id": "imagenet-proxy", "dir": "imagenet-proxy", "thresholds": "imagenet_proxy",
     "kind": "classification", "title": "Fashion-MNIST proxy of the ImageNet table", "command": "make reproduce-imagenet",
     "replaced_by": "imagenet", "paper": "imagenet"},
    {"group": "ImageNet classification", "id": "imagenet-proxy-study", "dir": "imagenet-proxy-study",
     "thresholds": "imagenet_proxy_study", "kind": "classification",
     "title": "High-sparsity study on the Fashion-MNIST proxy (1:8, 1:16; pre-registered plan)",
     "command": "make reproduce-imagenet-study", "paper": "imagenet"},
    {"group": "COCO detection", "id": "coco-det", "dir": "coco-det", "thresholds": "coco_det", "kind": "coco",
     "title": "Faster R-CNN R50-FPN on COCO 2017", "command": "COCO_ROOT=/path/to/coco make reproduce-coco-det",
     "rows_env": "COCO_ROWS", "paper": "COCO Faster"},
    {"group": "COCO detection", "id": "coco-det-proxy", "dir": "coco-det-proxy", "thresholds": "coco_det_proxy", "kind": "coco",
     "title": "Faster R-CNN proxy (Fashion-MNIST COCO-format set, CPU)", "command": "make reproduce-coco-det", "paper": "COCO Faster"},
    {"group": "COCO instance segmentation", "id": "coco-seg", "dir": "coco-seg", "thresholds": "coco_seg", "kind": "coco",
     "title": "Mask R-CNN R50-FPN on COCO 2017", "command": "COCO_ROOT=/path/to/coco make reproduce-coco-seg",
     "rows_env": "COCO_ROWS", "paper": "Mask R-CNN"},
    {"group": "COCO instance segmentation", "id": "coco-seg-proxy", "dir": "coco-seg-proxy", "thresholds": "coco_seg_proxy",
     "kind": "coco", "title": "Mask R-CNN proxy (Fashion-MNIST COCO-format set, CPU)", "command": "make reproduce-coco-seg",
     "paper": "Mask R-CNN"},
    {"group": "RAFT optical flow", "id": "raft", "dir": "raft", "thresholds": "raft", "kind": "raft",
     "title": "Sparse RAFT (raft_large) on FlyingChairs and later stages",
     "command": "CHAIRS_ROOT=/path/to/FlyingChairs make reproduce-raft", "paper": "RAFT"},
    {"group": "RAFT optical flow", "id": "raft-proxy", "dir": "raft-proxy", "thresholds": "raft_proxy", "kind": "raft",
     "title": "Sparse RAFT proxy (raft_small, synthetic FlyingChairs-like set, CPU)", "command": "make reproduce-raft",
     "paper": "RAFT"},
    {"group": "RAFT optical flow", "id": "raft-proxy-bf16", "dir": "raft-proxy-bf16", "thresholds": "raft_proxy", "kind": "raft",
     "title": "Sparse RAFT proxy in bf16 (CPU bf16 autocast; the same claims as the fp32 proxy)",
     "command": "RAFT_PRECISION=bf16 make reproduce-raft", "paper": "RAFT"},
    {"group": "Translation", "id": "translation", "dir": "translation", "thresholds": "translation", "kind": "translation",
     "title": "Transformer-base on WMT14 En-De", "command": "WMT_ROOT=/path/to/wmt14 make reproduce-translation",
     "rows_env": "WMT_ROWS", "paper": "Transformer"},
    {"group": "Translation", "id": "translation-proxy", "dir": "translation-proxy", "thresholds": "translation_proxy",
     "kind": "translation", "title": "Transformer proxy: English->German sentences of Debian's German message catalogs (CPU)",
     "command": "make reproduce-translation",
     "paper": "Transformer"},
    {"group": "N:M training methods", "id": "methods-imagenet-proxy", "dir": "methods-imagenet-proxy",
     "thresholds": "methods_imagenet_proxy", "kind": "methods",
     "title": "Methods leaderboard on the ImageNet proxy study (1:8, 1:16): SR-STE, STE, transposable, decaying, S-STE, Bi-Mask, MaxQ",
     "command": "make reproduce-methods", "paper": "methods"},
    {"group": "N:M training methods", "id": "methods-translation-proxy", "dir": "methods-translation-proxy",
     "thresholds": "methods_translation_proxy", "kind": "methods",
     "title": "Methods leaderboard on the translation proxy (2:4)", "command": "make reproduce-methods", "paper": "methods"},
]
# PNGs that the report draws afresh because what they show is computed here (the claims' verdicts)
REDRAWN = {"claims.png"}


def paper_statements(ref: dict, key: str) -> list:
    """The reference file's qualitative claims that concern one experiment (ImageNet: those naming no other task)."""
    claims = [c for c in ref.get("claims", []) or [] if isinstance(c, str)]
    others = ("COCO", "Mask R-CNN", "RAFT", "Transformer")
    if key == "imagenet":
        return [c for c in claims if not any(o in c for o in others)]
    return [c for c in claims if key in c]


def reproduction_section(spec: dict, ctx: dict) -> dict:
    """The section of one reproduction: 'not run' with its command when its results.json is absent."""
    folder = ctx["results_dir"] / spec["dir"]
    path = folder / "results.json"
    sec = {"id": spec["id"], "group": spec["group"], "title": spec["title"], "dir": f"results/{spec['dir']}/",
           "command": spec["command"], "statements": paper_statements(ctx["ref"], spec["paper"]),
           "tables": [], "reference": [], "plots": [], "links": [], "notes": []}
    if not path.is_file():
        return {**sec, "status": C.NOT_RUN}
    try:
        return _filled(sec, spec, ctx, folder, path)
    except C.BAD_FILE_ERRORS as e:
        return C.invalid_section(sec, path, e)


def _filled(sec: dict, spec: dict, ctx: dict, folder, path) -> dict:
    """``sec`` filled from the results.json at ``path`` (raises what a malformed file makes its readers raise)."""
    res = C.load_json(path)
    href = C.rel_href(path, ctx["out_dir"])
    sec.update(status="ok", json_href=href, smoke=bool(res.get("smoke")), environment=C.environment(res),
               description=res.get("description") or res.get("title") or "")
    stem = spec["thresholds"] + ("_smoke" if res.get("smoke") else "")
    thresholds = ctx["thresholds_dir"] / f"{stem}.yaml"
    if not thresholds.is_file():
        thresholds = ctx["thresholds_dir"] / f"{spec['thresholds']}.yaml"
    sec["judgement"] = C.judge(res, thresholds, href, C.rel_href(thresholds, ctx["out_dir"])) if thresholds.is_file() else None
    build = {"classification": classification, "coco": coco, "raft": raft, "translation": translation,
             "methods": methods}[spec["kind"]]
    build(sec, res, href, spec, ctx)
    if sec["judgement"]:
        uri = P.claims_svg(sec["judgement"]["claim_rows"], f"{spec['id']}: paper claims, paired differences A - B (95% t-interval)")
        if uri:
            sec["plots"].append({"title": "claims: paired differences over seeds (drawn from the verdicts above)", "uri": uri,
                                 "wide": True})
    for png in sorted(folder.glob("*.png")):
        if png.name not in REDRAWN:
            sec["plots"].append({"title": f"{png.name} (committed with the run)", "uri": P.png_uri(png),
                                 "wide": P.png_width(png) > 900})
    sec["links"] = [(f.name, C.rel_href(f, ctx["out_dir"])) for f in sorted(folder.iterdir())
                    if f.is_file() and f.suffix in (".json", ".md", ".png", ".txt", ".csv")]
    sec["all_metrics"] = C.all_metrics(res, href)
    return sec


def _row_names(res: dict, field: str) -> list:
    rows = [r.get(field) for r in res.get("rows", []) or [] if isinstance(r, dict) and r.get(field)]
    return rows or list(res.get("per_seed", {}) or {}) or list(res.get("runs", {}) if isinstance(res.get("runs"), dict) else [])


# ------------------------------------------------------------------------------------------ classification
def _paper_classification(ref: dict) -> dict:
    """{our row key, e.g. 'resnet50/srste_2:4': (reference entry, its path in the YAML)} of the paper's table."""
    out = {}
    for model in ("resnet50", "resnet18"):
        for i, e in enumerate(ref.get("imagenet", {}).get(model, []) or []):
            name = model + (f"x{str(e['width']).replace('.', '_')}" if e.get("width") else "")
            key = f"{name}/" + ("dense" if e["method"] == "dense" else f"{e['method']}_{e['pattern']}")
            out[key] = (e, f"imagenet.{model}[{i}]")
    return out


def classification(sec: dict, res: dict, href: str, spec: dict, ctx: dict) -> None:
    """ImageNet / its proxy: our rows beside the paper's top-1, Params and FLOPs; the other published figures."""
    proxy = "proxy" in spec["id"]
    paper = _paper_classification(ctx["ref"])
    rhref = ctx["ref_href"]
    ours = {r["key"]: r for r in res.get("rows", []) or []}
    match = {k: (f"resnet50/{k}" if proxy else k) for k in ours}
    rows = []
    for key, r in ours.items():
        e, where = paper.get(match[key], (None, None))
        rows.append(_class_row(key, r, href, e, where, rhref, spec, proxy))
    for pkey, (e, where) in paper.items():
        if pkey not in match.values() and not (proxy and not pkey.startswith("resnet50/")):
            rows.append(_class_row(pkey, None, href, e, where, rhref, spec, proxy))
    cols = ["row", "seeds", "top-1 (%)", "Params (M)", "FLOPs (G)", "final SAD", "paper top-1 (%)", "paper Params (M)",
            "paper FLOPs (G)", "source"] + (["reproduce this row"] if spec.get("rows_env") else [])
    note = ("Proxy: cifar_resnet8 on Fashion-MNIST, so absolute numbers are not comparable with the paper's ResNet-50 "
            "on ImageNet; the paper columns show the row of the same method and pattern. Compare differences between rows."
            if proxy else "Our numbers: mean ± std over seeds. Paper: ci/reference/paper_tables.yaml (imagenet).")
    sec["tables"].append(C.table(cols, rows, "ours beside the paper", note))
    extra = []
    for section in ("resnet50_repo_model_zoo", "outside_reproductions"):
        for i, e in enumerate(ctx["ref"].get("imagenet", {}).get(section, []) or []):
            v = e.get("top1", e.get("top1_range"))
            extra.append([C.text_cell(section), C.text_cell(" ".join(str(e[k]) for k in ("model", "method", "pattern") if e.get(k))),
                          C.cell(v, rhref, f"imagenet.{section}[{i}]", text=str(v)),
                          C.text_cell(e.get("source", "repo" if "repo" in section else "")), C.text_cell(e.get("note", "-"))])
    if proxy:
        for i, e in enumerate(ctx["ref"].get("fashion_mnist", {}).get("dense_test_accuracy", []) or []):
            extra.append([C.text_cell("Fashion-MNIST dense baselines"), C.text_cell(e.get("model")),
                          C.cell(e.get("top1"), rhref, f"fashion_mnist.dense_test_accuracy[{i}]"),
                          C.text_cell("dataset README (submitted benchmarks)"), C.text_cell("-")])
    sec["reference"].append(C.table(["list", "row", "top-1 (%)", "source", "note"], extra, "other published figures"))
    rows_ok = [r for r in res.get("rows", []) or [] if "top1_mean" in r and "density" in r]
    if rows_ok and not (ctx["results_dir"] / spec["dir"] / "accuracy_vs_density.png").is_file():
        sec["plots"].append({"title": "accuracy vs density", "uri": P.accuracy_vs_density(rows_ok, f"{spec['id']}: accuracy vs density")})
    if rows_ok and not (ctx["results_dir"] / spec["dir"] / "sad_over_training.png").is_file():
        sec["plots"].append({"title": "SAD over training", "uri": P.sad_curves(rows_ok, f"{spec['id']}: SAD over training")})


def _class_row(key, r, href, e, where, rhref, spec, proxy) -> list:
    def paper_cell(field):
        if e is None:
            return C.text_cell("-")
        return C.cell(e[field], rhref, f"{where}.{field}", text=str(e[field])) if e.get(field) is not None else C.text_cell("-")
    if r is None:
        absent = {"text": "not in the proxy grid" if proxy else C.NOT_RUN, "cls": "notrun"}
        ours = [absent, absent, absent, absent, absent, absent]
    else:
        std = r.get("top1_std")
        ours = [C.text_cell(str(len(r.get("seeds", [])) or "-")),
                C.cell(r.get("top1_mean"), href, f'metrics["{key}/top1_mean"]',
                       text=f"{r['top1_mean']:.2f}" + (f" ± {std:.2f}" if std is not None else "")),
                C.cell(r.get("params_m"), href, f'metrics["{key}/params_m"]', ".4g"),
                C.cell(r.get("gflops"), href, f'metrics["{key}/gflops"]', ".4g"),
                C.cell(r.get("sad_final_mean"), href, f'metrics["{key}/sad_mean"]', ".4f")]
    row = [C.text_cell(key)] + ours[:5] + [paper_cell("top1"), paper_cell("params_m"), paper_cell("gflops"),
                                            C.text_cell(e.get("source") if e else "no paper figure")]
    if spec.get("rows_env"):
        row.append(C.text_cell(f"{spec['rows_env']}={key.replace('/', '_').replace(':', '_')} {spec['command']}"))
    return row


# ------------------------------------------------------------------------------------------------- COCO
COCO_COLUMNS = [("box_mAP", "box mAP", ".1f"), ("box_mAP50", "box mAP50", ".1f"), ("mask_mAP", "mask mAP", ".1f"),
                ("mask_mAP50", "mask mAP50", ".1f"), ("backbone_params_m", "backbone Params (M)", ".4g"),
                ("backbone_gflops", "backbone FLOPs (G)", ".4g"), ("flops_ratio", "FLOPs / dense", ".3f"),
                ("kept_share", "kept share", ".3f"), ("sad_init", "SAD vs init", ".3f"), ("masks_valid", "masks valid", ".0f"),
                ("iterations", "iterations", ".0f")]


def _no_paper_numbers(sec: dict, what: str) -> None:
    sec["notes"].append(f"The reference file (ci/reference/paper_tables.yaml) holds no {what} numbers of the paper, "
                        "so there is no paper column: the sparse rows are judged against our own dense row.")


def coco(sec: dict, res: dict, href: str, spec: dict, ctx: dict) -> None:
    """COCO detection / segmentation: mAP, backbone Params/FLOPs per row, and a mAP plot."""
    rows = _row_names(res, "name")
    sec["tables"].append(C.pivot(res, rows, COCO_COLUMNS, href, "ours"))
    _no_paper_numbers(sec, "COCO")
    m = res.get("metrics", {}) or {}
    series = {lab: {r: m[f"{r}/{k}"] for r in rows if f"{r}/{k}" in m} for k, lab in
              (("box_mAP", "box mAP"), ("mask_mAP", "mask mAP"))}
    series = {k: v for k, v in series.items() if v}
    per_seed = res.get("per_seed", {}) or {}
    points = {lab: {r: list(per_seed.get(r, {}).get(k, {}).values()) for r in rows} for k, lab in
              (("box_mAP", "box mAP"), ("mask_mAP", "mask mAP"))}
    if series:
        sec["plots"].append({"title": "mAP per row", "uri": P.bars(series, f"{spec['id']}: mAP (%)", "mAP (%)", points=points)})


# ------------------------------------------------------------------------------------------------- RAFT
RAFT_COLUMNS = [("epe", "EPE", ".3f"), ("*epe", "", ".3f"), ("1px", "1px (%)", ".1f"), ("3px", "3px (%)", ".1f"),
                ("5px", "5px (%)", ".1f"), ("fl_all", "Fl-all (%)", ".1f"), ("sad", "SAD", ".3f"),
                ("params", "Params", ",.0f"), ("flops", "FLOPs", ",.0f"), ("params_ratio", "Params / dense", ".3f"),
                ("flops_ratio", "FLOPs / dense", ".3f"), ("masks_valid", "masks valid", ".0f")]


def raft(sec: dict, res: dict, href: str, spec: dict, ctx: dict) -> None:
    """RAFT: EPE and pixel-error rates per run (and the zero-flow baseline), the authors' 0.88 EPE beside."""
    rows = _row_names(res, "name")
    extra = [k.split("/", 1)[0] for k in res.get("metrics", {}) if k.split("/", 1)[0] not in rows and "/" in k]
    rows = rows + list(dict.fromkeys(extra))
    sec["tables"].append(C.pivot(res, rows, RAFT_COLUMNS, href, "ours (metrics: means over seeds)"))
    ref = (ctx["ref"].get("raft", {}) or {}).get("flyingchairs_val_epe", {}) or {}
    proxy = "proxy" in spec["id"]
    key = "srste_2:4/after_chairs/chairs/epe"
    ours = C.text_cell("no counterpart: the proxy is raft_small on a synthetic set") if proxy else (
        C.cell(res["metrics"][key], href, f'metrics["{key}"]', ".3f") if key in res.get("metrics", {}) else
        {"text": C.NOT_RUN, "cls": "notrun"})
    sec["reference"].append(C.table(["setting", "paper", "ours", "source", "note"], [[
        C.text_cell("FlyingChairs val EPE, 2:4 sparse RAFT"),
        C.cell(ref.get("sparse_2_4"), ctx["ref_href"], "raft.flyingchairs_val_epe.sparse_2_4", text=str(ref.get("sparse_2_4"))), ours,
        C.text_cell(ref.get("source")), C.text_cell(ref.get("note"))]], "the paper's figure"))
    vs = res.get("vs_fp32") or {}
    if vs:
        sec["tables"].append(C.table(["run", "seeds", f"EPE {res.get('precision', 'this')} - fp32 (mean)", "95% t-interval"], [[
            C.text_cell(name), C.text_cell(str(d.get("n"))),
            C.cell(d.get("mean"), href, f'vs_fp32["{name}"]["mean"]', "+.4f"),
            C.text_cell("-" if d.get("lo") is None else f"[{d['lo']:+.4f}, {d['hi']:+.4f}]")] for name, d in vs.items()],
            "paired over seeds against the committed fp32 proxy run (results/raft-proxy)"))
    per_seed = res.get("per_seed", {}) or {}
    m = res.get("metrics", {}) or {}
    epe = {r: m[f"{r}/epe"] for r in rows if f"{r}/epe" in m}
    if epe:
        zero = epe.pop("zero_flow", None)
        sec["plots"].append({"title": "EPE per run (bars: mean over seeds; dots: seeds)", "uri": P.bars(
            {"EPE": epe}, f"{spec['id']}: end-point error (lower is better)", "EPE (px)", ref=zero,
            ref_label="predicting zero flow" if zero is not None else "",
            points={"EPE": {r: list(per_seed.get(r, {}).get("epe", {}).values()) for r in epe}})})


# ------------------------------------------------------------------------------------------- translation
TRANSLATION_COLUMNS = [("bleu_mean", "BLEU", ".2f"), ("bleu_tok_mean", "tokenized BLEU", ".2f"), ("chrf_mean", "chrF", ".1f"),
                       ("valid_loss_mean", "valid NLL", ".3f"), ("test_nll_mean", "test NLL", ".3f"), ("sad_mean", "SAD", ".3f"),
                       ("params_m", "Params (M)", ".4g"),
                       ("mflops", "MACs / pair (M)", ".4g")]


def translation(sec: dict, res: dict, href: str, spec: dict, ctx: dict) -> None:
    """Translation: BLEU / chrF / validation NLL per row (means over seeds)."""
    rows = _row_names(res, "key")
    t = C.pivot(res, rows, TRANSLATION_COLUMNS, href, "ours (means over seeds)")
    seeds = {r["key"]: len(r.get("seeds", [])) for r in res.get("rows", []) or [] if isinstance(r, dict) and "key" in r}
    if seeds and "seeds" not in t["columns"]:
        t["columns"].insert(1, "seeds")
        for name, line in zip(rows, t["rows"]):
            line.insert(1, C.text_cell(str(seeds.get(name, "-"))))
    sec["tables"].append(t)
    _translation_baselines(sec, res, href)
    _no_paper_numbers(sec, "translation (BLEU)")
    if not (ctx["results_dir"] / spec["dir"] / "plot.png").is_file():
        m = res.get("metrics", {}) or {}
        bleu = {r: m[f"{r}/bleu_mean"] for r in rows if f"{r}/bleu_mean" in m}
        if bleu:
            sec["plots"].append({"title": "BLEU per row", "uri": P.bars({"BLEU": bleu}, f"{spec['id']}: BLEU", "BLEU")})


def _translation_baselines(sec: dict, res: dict, href: str) -> None:
    """The proxy's baselines beside the models (same test set), dense vs retrieval, and sample translations."""
    base, rows = res.get("baselines") or {}, res.get("rows") or []
    if not base:
        return
    def interval(r, m, spec):
        lo, hi = r.get(f"{m}_ci95") or [None, None]
        mean = r.get(f"{m}_mean")
        return C.text_cell("-" if mean is None else format(mean, spec) + ("" if lo is None else
                                                                          f" [{format(lo, spec)}, {format(hi, spec)}]"))

    cells = [[C.text_cell(f"{r['key']} ({len(r.get('seeds', []))} seeds)"), interval(r, "bleu", ".2f"), interval(r, "chrf", ".1f"),
              interval(r, "test_nll", ".3f"), interval(r, "valid_loss", ".3f")] for r in rows]
    for name, b in base.items():
        cells.append([C.text_cell(f"baseline: {name}"), C.cell(b.get("bleu"), href, f"baselines.{name}.bleu", ".2f"),
                      C.cell(b.get("chrf"), href, f"baselines.{name}.chrf", ".1f"), C.text_cell("-"), C.text_cell("-")])
    vs = res.get("dense_vs_retrieval") or {}
    note = "; ".join(f"dense - retrieval {m}: {v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}] (95% paired bootstrap over "
                     f"test sentences, {v['resamples']} resamples, mean of {v['systems_a']} dense seeds)" for m, v in vs.items())
    sec["tables"].append(C.table(["system", "BLEU", "chrF", "test NLL", "valid NLL"], cells,
                                 "models (mean over seeds [95% t-interval]) beside the baselines on the same test set", note))
    samples = res.get("samples") or []
    if samples:
        keys = [k for k in samples[0] if k not in ("src", "ref")]
        sec["tables"].append(C.table(["source", "reference"] + keys,
                                     [[C.text_cell(x["src"]), C.text_cell(x["ref"])] + [C.text_cell(x.get(k)) for k in keys]
                                      for x in samples], "sample translations (seed 0 of each row; evenly spaced test sentences)"))

"""Sections of the measurements: CPU benchmarks (``results/bench/cpu.json``, ``results/loader/``) and GPU
throughput / gpu-smoke per GPU (``results/throughput/*.json``, ``results/gpu-smoke/*.json``)."""
from __future__ import annotations

from nm_plugins.report import collect as C
from nm_plugins.report import plots as P


def _base(id_, group, title, folder, command, ctx) -> dict:
    return {"id": id_, "group": group, "title": title, "dir": f"results/{folder}/", "command": command, "statements": [],
            "tables": [], "reference": [], "plots": [], "links": [], "notes": []}


def _loaded(sec: dict, path, ctx) -> tuple:
    res = C.load_json(path)
    href = C.rel_href(path, ctx["out_dir"])
    sec.update(status="ok", json_href=href, environment=C.environment(res), description=res.get("note", ""),
               all_metrics=C.all_metrics(res, href) if res.get("metrics") else None, judgement=None,
               links=[(f.name, C.rel_href(f, ctx["out_dir"])) for f in sorted(path.parent.iterdir()) if f.suffix in (".json", ".md", ".txt")
                      and (f.stem in (path.stem, f"{path.stem}_log", f"check_{path.stem}"))] +
                     [(f"{f.name} (notes on every file here)", C.rel_href(f, ctx["out_dir"])) for f in
                      (path.parent / "README.md", path.parent / "NOTES.md") if f.is_file()])
    return res, href


def _thresholds(sec, res, href, stem, ctx) -> None:
    path = ctx["thresholds_dir"] / f"{stem}.yaml"
    if path.is_file():
        sec["judgement"] = C.judge(res, path, href, C.rel_href(path, ctx["out_dir"]))
    else:
        sec["notes"].append(f"No thresholds file ci/thresholds/{stem}.yaml for this file: its figures are not checked.")


def _file_sections(ctx, folder, group, what, command, title, fill) -> list:
    """One section per JSON file of ``results/<folder>/``, titled ``title(res, path)`` and filled by
    ``fill(sec, res, href, path)``; one "not run" section about ``what`` when the folder holds none."""
    directory = ctx["results_dir"] / folder
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        return [{**_base(folder, group, what, folder, command, ctx), "status": C.NOT_RUN}]
    out = []
    for path in files:
        sec = _base(f"{folder}-{path.stem}", group, path.name, folder, command, ctx)
        try:
            res, href = _loaded(sec, path, ctx)
            sec["title"] = title(res, path)
            fill(sec, res, href, path)
        except C.BAD_FILE_ERRORS as e:
            sec = C.invalid_section(sec, path, e)
        out.append(sec)
    return out


def bench_section(ctx: dict) -> dict:
    """``make bench``: the ratios of ``benchmarks.report`` (the code that prints them) and every benchmark's timings."""
    sec = _base("bench-cpu", "CPU benchmarks", "SR-STE / dense step cost and nm_mask speed (pytest-benchmark, CPU)",
                "bench", "make bench", ctx)
    path = ctx["results_dir"] / "bench" / "cpu.json"
    if not path.is_file():
        return {**sec, "status": C.NOT_RUN}
    try:
        return _bench_filled(sec, path, ctx)
    except C.BAD_FILE_ERRORS as e:
        return C.invalid_section(sec, path, e)


def _bench_filled(sec: dict, path, ctx: dict) -> dict:
    res, href = _loaded(sec, path, ctx)
    from nm_plugins.report.bench_ratios import load_stats, rows
    stats, _ = load_stats(path)
    lines = []
    for label, med, low, target, verdict in rows(stats):
        ran = med is not None
        lines.append([C.text_cell(label), C.cell(med, href, "benchmarks[].stats.median", ".3f") if ran else
                      {"text": C.NOT_RUN, "cls": "notrun"}, C.cell(low, href, "benchmarks[].stats.min", ".3f") if ran else
                      {"text": C.NOT_RUN, "cls": "notrun"}, C.text_cell(target or "-"),
                      {"text": verdict or "-", "cls": "fail" if "MISSES" in verdict else "ok" if verdict == "meets target" else ""}])
    judged = [v for *_, v in rows(stats) if v in ("meets target", "MISSES target")]
    sec["targets"] = (judged.count("meets target"), len(judged))
    sec["tables"].append(C.table(["ratio", "median", "min", "target", "verdict"], lines,
                                 "ratios (python -m benchmarks.report results/bench/cpu.json)"))
    raw = [[C.text_cell(b["name"]), C.cell(b["stats"]["median"] * 1e3, href, f'benchmarks["{b["name"]}"].stats.median', ".2f"),
            C.cell(b["stats"]["min"] * 1e3, href, f'benchmarks["{b["name"]}"].stats.min', ".2f"),
            C.text_cell(str(b["stats"].get("rounds", "-")))] for b in res.get("benchmarks", [])]
    sec["tables"].append(C.table(["benchmark", "median (ms)", "min (ms)", "rounds"], raw, "every benchmark"))
    return sec


def loader_sections(ctx: dict) -> list:
    """``make loader-bench``: images/s of the ImageNet loader per decode mode and worker count, one section a file."""
    def fill(sec, res, href, path):
        lines = [[C.text_cell(r.get("decode")), C.text_cell(str(r.get("workers"))), C.text_cell(r.get("device")),
                  C.cell(r.get("images_per_s"), href, f"runs[{i}].images_per_s", ".1f"),
                  C.cell(r.get("images_per_process_cpu_s"), href, f"runs[{i}].images_per_process_cpu_s", ".1f"),
                  C.cell(r.get("images"), href, f"runs[{i}].images")] for i, r in enumerate(res.get("runs", []))]
        sec["tables"].append(C.table(["decode", "workers", "device", "images/s", "images per process CPU-second", "images"],
                                     lines, f"{res.get('images', '?')} JPEGs of {res.get('mean_kb', 0):.0f} kB on average, "
                                            f"batch {res.get('batch', '?')}"))

    return _file_sections(ctx, "loader", "CPU benchmarks", "ImageNet loader images/s", "make loader-bench",
                          lambda res, path: f"ImageNet loader images/s ({path.stem})", fill)


def _gpu_title(res: dict, path) -> str:
    gpu = (res.get("env") or {}).get("gpu") or path.stem
    return f"{'CPU' if gpu == 'cpu' else gpu} ({path.name})"


def throughput_sections(ctx: dict) -> list:
    """``make throughput``: training-step and 2:4 inference ratios per GPU file, checked against its thresholds."""
    def fill(sec, res, href, path):
        m = res.get("metrics", {}) or {}
        train = [f"train/{k}" for k in res.get("train", {}) or {}]
        infer = [f"infer/{k}" for k in res.get("inference", {}) or {}]
        if train:
            sec["tables"].append(C.pivot(res, train, [("dense_ms", "dense (ms)", ".2f"), ("srste_ms", "SR-STE (ms)", ".2f"),
                                                      ("ste_ms", "STE (ms)", ".2f"), ("*_over_dense", "", ".3f")],
                                         href, "training step (median ms) and ratios to dense", "model", seeds=False))
        if infer:
            sec["tables"].append(C.pivot(res, infer, [("dense_graph_ms", "dense graph (ms)", ".2f"),
                                                      ("fast_graph_ms", "2:4 export graph (ms)", ".2f"),
                                                      ("*_speedup", "", ".3f"), ("fast_graph_sparse_layers", "sparse layers", "")],
                                         href, "inference: speed-up over dense (>1 = faster)", "model / dtype / batch",
                                         seeds=False))
        if res.get("errors"):
            sec["notes"].append("Errors recorded in the file: " + "; ".join(map(str, res["errors"])))
        if "cpu" in res and isinstance(res["cpu"], dict):
            sec["notes"].append("A machine without CUDA: only the CPU part of make throughput ran (all metrics below).")
        _thresholds(sec, res, href, f"throughput_{path.stem}", ctx)
        series = {lab: {k.split("/", 1)[1]: m[f"{k}/{suf}"] for k in train if f"{k}/{suf}" in m}
                  for suf, lab in (("srste_over_dense", "SR-STE / dense"), ("ste_over_dense", "STE / dense"))}
        if any(series.values()):
            sec["plots"].append({"title": "training step ratio to dense", "uri": P.bars(
                {k: v for k, v in series.items() if v}, f"{path.stem}: training step / dense step (lower is better)",
                "ratio", ref=1.0, ref_label="dense")})
        inf = {lab: {k.split("/", 1)[1]: m[f"{k}/{suf}"] for k in infer if f"{k}/{suf}" in m}
               for suf, lab in (("fast_graph_speedup", "measured 2:4 export (CUDA graph)"),
                                ("semi_graph_speedup", "to_semi_structured (CUDA graph)"))}
        if any(inf.values()):
            sec["plots"].append({"title": "2:4 inference speed-up", "uri": P.bars(
                {k: v for k, v in inf.items() if v}, f"{path.stem}: inference speed-up over dense (higher is better)",
                "speed-up", ref=1.0, ref_label="dense")})

    return _file_sections(ctx, "throughput", "GPU throughput", "training-step and 2:4 inference throughput",
                          "make throughput", _gpu_title, fill)


def throughput_reference(ctx: dict) -> list:
    """The reference file's hardware figures (a lent H200, not the paper), each linked to the YAML."""
    hw = ctx["ref"].get("hardware") or {}
    rows = [[C.text_cell(k), C.cell(v, ctx["ref_href"], f"hardware.{k}", text=str(v))] for k, v in C.flatten(hw)]
    return [C.table(["figure", "value"], rows, "reference figures (ci/reference/paper_tables.yaml, hardware: measured on a "
                                               "lent NVIDIA H200 with PyTorch 2.11 + cuSPARSELt 0.8.0, not the paper)")] if rows else []


def gpu_smoke_sections(ctx: dict) -> list:
    """``make gpu-smoke``: each reproduction's real-data path per GPU, checked against gpu_smoke_<gpu>.yaml."""
    def fill(sec, res, href, path):
        trainers = list(res.get("trainers", {}) or {})
        sec["tables"].append(C.pivot(res, trainers, [("srste_over_dense", "SR-STE / dense step", ".3f"),
                                                     ("dense/images_per_s*", "", ".1f"), ("srste/images_per_s*", "", ".1f"),
                                                     ("loader_gpu_decode/images_per_s", "loader (GPU decode) images/s", ".1f"),
                                                     ("*peak*", "", ".2f")], href, "per trainer", "trainer", seeds=False))
        for t, r in (res.get("trainers", {}) or {}).items():
            if isinstance(r, dict) and r.get("error"):
                sec["notes"].append(f"{t}: {r['error']}")
        _thresholds(sec, res, href, f"gpu_smoke_{path.stem}", ctx)
        m = res.get("metrics", {}) or {}
        ratio = {t: m[f"{t}/srste_over_dense"] for t in trainers if f"{t}/srste_over_dense" in m}
        if ratio:
            sec["plots"].append({"title": "SR-STE / dense step per trainer", "uri": P.bars(
                {"SR-STE / dense": ratio}, f"{path.stem}: SR-STE 2:4 step / dense step", "ratio", ref=1.0, ref_label="dense")})

    return _file_sections(ctx, "gpu-smoke", "GPU smoke", "each reproduction's real-data path on GPUs", "make gpu-smoke",
                          _gpu_title, fill)

"""``make reproduce-translation``: Transformer N:M translation on WMT14 En-De, or its Debian-catalog proxy.

Environment:
  WMT_ROOT        WMT14 En-De raw text (layout: nm_plugins/translation/data.py): train every
                  configs/translation/wmt14_en_de_*.yaml row through torchrun (resuming a row from its checkpoint),
                  then check ci/thresholds/translation.yaml. Unset: the proxy grid (dense, SR-STE 2:4, STE 2:4,
                  SR-STE 4:8) x 5 seeds on English -> German sentences of Debian's German gettext catalogs
                  (configs/translation/proxy_catalogs_en_de.yaml), with the copy and retrieval baselines on the same
                  test set, checked against ci/thresholds/translation_proxy.yaml. A run whose summary.json exists
                  (same config) is not run again, so an interrupted grid resumes.
  NPROC_PER_NODE  processes for torchrun (default: number of GPUs, else 1).
  SMOKE=1         a short version (proxy: a tiny model for 40 updates, < 2 minutes; WMT: a few updates per row).
  RESULTS_DIR     where results.json/results.md/plot/examples go (default results/translation-proxy or
                  results/translation; SMOKE: runs/translation-proxy-smoke or runs/translation-smoke).
  WMT_ROWS        comma-separated config names to run a subset of the WMT rows (default: all).
  WMT_OVERRIDES   extra section.key=value overrides for every WMT row, space-separated.
  RUNS_DIR        where per-run folders go (default runs/).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nm_plugins.runtime.grid import only, run_or_reuse
from nm_plugins.runtime.cli import reproduce_parser
from nm_plugins.runtime.project import project_root, require_project
from nm_plugins.runtime.results import save_figure, write_results_json, write_text

REPO = project_root()  # configs/ and ci/thresholds/ (NM_SPARSITY_ROOT, see nm_plugins.runtime.project)
PROXY_CONFIG = REPO / "configs" / "translation" / "proxy_catalogs_en_de.yaml"
WMT_CONFIGS = REPO / "configs" / "translation"
PROXY_GRID = [("dense", "2:4"), ("srste", "2:4"), ("ste", "2:4"), ("srste", "4:8")]
PROXY_SEEDS = (0, 1, 2, 3, 4)  # paired over seeds: the claims' 95% t-intervals need several
SMOKE_SEEDS = (0,)
# The SMOKE schedule: a tiny model on a subset, 40 updates, decoding a 150-sentence test subset.
PROXY_SMOKE_OVERRIDES = ["model.d_model=64", "model.ffn=128", "model.heads=2", "model.enc_layers=1", "model.dec_layers=1",
                         "data.train_subset=20000", "data.test_subset=150", "data.valid_subset=300", "optim.max_steps=40",
                         "optim.warmup_steps=10", "train.log_every=10", "train.eval_every=20", "train.ckpt_every=20",
                         "data.max_tokens=1500", "decode.beam=2"]
WMT_SMOKE_OVERRIDES = ["optim.max_steps=20", "optim.warmup_steps=5", "train.log_every=5", "train.eval_every=10",
                       "train.ckpt_every=10", "data.test_subset=50", "data.valid_subset=50"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _runs_root() -> Path:
    return Path(os.environ.get("RUNS_DIR") or REPO / "runs")


def row_key(summary: dict) -> str:
    """``dense`` / ``srste_2:4`` / ``ste_2:4``."""
    return "dense" if summary["method"] == "dense" else f"{summary['method']}_{summary['pattern']}"


def aggregate(summaries: list, name: str, extra: dict) -> dict:
    """Rows (mean/std over seeds) and the flat ``metrics`` that ci.check reads."""
    import statistics

    from nm_plugins.runtime.results import machine_info
    from nm_plugins.verdicts.claims import t_interval
    groups: dict = {}
    for s in summaries:
        groups.setdefault(row_key(s), []).append(s)
    rows, metrics = [], {}
    for key, runs in groups.items():
        row = {"key": key, "method": runs[0]["method"], "pattern": runs[0]["pattern"], "seeds": [r["seed"] for r in runs],
               "params": runs[0]["params"], "flops": runs[0]["flops"],
               "flops_output_projection": runs[0]["flops_output_projection"], "params_embedding": runs[0]["params_embedding"],
               "seconds": [r["seconds"] for r in runs], "masks_sha": [r["masks_sha"] for r in runs]}
        for m in ("bleu", "chrf", "bleu_tok", "sad_final", "valid_loss", "test_nll"):
            values = [r.get(m) for r in runs]
            if any(v is None for v in values):  # test_nll: not in WMT summaries written before it existed
                continue
            row[m] = values
            row[f"{m}_mean"] = statistics.fmean(values)
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            ci = t_interval(values)
            row[f"{m}_ci95"] = [ci["lo"], ci["hi"]]
            if ci["lo"] is not None:
                metrics[f"{key}/{m}_ci_lo"], metrics[f"{key}/{m}_ci_hi"] = ci["lo"], ci["hi"]
        if "test_nll_mean" in row:
            metrics[f"{key}/test_nll_mean"] = row["test_nll_mean"]
        rows.append(row)
        metrics.update({f"{key}/bleu_mean": row["bleu_mean"], f"{key}/chrf_mean": row["chrf_mean"],
                        f"{key}/bleu_tok_mean": row["bleu_tok_mean"], f"{key}/sad_mean": row["sad_final_mean"],
                        f"{key}/bleu_min": min(row["bleu"]), f"{key}/params_m": row["params"] / 1e6,
                        f"{key}/valid_loss_mean": row["valid_loss_mean"],
                        f"{key}/mflops": row["flops"] / 1e6})
    return {"name": name, "rows": rows, "metrics": metrics, "runs": summaries, "machine": machine_info(),
            "signatures": summaries[0]["signatures"], "per_seed": per_seed_values(summaries), **extra}


def per_seed_values(summaries: list) -> dict:
    """{row: {"bleu"|"bleu_tok"|"chrf"|"valid_loss"|"test_nll"|"sad": {seed: value}}} of run summaries, for the paired claim statistics."""
    out: dict = {}
    for s in summaries:
        row = out.setdefault(row_key(s), {})
        for metric, key in (("bleu", "bleu"), ("bleu_tok", "bleu_tok"), ("chrf", "chrf"), ("valid_loss", "valid_loss"),
                            ("sad", "sad_final"), ("test_nll", "test_nll")):
            if s.get(key) is not None:
                row.setdefault(metric, {})[str(s["seed"])] = s[key]
    return out


def finish(results: dict, results_dir: Path, thresholds: Path) -> int:
    """The paper's claims on the per-seed values (ci/claims.py), results.json/md and plots written, then ci.check."""
    from nm_plugins.runtime.reproduce import claim_rows, write_claims
    results["claims"] = claim_rows(results["per_seed"], thresholds)
    paths = write_results(results, results_dir)
    write_claims(results["claims"], results_dir)
    print(paths["markdown"].read_text())
    return run_check(paths["json"], thresholds)


def write_results(results: dict, out: Path) -> dict:
    """results.json, results.md (table, examples, signatures), examples.md and plot.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(out / "results.json", results)
    lines = [f"# {results['name']}", "", results.get("description", ""), "",
             "| row | seeds | BLEU | chrF | tokenized BLEU | SAD (final, norm.) | valid NLL | test NLL | Params | MACs / pair (20+20 tok.) | s / run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["rows"]:
        pm = lambda m: f"{r[m + '_mean']:.2f} ± {r[m + '_std']:.2f}"  # noqa: E731
        test_nll = f"{r['test_nll_mean']:.3f} ± {r['test_nll_std']:.3f}" if "test_nll_mean" in r else "-"
        lines.append(f"| {r['key']} | {len(r['seeds'])} | {pm('bleu')} | {pm('chrf')} | {pm('bleu_tok')} | "
                     f"{r['sad_final_mean']:.4f} | {r['valid_loss_mean']:.3f} ± {r['valid_loss_std']:.3f} | {test_nll} | {r['params'] / 1e6:.3f}M | "
                     f"{r['flops'] / 1e6:.2f}M | {sum(r['seconds']) / len(r['seconds']):.0f} |")
    first = results["rows"][0]
    lines += ["", f"Params and MACs count kept weights only; the tied embedding / output projection is dense "
              f"({first['params_embedding'] / 1e6:.3f}M params, {first['flops_output_projection'] / 1e6:.2f}M of the MACs).",
              "", "sacrebleu signatures: " + "; ".join(f"{k}: `{v}`" for k, v in results["signatures"].items()), ""]
    lines += baseline_lines(results)
    write_text(out / "results.md", "\n".join(lines) + "\n")
    ex = ["# Example translations (first test sentences, seed " + str(results["runs"][0]["seed"]) + ")", ""]
    seen = set()
    for s in results["runs"]:
        if row_key(s) in seen:
            continue
        seen.add(row_key(s))
        ex += [f"## {row_key(s)}", "", "| source | reference | translation |", "| --- | --- | --- |"]
        ex += [f"| {e['src']} | {e['ref']} | {e['hyp']} |".replace("\n", " ") for e in s["examples"]]
        ex.append("")
    write_text(out / "examples.md", "\n".join(ex))
    plot = out / "plot.png"
    _plot(results, plot)
    return {"json": out / "results.json", "markdown": out / "results.md", "examples": out / "examples.md", "plot": plot}


def baseline_lines(results: dict) -> list:
    """Markdown of the proxy's baselines beside the rows (95% t-intervals over seeds), dense vs retrieval (paired
    bootstrap over test sentences) and sample translations; none for results without baselines (WMT)."""
    if not results.get("baselines"):
        return []
    ci = lambda r, m, f: (f"{r[m + '_mean']:{f}} [{r[m + '_ci95'][0]:{f}}, {r[m + '_ci95'][1]:{f}}]"  # noqa: E731
                          if r.get(m + "_ci95") and r[m + "_ci95"][0] is not None else f"{r[m + '_mean']:{f}}")
    lines = ["## Models beside the baselines (same test set; mean over seeds [95% t-interval])", "",
             "| system | BLEU | chrF | test NLL | valid NLL |", "| --- | --- | --- | --- | --- |"]
    for r in results["rows"]:
        lines.append(f"| {r['key']} | {ci(r, 'bleu', '.2f')} | {ci(r, 'chrf', '.1f')} | {ci(r, 'test_nll', '.3f')} | "
                     f"{ci(r, 'valid_loss', '.3f')} |")
    for name, b in results["baselines"].items():
        lines.append(f"| baseline: {name} | {b['bleu']:.2f} | {b['chrf']:.1f} | - | - |")
    lines.append("")
    for m, v in results.get("dense_vs_retrieval", {}).items():
        lines.append(f"- dense - retrieval, {m}: {v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}] (95% paired bootstrap over "
                     f"test sentences, {v['resamples']} resamples, mean of {v['systems_a']} dense seeds vs retrieval)")
    c = results.get("corpus", {}).get("splits", {})
    lines += ["", f"Corpus: {sum(c.values()):,} pairs (train {c.get('train', 0):,}, valid {c.get('valid', 0):,}, "
              f"test {c.get('test', 0):,}); docs/translation_corpus.md. Test hypotheses of every run: hypotheses/*.txt.gz "
              f"(one line per test sentence of hypotheses/test.src-ref.tsv.gz).", "", "## Sample translations", ""]
    samples = results.get("samples") or []
    if samples:
        keys = list(samples[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        lines += ["| " + " | ".join(str(x.get(k, "")).replace("|", "\\|") for k in keys) + " |" for x in samples]
    return lines + [""]


def _plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(results["rows"]):
        a.bar(i, r["bleu_mean"], yerr=r["bleu_std"], color="C%d" % i, alpha=0.7)
        a.scatter([i] * len(r["bleu"]), r["bleu"], color="k", s=12, zorder=3)
    a.set_xticks(range(len(results["rows"])), [r["key"] for r in results["rows"]])
    a.set_ylabel("test BLEU (sacrebleu)")
    a.set_title("BLEU per row (bars: mean, dots: seeds)")
    for i, s in enumerate(results["runs"]):
        color = "C%d" % [r["key"] for r in results["rows"]].index(row_key(s))
        b.plot(s["sad_steps"], s["sad_curve"], color=color, label=row_key(s) if s["seed"] == results["runs"][0]["seed"] else None)
    b.set_xlabel("update")
    b.set_ylabel("SAD vs initial masks (normalised)")
    b.set_title("Sparse Architecture Divergence")
    b.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def run_check(results_json: Path, thresholds: Path) -> int:
    """ci.check on the results; the table is printed and appended to results.md; its exit status."""
    from nm_plugins.runtime.reproduce import run_check as check
    return check(results_json, thresholds)


def _proxy_worker(name: str, overrides: list) -> dict:
    """One proxy run in a worker process (one torch thread; the corpus and vocabulary are cached already), through
    the resumable grid (nm_plugins.runtime.grid): reused when finished before, resumed from its checkpoint."""
    from .config import load_config
    from .train import run
    cfg = load_config(PROXY_CONFIG, overrides)
    out = Path(cfg["train"]["out_dir"])
    return run_or_reuse(out, name, cfg, lambda resume: run(cfg, resume=resume), checkpoint=out / "checkpoint.pt")


def proxy_runs(smoke: bool, runs_dir: Path) -> list:
    """(name, overrides) of every run of the proxy grid."""
    runs = []
    for seed in (SMOKE_SEEDS if smoke else PROXY_SEEDS):
        for method, pattern in PROXY_GRID:
            name = ("dense" if method == "dense" else f"{method}_{pattern.replace(':', '_')}") + f"_s{seed}"
            runs.append((name, [f"sparsity.method={method}", f"sparsity.pattern='{pattern}'", f"train.seed={seed}",
                                f"name={name}", f"train.out_dir={runs_dir / name}", "train.progress=false",
                                "train.threads=1"] + (PROXY_SMOKE_OVERRIDES if smoke else [])))
    return runs


def reproduce_proxy(smoke: bool, results_dir: Path) -> int:
    """The Debian-catalog grid in PROXY_WORKERS processes (default: 2, one torch thread each), the baselines on
    the same test set, hypotheses stored, results, check."""
    import concurrent.futures
    import multiprocessing
    import resource

    from .config import load_config
    from .train import prepare_data
    runs_dir = _runs_root() / ("translation-proxy-smoke" if smoke else "translation-proxy")
    t0, load0 = time.time(), os.getloadavg()
    grid = proxy_runs(smoke, runs_dir)
    subset = only([name for name, _ in grid])
    grid = [g for g in grid if subset is None or g[0] in subset]
    prepare_data(load_config(PROXY_CONFIG, grid[0][1]))  # corpus split + vocabulary, cached once for all workers
    workers = int(os.environ.get("PROXY_WORKERS") or min(2, os.cpu_count() or 1))
    summaries = [None] * len(grid)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_proxy_worker, name, overrides): i for i, (name, overrides) in enumerate(grid)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            summary = summaries[i] = future.result()
            print(f"{grid[i][0]:>14}: BLEU {summary['bleu']:.2f} chrF {summary['chrf']:.2f} test NLL {summary['test_nll']:.3f} "
                  f"SAD {summary['sad_final']:.4f} ({summary['seconds']:.0f} s train, {summary['decode_seconds']:.0f} s decode)",
                  flush=True)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = {"wall_seconds": time.time() - t0, "cpu_seconds": cpu.ru_utime + cpu.ru_stime,
              "load_average": {"start": load0[0], "end": os.getloadavg()[0]}, "workers": workers}
    results = proxy_results(summaries, smoke, results_dir, timing)
    if subset is not None:
        paths = write_results(results, results_dir)
        print(paths["markdown"].read_text())
        print(f"GRID_ONLY selects {len(grid)} of {len(proxy_runs(smoke, runs_dir))} runs: no threshold check")
        return 0
    thresholds = REPO / "ci" / "thresholds" / ("translation_proxy_smoke.yaml" if smoke else "translation_proxy.yaml")
    return finish(results, results_dir, thresholds)


def proxy_results(summaries: list, smoke: bool, results_dir: Path, timing: dict) -> dict:
    """The results of the proxy runs ``summaries``: rows, baselines on the same test set, dense vs retrieval,
    stored hypotheses, samples; ``timing``: wall_seconds, cpu_seconds, load_average {start, end}, workers."""
    from .config import load_config
    from .proxy_results import baselines_and_intervals
    cfg0 = load_config(PROXY_CONFIG, PROXY_SMOKE_OVERRIDES if smoke else [])
    extra = baselines_and_intervals(summaries, cfg0, results_dir, row_key)
    metrics_extra = extra.pop("metrics_extra")
    load = timing["load_average"]
    description = (f"English->German sentences of Debian's German gettext catalogs, proxy of the WMT14 table "
                   f"({'SMOKE schedule' if smoke else 'full proxy schedule'}): "
                   f"{PROXY_CONFIG.relative_to(REPO)} with {' '.join(PROXY_SMOKE_OVERRIDES) if smoke else 'no overrides'}; "
                   f"seeds {sorted({s['seed'] for s in summaries})}; {summaries[0]['test_sentences']} test pairs, "
                   f"beam {cfg0['decode']['beam']}; {timing['workers']} worker processes with one torch thread each. Wall "
                   f"time {timing['wall_seconds']:.0f} s, CPU time of the workers {timing['cpu_seconds']:.0f} s; load "
                   f"average at start / end {load['start']:.1f} / {load['end']:.1f} on {os.cpu_count()} cores (a load above "
                   f"the worker count means the machine was shared).")
    results = aggregate(summaries, "translation-proxy" + ("-smoke" if smoke else ""),
                        {"description": description, **timing, "smoke": smoke,
                         "config": str(PROXY_CONFIG.relative_to(REPO)), **extra})
    results["metrics"].update(metrics_extra)
    return results


def wmt_rows() -> list:
    """configs/translation/wmt14_en_de_*.yaml to run (WMT_ROWS selects some by name)."""
    from nm_plugins.runtime.reproduce import select_configs
    rows = [r for r in sorted(WMT_CONFIGS.glob("wmt14_en_de_*.yaml")) if r.stem != "wmt14_en_de_base"]
    return select_configs(rows, "WMT_ROWS", "reproduce-translation")


def reproduce_wmt(root: str, smoke: bool, results_dir: Path) -> int:
    """Every WMT row through torchrun (resuming unfinished rows), then aggregate and check."""
    import torch

    from .data import wmt_files
    wmt_files(root, _runs_root() / "wmt-layout-check")  # a clear error before any process starts
    nproc = int(os.environ.get("NPROC_PER_NODE") or max(torch.cuda.device_count(), 1))
    runs_dir = _runs_root() / ("translation-smoke" if smoke else "translation")
    summaries, t0 = [], time.time()
    for config in wmt_rows():
        out_dir = runs_dir / config.stem
        if (out_dir / "summary.json").is_file() and not smoke:
            print(f"{config.stem}: done before, using {out_dir / 'summary.json'}")
        else:
            resume = (out_dir / "checkpoint.pt").is_file() and not smoke
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "nm_plugins.translation.train", "--config", str(config)] + (["--resume"] if resume else []) + \
                  [f"data.root={root}", f"train.out_dir={out_dir}"] + (WMT_SMOKE_OVERRIDES if smoke else []) + \
                  os.environ.get("WMT_OVERRIDES", "").split()
            print("+ " + " ".join(cmd), flush=True)
            status = subprocess.run(cmd, cwd=REPO).returncode
            if status != 0:
                print(f"reproduce-translation: row {config.stem} failed (exit status {status}); running the target "
                      f"again resumes it from {out_dir}", file=sys.stderr)
                return status
        summaries.append(json.loads((out_dir / "summary.json").read_text()))
    results = aggregate(summaries, "translation" + ("-smoke" if smoke else ""),
                        {"description": f"WMT14 En->De from {root}; newstest2014 test", "wall_seconds": time.time() - t0,
                         "root": root, "nproc_per_node": nproc, "smoke": smoke})
    if smoke:
        paths = write_results(results, results_dir)
        print(paths["markdown"].read_text())
        print("SMOKE run: the WMT thresholds do not apply to a few updates; skipping ci/thresholds/translation.yaml")
        return 0
    return finish(results, results_dir, REPO / "ci" / "thresholds" / "translation.yaml")


def main(argv=None) -> int:
    """Entry point of `make reproduce-translation`: the WMT rows with WMT_ROOT, else the proxy."""
    reproduce_parser(__doc__, "python -m nm_plugins.translation.reproduce").parse_args(argv)
    smoke = _env_flag("SMOKE")
    root = os.environ.get("WMT_ROOT", "").strip()
    default = ("runs/translation" if root else "runs/translation-proxy") + "-smoke" if smoke else \
        ("results/translation" if root else "results/translation-proxy")
    results_dir = Path(os.environ.get("RESULTS_DIR") or REPO / default)
    try:
        require_project(REPO)
        return reproduce_wmt(root, smoke, results_dir) if root else reproduce_proxy(smoke, results_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"reproduce-translation: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

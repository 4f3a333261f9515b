"""Results of a reproduction grid: results.json (with a flat ``metrics`` dict for ``ci.check``), a
markdown table like the paper's, and PNG plots (SAD over training per method, accuracy vs density)."""
from __future__ import annotations

import datetime
import statistics
from pathlib import Path

from nm_plugins.core import NMPattern
from nm_plugins.runtime.results import machine_info, save_figure, write_results_json, write_text

__all__ = ["aggregate", "machine_info", "markdown_table", "plot_results", "row_key", "write_results"]


def row_key(summary: dict, with_model: bool = False) -> str:
    """``dense`` / ``srste_2:4`` (prefixed by ``MODEL/`` when ``with_model``)."""
    method = summary["method"]
    key = "dense" if method == "dense" else f"{method}_{summary['pattern']}"
    key += f"_{summary['variant']}" if summary.get("variant") else ""
    return f"{summary['row_model']}/{key}" if with_model else key


def _mean_std(values: list) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(summaries: list, name: str, with_model: bool = False, extra: dict | None = None) -> dict:
    """Group run summaries by (model,) method and pattern; mean/std over seeds; flat metrics for ci.check."""
    groups: dict = {}
    for s in summaries:
        groups.setdefault(row_key(s, with_model), []).append(s)
    rows, metrics = [], {}
    for key, runs in groups.items():
        first = runs[0]
        top1_mean, top1_std = _mean_std([r["top1"] for r in runs])
        sad_mean, sad_std = _mean_std([r["sad_final"] for r in runs])
        curves = [r["sad_curve"] for r in runs]
        density = 1.0 if first["method"] == "dense" else NMPattern.parse(first["pattern"]).density
        row = {"key": key, "model": first.get("row_model", first["model"]), "method": first["method"],
               "variant": first.get("variant", ""),
               "pattern": first["pattern"], "density": density, "seeds": [r["seed"] for r in runs],
               "top1": [r["top1"] for r in runs], "top1_mean": top1_mean, "top1_std": top1_std,
               "top5_mean": statistics.fmean(r["top5"] for r in runs),
               "params_m": first["params"] / 1e6, "gflops": first["flops"] / 1e9,
               "sad_final_mean": sad_mean, "sad_final_std": sad_std,
               "sad_curve_mean": [statistics.fmean(c[i] for c in curves) for i in range(min(map(len, curves)))],
               "seconds_mean": statistics.fmean(r["seconds"] for r in runs)}
        rows.append(row)
        metrics.update({f"{key}/top1_mean": top1_mean, f"{key}/top1_std": top1_std, f"{key}/sad_mean": sad_mean,
                        f"{key}/params_m": row["params_m"], f"{key}/gflops": row["gflops"]})
    return {"name": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), **(extra or {}), "rows": rows, "metrics": metrics, "runs": summaries}


def markdown_table(results: dict) -> str:
    """The paper-style table: model, method, pattern, top-1 mean ± std, Params (M), FLOPs (G), final SAD."""
    lines = [f"# {results['name']}", "",
             f"Measured {results['date']} on {results['machine']['host']} ({results['machine']['cpu']}, "
             f"{results['machine']['cpu_cores']} cores, torch {results['machine']['torch']})"
             + (f"; wall time {results['wall_seconds'] / 60:.1f} min" if "wall_seconds" in results else "") + ".", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    lines += ["| model | method | pattern | top-1 (%) | seeds | Params (M) | FLOPs (G) | final SAD |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        method = {"srste": "SR-STE", "ste": "STE", "asp": "ASP", "dense": "dense", "fixed": "fixed"}[r["method"]]
        method += f" ({r['variant']})" if r.get("variant") else ""
        lines.append(f"| {r['model']} | {method} | {r['pattern'] or '-'} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | "
                     f"{len(r['seeds'])} | {r['params_m']:.4g} | {r['gflops']:.4g} | {r['sad_final_mean']:.4f} |")
    lines += ["", "final SAD = fraction of N:M mask entries that differ from the initial mask at the end of training "
              "(for dense: of the magnitude mask the pattern would take; for ASP: fixed after pruning)."]
    return "\n".join(lines) + "\n"


def plot_results(results: dict, out_dir: Path) -> list:
    """sad_over_training.png and accuracy_vs_density.png in ``out_dir``; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results["rows"]:
        curve = [0.0] + r["sad_curve_mean"]
        ax.plot(range(len(curve)), curve, marker="o", label=r["key"])
    paths.append(_save(fig, ax, out_dir / "sad_over_training.png", "epoch", "SAD vs initial mask (fraction of weights)",
                       f"{results['name']}: SAD over training (mean over seeds)"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("dense", "*"), ("srste", "o"), ("ste", "s"), ("asp", "^")):
        rows = [r for r in results["rows"] if r["method"] == method]
        if rows:
            ax.errorbar([r["density"] for r in rows], [r["top1_mean"] for r in rows], yerr=[r["top1_std"] for r in rows],
                        fmt=marker, capsize=3, label=method)
            for r in rows:
                ax.annotate(r["pattern"] or "dense", (r["density"], r["top1_mean"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
    paths.append(_save(fig, ax, out_dir / "accuracy_vs_density.png", "density (kept fraction of N:M weights)",
                       "top-1 (%)", f"{results['name']}: accuracy vs density"))
    return paths


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, lay out and write one plot as a PNG; returns its path."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def write_results(results: dict, out_dir: "str | Path") -> dict:
    """Write results.json, results.md and the plots into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(out_dir / "results.json", results, ensure_ascii=True)
    write_text(out_dir / "results.md", markdown_table(results))
    plots = plot_results(results, out_dir)
    return {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "plots": plots}

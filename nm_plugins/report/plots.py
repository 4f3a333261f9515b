"""Plots for the report as data URIs: committed PNGs as they are, the rest drawn with matplotlib's SVG backend
(text kept as text, fixed ids and no date, so the same results give the same page)."""
from __future__ import annotations

import base64
import io
from pathlib import Path


def png_uri(path: Path) -> str:
    """A committed PNG as a ``data:image/png;base64,...`` URI."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG"):
        raise ValueError(f"report: {path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode()


def png_width(path: Path) -> int:
    """The pixel width of a PNG (from its IHDR chunk)."""
    return int.from_bytes(Path(path).read_bytes()[16:20], "big")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def svg_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/svg+xml;base64,...`` URI (the figure is closed)."""
    import matplotlib
    plt = _plt()
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "nm-sparsity-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def claims_svg(claim_rows: list, title: str) -> "str | None":
    """The claims' forest plot of ``nm_plugins.verdicts.claims.plot_claims`` (the verdicts the page shows) as an SVG URI;
    None when no claim has values."""
    import tempfile
    if not any(r["mean"] is not None for r in claim_rows):
        return None
    from nm_plugins.verdicts import claims as claims_mod
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "claims.svg"
        import matplotlib
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "nm-sparsity-report"}):
            claims_mod.plot_claims(claim_rows, path, title=title)
        text = path.read_bytes()
    return "data:image/svg+xml;base64," + base64.b64encode(_strip_date(text)).decode()


def _strip_date(svg: bytes) -> bytes:
    """The SVG without its <dc:date> line (plot_claims saves without our metadata argument)."""
    import re
    return re.sub(rb"\s*<dc:date>[^<]*</dc:date>", b"", svg)


def bars(groups: dict, title: str, ylabel: str, ref: "float | None" = None, ref_label: str = "",
         points: "dict | None" = None) -> str:
    """Grouped bars ``{series: {category: value}}`` (optional per-seed ``points`` {series: {category: [values]}},
    a horizontal reference line) as an SVG URI."""
    plt = _plt()
    cats = list(dict.fromkeys(c for s in groups.values() for c in s))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cats) * max(1, len(groups)) ** 0.5 + 2), 3.4))
    width = 0.8 / max(1, len(groups))
    for i, (series, vals) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(cats))]
        ys = [vals.get(c, float("nan")) for c in cats]
        ax.bar(xs, ys, width * 0.9, label=series)
        for x, c in zip(xs, cats):
            pts = ((points or {}).get(series) or {}).get(c) or []
            ax.plot([x] * len(pts), pts, "k.", ms=4, alpha=0.6)
    if ref is not None:
        ax.axhline(ref, color="k", lw=0.8, ls="--", label=ref_label or None)
    ax.set_xticks(range(len(cats)), cats, rotation=20 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(groups) > 1 or ref_label:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return svg_uri(fig)


def accuracy_vs_density(rows: list, title: str) -> str:
    """top-1 (mean ± std over seeds) against density per method, from a classification results.json's rows."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        sub = [r for r in rows if r["method"] == method]
        ax.errorbar([r["density"] for r in sub], [r["top1_mean"] for r in sub], yerr=[r.get("top1_std", 0) for r in sub],
                    fmt="o", capsize=3, label=method)
    return _finish(fig, ax, "density (kept fraction of N:M weights)", "top-1 (%)", title, legend_size=8)


def sad_curves(rows: list, title: str) -> str:
    """Mean SAD over training per row of a classification results.json."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        curve = [0.0] + list(r.get("sad_curve_mean") or [])
        ax.plot(range(len(curve)), curve, marker="o", label=r["key"])
    return _finish(fig, ax, "epoch", "SAD vs initial mask", title, legend_size=7)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int) -> str:
    """Labels, title and legend of a one-axes figure; the figure as an SVG data URI."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return svg_uri(fig)

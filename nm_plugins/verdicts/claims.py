"""The paper's claims checked with statistics: paired differences over seeds, a 95% t-interval, a verdict.

Runs with the same seed share initialisation and data order, so a claim "A beats B" is judged on the per-seed
differences d_s = A_s - B_s (paired), not on two separate means. For n >= 2 paired seeds the interval is
mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n). Verdicts, by the claim's kind:

* ``greater`` (A > B):  holds when the whole interval is above 0; contradicted when it is below 0.
* ``less``    (A < B):  holds when the whole interval is below 0; contradicted when it is above 0.
* ``equivalent`` (|A - B| < margin, the margin being part of the paper's statement, e.g. "within about 0.3";
  ``margin_rel``: a fraction of B's mean instead): holds when the whole interval lies inside (-margin, margin);
  contradicted when it lies wholly outside it.

Anything else (including n < 2) is "not significant". A claim never holds by a tolerance: the margin of an
equivalence claim only makes it harder to hold. Per-seed values come as
``{"<row>": {"<metric>": {"<seed>": value}}}`` (``per_seed`` in a results.json).
"""
from __future__ import annotations

import math
import statistics

HOLDS, NOT_SIGNIFICANT, CONTRADICTED = "holds", "not significant", "contradicted"
KINDS = ("greater", "less", "equivalent")


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t
    return float(t.ppf(p, df))


def t_interval(diffs: list, confidence: float = 0.95) -> dict:
    """n, mean, sd and the two-sided ``confidence`` t-interval (lo, hi) of the mean of ``diffs``;
    lo/hi are None for fewer than 2 values."""
    n = len(diffs)
    if n == 0:
        raise ValueError("t_interval: no values")
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "half_width": None, "lo": None, "hi": None}
    sd = statistics.stdev(diffs)
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "lo": mean - half, "hi": mean + half}


def verdict(kind: str, lo: "float | None", hi: "float | None", margin: float = 0.0) -> str:
    """holds / not significant / contradicted for an interval (lo, hi) of A - B under a claim ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"claim kind {kind!r} is not one of {', '.join(KINDS)}")
    if lo is None or hi is None:
        return NOT_SIGNIFICANT
    if kind == "greater":
        return HOLDS if lo > 0 else CONTRADICTED if hi < 0 else NOT_SIGNIFICANT
    if kind == "less":
        return HOLDS if hi < 0 else CONTRADICTED if lo > 0 else NOT_SIGNIFICANT
    if not margin > 0:
        raise ValueError(f"an equivalence claim needs a positive margin (from the paper's statement), got {margin}")
    if -margin < lo and hi < margin:
        return HOLDS
    return CONTRADICTED if (hi <= -margin or lo >= margin) else NOT_SIGNIFICANT


def paired(per_seed: dict, a: str, b: str, metric: str) -> "tuple[list, list]":
    """(seeds, A - B per seed) over the seeds both rows have; KeyError naming what is missing."""
    for row in (a, b):
        if row not in per_seed or metric not in per_seed[row]:
            raise KeyError(f"no per-seed values of {row}/{metric}")
    va, vb = per_seed[a][metric], per_seed[b][metric]
    seeds = sorted(set(va) & set(vb), key=lambda s: (len(str(s)), str(s)))
    return seeds, [float(va[s]) - float(vb[s]) for s in seeds]


def evaluate_claim(per_seed: dict, claim: dict, confidence: float = 0.95) -> dict:
    """One claim (``{claim, a, b, metric, kind[, margin]}``) evaluated on per-seed values: a row with the
    paired mean difference, its interval, n, the verdict (``missing`` when the values are not there)."""
    for key in ("a", "b", "metric", "kind"):
        if key not in claim:
            raise ValueError(f"claim {claim} lacks {key!r} (needs a, b, metric, kind[, margin], claim)")
    margin = float(claim.get("margin", 0.0))
    if "margin_rel" in claim:  # a margin stated relative to B (e.g. "within 5% of dense EPE"), on the paired seeds
        try:
            seeds, _ = paired(per_seed or {}, claim["a"], claim["b"], claim["metric"])
            vb = per_seed[claim["b"]][claim["metric"]]
            margin = float(claim["margin_rel"]) * abs(statistics.fmean(float(vb[s]) for s in seeds)) if seeds else 0.0
        except KeyError:
            margin = 0.0
    row = {"claim": claim.get("claim", f"{claim['a']} {claim['kind']} {claim['b']} ({claim['metric']})"),
           "a": claim["a"], "b": claim["b"], "metric": claim["metric"], "kind": claim["kind"], "margin": margin}
    try:
        seeds, diffs = paired(per_seed or {}, claim["a"], claim["b"], claim["metric"])
    except KeyError as e:
        return {**row, "n": 0, "seeds": [], "diffs": [], "mean": None, "lo": None, "hi": None,
                "verdict": "missing", "note": str(e).strip("'\"")}
    if not seeds:
        return {**row, "n": 0, "seeds": [], "diffs": [], "mean": None, "lo": None, "hi": None, "verdict": "missing",
                "note": f"{claim['a']} and {claim['b']} share no seed"}
    stats = t_interval(diffs, confidence)
    return {**row, **stats, "seeds": seeds, "diffs": diffs, "confidence": confidence,
            "verdict": verdict(claim["kind"], stats["lo"], stats["hi"], margin)}


def evaluate_claims(per_seed: dict, claims: list, confidence: float = 0.95) -> list:
    """:func:`evaluate_claim` for every claim of a thresholds file."""
    return [evaluate_claim(per_seed, c, confidence) for c in claims]


def failed(rows: list) -> list:
    """The claim rows that fail CI: contradicted, or without the values to judge them."""
    return [r for r in rows if r["verdict"] in (CONTRADICTED, "missing")]


def _num(x) -> str:
    return "-" if x is None else f"{x:+.4g}"


def format_claims(rows: list) -> str:
    """A fixed-width table: claim, paired mean difference A-B, 95% interval, n, verdict."""
    head = ("claim", "A - B (mean)", "95% interval", "n", "verdict")
    body = []
    for r in rows:
        interval = "-" if r["lo"] is None else f"[{r['lo']:+.4g}, {r['hi']:+.4g}]"
        need = f" (margin {r['margin']:g})" if r["kind"] == "equivalent" else ""
        body.append((r["claim"] + need, _num(r["mean"]), interval, str(r["n"]),
                     r["verdict"] + (f": {r['note']}" if r.get("note") else "")))
    widths = [max(len(x[i]) for x in body + [head]) for i in range(5)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def markdown_claims(rows: list) -> str:
    """The claims as a markdown table (for results.md)."""
    lines = ["| claim | A | B | metric | A - B (mean over seeds) | 95% t-interval | seeds | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        interval = "-" if r["lo"] is None else f"[{r['lo']:+.4g}, {r['hi']:+.4g}]"
        need = f" (margin {r['margin']:g})" if r["kind"] == "equivalent" else ""
        lines.append(f"| {r['claim']}{need} | {r['a']} | {r['b']} | {r['metric']} | {_num(r['mean'])} | {interval} | "
                     f"{r['n']} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def plot_claims(rows: list, path, title: str = "paired differences A - B over seeds (95% t-interval)"):
    """A forest plot of the claims' paired differences with their intervals and per-seed points; the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["mean"] is not None]
    metrics = sorted({r["metric"] for r in rows})
    from matplotlib.ticker import MaxNLocator
    counts = [sum(r["metric"] == m for r in rows) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 1.4 + 0.6 * len(rows)), squeeze=False,
                             gridspec_kw={"height_ratios": [c + 0.8 for c in counts]})
    colours = {HOLDS: "tab:green", NOT_SIGNIFICANT: "tab:grey", CONTRADICTED: "tab:red"}
    for ax, metric in zip(axes[:, 0], metrics):
        sub = [r for r in rows if r["metric"] == metric]
        for i, r in enumerate(sub):
            c = colours[r["verdict"]]
            if r["lo"] is not None:
                ax.plot([r["lo"], r["hi"]], [i, i], color=c, lw=3)
            ax.plot(r["diffs"], [i] * len(r["diffs"]), "o", color=c, ms=3, alpha=0.5)
            ax.plot([r["mean"]], [i], "D", color="k", ms=4)
            if r["kind"] == "equivalent":
                ax.plot([-r["margin"], r["margin"]], [i, i], "|", color="k", ms=12)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.set_ylim(len(sub) - 0.5, -0.5)
        ax.set_yticks(range(len(sub)), [f"{r['claim'][:64]}: {r['verdict']}" for r in sub], fontsize=7)
        ax.set_xlabel(f"{metric}: A - B", fontsize=8)
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    from nm_plugins.runtime.results import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path

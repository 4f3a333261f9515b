"""The paper's claims judged with statistics fixed before the run: paired differences over seeds, a 95%
t-interval, a verdict, the power of the seeds run and a Holm adjustment across the claims of one results file.

Runs with the same seed share initialisation and data order, so "A beats B" is judged on the per-seed
differences d_s = A_s - B_s (paired). For n >= 2 paired seeds the interval is
mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n).

Thresholds schema (one entry of a thresholds file's ``claims:`` list; all of it committed before the run):

* ``claim``: the text shown; ``a``, ``b``: rows of ``per_seed``; ``metric``: the per-seed metric.
* ``kind``: ``greater`` (A > B + margin) | ``less`` (A < B - margin) | ``noninferior`` (A not worse than B by
  more than the smallest effect: the paper's "comparable / close to dense") | ``equivalent`` (|A - B| below the
  smallest effect, two-sided).
* ``better``: ``higher`` | ``lower``, which direction of the metric is better; required for ``noninferior``.
* ``margin`` (greater/less only, metric units, default 0): the boundary t the claim names; greater: t = margin,
  less: t = -margin. Not allowed on noninferior/equivalent, whose margin is the smallest effect.
* the smallest effect of interest, delta > 0, in one of two forms: ``smallest_effect`` (metric units), or
  ``smallest_effect_rel`` with ``reference: {value: V, source: "where V is committed"}`` (delta = rel * |V|; V
  is a committed reference value, never read from the run being judged);
  and ``smallest_effect_source``: where delta comes from (a published gap, a stated tolerance, or a fraction
  with its reason). ``margin_rel`` (a margin computed from the judged data) is an error.

Verdicts, first match wins ([lo, hi] the interval; boundary: greater/less t, noninferior -delta for higher-is-
better and +delta for lower-is-better, equivalent the one of -delta/+delta nearer the mean):

* ``invalid``: a per-seed value of A or B that is NaN/inf or not a number; the note names row, metric, seed.
* ``missing``: the rows or the metric are absent, or A and B share no seed.
* ``single run``: one shared seed: no interval, nothing judged.
* ``holds``: greater lo > t; less hi < t; noninferior lo > -delta (higher) / hi < delta (lower);
  equivalent -delta < lo and hi < delta.
* ``contradicted``: greater hi < t; less lo > t; noninferior hi < -delta (higher) / lo > delta (lower);
  equivalent hi <= -delta or lo >= delta.
* ``effect below the smallest effect of interest`` (greater/less): t - delta < lo and hi < t + delta: any effect
  is smaller than the claim's smallest effect of interest (reported, not a failure).
* ``underpowered``: the minimum detectable effect at the seeds run exceeds delta; ``seeds_needed`` says how many
  seeds would detect delta.
* ``not significant``: enough seeds, and the interval still straddles the boundary.

Per claim: ``p`` is the two-sided paired t-test p against the boundary (p < 0.05 exactly when the interval
excludes it: holds or contradicted); ``p_holm`` is Holm-adjusted over every claim of the file with a p
(statsmodels ``multipletests``); ``mde`` is the smallest |true difference from the boundary| that the seeds run
detect at 80% power (paired t-test = one-sample t on d, alpha 0.05 two-sided, i.e. the interval's 2.5% per
side; equivalent: 90% per side, 80% for both), from the paired SD, via statsmodels ``TTestPower``;
``seeds_needed`` the seeds that detect delta at that power. CI (:func:`failed`) fails on ``invalid``,
``missing``, and on ``contradicted`` only when ``p_holm`` < 0.05. Per-seed values come as
``{"<row>": {"<metric>": {"<seed>": value}}}`` (``per_seed`` in a results.json).
"""
from __future__ import annotations

import math

HOLDS, CONTRADICTED = "holds", "contradicted"
BELOW_SESOI = "effect below the smallest effect of interest"
UNDERPOWERED, NOT_SIGNIFICANT = "underpowered", "not significant"
SINGLE_RUN, INVALID, MISSING = "single run", "invalid", "missing"
VERDICTS = (HOLDS, CONTRADICTED, BELOW_SESOI, UNDERPOWERED, NOT_SIGNIFICANT, SINGLE_RUN, INVALID, MISSING)
KINDS = ("greater", "less", "noninferior", "equivalent")
ALPHA, POWER = 0.05, 0.8


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t
    return float(t.ppf(p, df))


def t_interval(diffs: list, confidence: float = 0.95) -> dict:
    """n, mean, sd and the two-sided ``confidence`` t-interval (lo, hi) of the mean of ``diffs`` (finite
    numbers); sd/lo/hi are None for fewer than 2 values."""
    n = len(diffs)
    if n == 0:
        raise ValueError("t_interval: no values")
    bad = [x for x in diffs if not math.isfinite(x)]
    if bad:
        raise ValueError(f"t_interval: non-finite values {bad}")
    mean = math.fsum(diffs) / n
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "half_width": None, "lo": None, "hi": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in diffs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "lo": mean - half, "hi": mean + half}


def spec(claim: dict) -> dict:
    """A claim entry checked against the schema, with its resolved boundary ``t`` (greater/less), absolute
    ``smallest_effect`` and ``better``; ValueError naming the claim and what is wrong."""
    name = claim.get("claim", claim)
    for key in ("a", "b", "metric", "kind"):
        if key not in claim:
            raise ValueError(f"claim {name!r} lacks {key!r} (needs claim, a, b, metric, kind, smallest effect)")
    kind = claim["kind"]
    if kind not in KINDS:
        raise ValueError(f"claim {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if "margin_rel" in claim:
        raise ValueError(f"claim {name!r}: margin_rel is computed from the data it judges; state "
                         "smallest_effect_rel with a committed reference: {value, source} instead")
    better = claim.get("better")
    if better not in (None, "higher", "lower"):
        raise ValueError(f"claim {name!r}: better must be higher or lower, got {better!r}")
    if kind == "noninferior" and better is None:
        raise ValueError(f"claim {name!r}: a noninferior claim needs better: higher|lower")
    if kind in ("noninferior", "equivalent") and "margin" in claim:
        raise ValueError(f"claim {name!r}: a {kind} claim's margin is its smallest effect; drop 'margin'")
    if "smallest_effect" in claim and "smallest_effect_rel" in claim:
        raise ValueError(f"claim {name!r}: give smallest_effect or smallest_effect_rel + reference, not both")
    if "smallest_effect" in claim:
        delta = float(claim["smallest_effect"])
    elif "smallest_effect_rel" in claim:
        ref = claim.get("reference")
        if not isinstance(ref, dict) or "value" not in ref or not str(ref.get("source", "")).strip():
            raise ValueError(f"claim {name!r}: smallest_effect_rel needs reference: {{value, source}} "
                             "(a committed reference value and where it is committed)")
        delta = float(claim["smallest_effect_rel"]) * abs(float(ref["value"]))
    else:
        raise ValueError(f"claim {name!r} names no smallest effect of interest (smallest_effect, or "
                         "smallest_effect_rel + reference)")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"claim {name!r}: the smallest effect must be a positive number, got {delta}")
    if not str(claim.get("smallest_effect_source", "")).strip():
        raise ValueError(f"claim {name!r}: smallest_effect_source must say where the smallest effect comes from")
    margin = float(claim.get("margin", 0.0))
    if not math.isfinite(margin):
        raise ValueError(f"claim {name!r}: margin {margin} is not finite")
    t = margin if kind == "greater" else -margin if kind == "less" else None
    return {"claim": claim.get("claim", f"{claim['a']} {kind} {claim['b']} ({claim['metric']})"),
            "a": claim["a"], "b": claim["b"], "metric": claim["metric"], "kind": kind, "better": better,
            "t": t, "margin": margin if kind in ("greater", "less") else delta, "smallest_effect": delta,
            "smallest_effect_source": str(claim["smallest_effect_source"]).strip(),
            "reference": claim.get("reference")}


def boundary(s: dict, mean: float) -> float:
    """The value of A - B the claim's decision turns on (for equivalent: the bound nearer ``mean``)."""
    if s["kind"] in ("greater", "less"):
        return s["t"]
    if s["kind"] == "noninferior":
        return -s["smallest_effect"] if s["better"] == "higher" else s["smallest_effect"]
    return -s["smallest_effect"] if mean < 0 else s["smallest_effect"]


def verdict(s: dict, lo: float, hi: float, mde: float) -> str:
    """The verdict of a checked claim ``s`` (:func:`spec`) for an interval (lo, hi) of A - B and the minimum
    detectable effect ``mde`` of the seeds run."""
    kind, delta, t = s["kind"], s["smallest_effect"], s["t"]
    if kind == "greater":
        if lo > t:
            return HOLDS
        if hi < t:
            return CONTRADICTED
    elif kind == "less":
        if hi < t:
            return HOLDS
        if lo > t:
            return CONTRADICTED
    elif kind == "noninferior":
        higher = s["better"] == "higher"
        if (lo > -delta) if higher else (hi < delta):
            return HOLDS
        if (hi < -delta) if higher else (lo > delta):
            return CONTRADICTED
    else:
        if -delta < lo and hi < delta:
            return HOLDS
        if hi <= -delta or lo >= delta:
            return CONTRADICTED
    if kind in ("greater", "less") and t - delta < lo and hi < t + delta:
        return BELOW_SESOI
    return UNDERPOWERED if mde > delta else NOT_SIGNIFICANT


def _power(kind: str) -> float:
    return 1 - (1 - POWER) / 2 if kind == "equivalent" else POWER


def power(effect_size: float, n: int, kind: str = "greater") -> float:
    """The power of ``n`` paired seeds to decide a true distance of ``effect_size`` paired SDs from the claim's
    boundary (statsmodels ``TTestPower``: one-sample t on d, alpha 0.05 two-sided)."""
    from statsmodels.stats.power import TTestPower
    p = float(TTestPower().power(effect_size=effect_size, nobs=n, alpha=ALPHA, alternative="two-sided"))
    if math.isnan(p):  # scipy's noncentral t gives NaN far in the tail (few seeds, large effect): integrate instead
        from scipy import integrate, stats
        df, nc = n - 1, effect_size * math.sqrt(n)
        c = stats.t.ppf(1 - ALPHA / 2, df)

        def given_v(v):  # P(|Z + nc| > c sqrt(V/df)) at chi-square V = v, times its density
            w = c * math.sqrt(v / df)
            return (stats.norm.sf(w - nc) + stats.norm.cdf(-w - nc)) * stats.chi2.pdf(v, df)
        p = float(integrate.quad(given_v, 0, math.inf, limit=200)[0])
    return p


def mde(sd: float, n: int, kind: str = "greater") -> float:
    """The smallest true distance of A - B from the claim's boundary that ``n`` paired seeds with paired SD
    ``sd`` detect at 80% power (95% interval; equivalent: 90% per side)."""
    from scipy.optimize import brentq
    if sd == 0:
        return 0.0
    target = _power(kind)
    hi = 1.0
    while power(hi, n, kind) < target:
        hi *= 2
    return float(brentq(lambda es: power(es, n, kind) - target, 0.0, hi, xtol=1e-10)) * sd


def seeds_needed(sd: float, delta: float, kind: str = "greater", cap: int = 10 ** 7) -> int:
    """The fewest paired seeds (>= 2) that detect a distance ``delta`` from the boundary at 80% power, given
    paired SD ``sd`` (``cap`` when even that many do not)."""
    if sd == 0:
        return 2
    target, es = _power(kind), delta / sd
    lo, hi = 1, 2
    while power(es, hi, kind) < target:
        lo, hi = hi, hi * 2
        if hi > cap:
            return cap
    while hi - lo > 1:  # power grows with n: the first n reaching the target lies in (lo, hi]
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(es, mid, kind) >= target else (mid, hi)
    return max(2, hi)


def p_value(diffs: list, at: float) -> float:
    """Two-sided paired t-test p of mean(d) = ``at`` (scipy.stats.ttest_1samp)."""
    from scipy.stats import ttest_1samp
    if len(set(diffs)) == 1:  # no spread: the interval is a point, p is 0 off it and 1 on it
        return 1.0 if diffs[0] == at else 0.0
    return float(ttest_1samp(diffs, at).pvalue)


def paired(per_seed: dict, a: str, b: str, metric: str) -> "tuple[list, list]":
    """(seeds, A - B per seed) over the seeds both rows have; KeyError naming what is missing, ValueError
    naming the row, metric and seed of a value that is NaN/inf or not a number."""
    for row in (a, b):
        if row not in per_seed or metric not in (per_seed[row] or {}):
            raise KeyError(f"no per-seed values of {row}/{metric}")
    va, vb = per_seed[a][metric] or {}, per_seed[b][metric] or {}
    bad = []
    for row, vals in ((a, va), (b, vb)):
        for s, v in vals.items():
            try:
                ok = math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                bad.append(f"{row}/{metric} seed {s} = {v!r}")
    if bad:
        raise ValueError("invalid per-seed value: " + "; ".join(bad))
    seeds = sorted(set(va) & set(vb), key=lambda s: (len(str(s)), str(s)))
    return seeds, [float(va[s]) - float(vb[s]) for s in seeds]


def evaluate_claim(per_seed: dict, claim: dict, confidence: float = 0.95) -> dict:
    """One claim evaluated on per-seed values: the checked claim, the paired mean difference, its interval, n,
    sd, p (against the boundary), mde, seeds_needed and the verdict (``p_holm``/``fails`` come from
    :func:`evaluate_claims`)."""
    s = spec(claim)
    row = {**s, "n": 0, "seeds": [], "diffs": [], "mean": None, "sd": None, "lo": None, "hi": None, "p": None,
           "mde": None, "seeds_needed": None, "confidence": confidence, "note": ""}
    try:
        seeds, diffs = paired(per_seed or {}, s["a"], s["b"], s["metric"])
    except KeyError as e:
        return {**row, "verdict": MISSING, "note": str(e).strip("'\"")}
    except ValueError as e:
        return {**row, "verdict": INVALID, "note": str(e)}
    if not seeds:
        return {**row, "verdict": MISSING, "note": f"{s['a']} and {s['b']} share no seed"}
    stats = t_interval(diffs, confidence)
    row = {**row, **stats, "seeds": seeds, "diffs": diffs}
    if stats["n"] < 2:
        return {**row, "verdict": SINGLE_RUN, "note": "one seed: no interval, nothing judged"}
    m = mde(stats["sd"], stats["n"], s["kind"])
    row.update(mde=m, seeds_needed=seeds_needed(stats["sd"], s["smallest_effect"], s["kind"]),
               p=p_value(diffs, boundary(s, stats["mean"])))
    row["verdict"] = verdict(s, stats["lo"], stats["hi"], m)
    if row["verdict"] == UNDERPOWERED:
        row["note"] = f"{row['seeds_needed']} seeds would detect {s['smallest_effect']:.3g}"
    return row


def evaluate_claims(per_seed: dict, claims: list, confidence: float = 0.95) -> list:
    """:func:`evaluate_claim` for every claim of a thresholds file, with Holm-adjusted p over the claims that
    have a p and ``fails`` (the row fails CI)."""
    from statsmodels.stats.multitest import multipletests
    rows = [evaluate_claim(per_seed, c, confidence) for c in claims or []]
    tested = [r for r in rows if r["p"] is not None]
    if tested:
        adjusted = multipletests([r["p"] for r in tested], alpha=ALPHA, method="holm")[1]
        for r, q in zip(tested, adjusted):
            r["p_holm"] = float(q)
    for r in rows:
        r.setdefault("p_holm", None)
        r["fails"] = r["verdict"] in (INVALID, MISSING) or (r["verdict"] == CONTRADICTED and r["p_holm"] < ALPHA)
        if r["verdict"] in (HOLDS, CONTRADICTED) and r["p_holm"] >= ALPHA:
            r["note"] = f"not after Holm adjustment (p {r['p']:.3g}, adjusted {r['p_holm']:.3g})" + (
                ": not a CI failure" if r["verdict"] == CONTRADICTED else "")
    return rows


def failed(rows: list) -> list:
    """The claim rows that fail CI: invalid, missing, or contradicted after the Holm adjustment."""
    return [r for r in rows if r["fails"]]


def _num(x) -> str:
    return "-" if x is None else f"{x:+.4g}"


def _g(x, fmt="{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def requirement(r: dict) -> str:
    """The claim's decision rule in words, e.g. ``A - B > 0`` or ``A - B > -0.7`` (noninferior)."""
    d = r["smallest_effect"]
    if r["kind"] in ("greater", "less"):
        return f"A - B {'>' if r['kind'] == 'greater' else '<'} {r['t'] + 0.0:g}"
    if r["kind"] == "noninferior":
        return f"A - B > -{d:.3g}" if r["better"] == "higher" else f"A - B < {d:.3g}"
    return f"|A - B| < {d:.3g}"


def table_rows(rows: list) -> list:
    """The claims as display strings: claim, rule, smallest effect, mean, interval, n, MDE, seeds needed,
    p, Holm p, verdict (shared by the console table, results.md and the report)."""
    out = []
    for r in rows:
        interval = "-" if r["lo"] is None else f"[{r['lo']:+.4g}, {r['hi']:+.4g}]"
        out.append({"claim": r["claim"], "rule": requirement(r), "smallest effect": _g(r["smallest_effect"]),
                    "A - B (mean)": _num(r["mean"]), "95% interval": interval, "seeds": str(r["n"]),
                    "MDE (80%)": _g(r["mde"]), "seeds needed": _g(r["seeds_needed"], "{}"),
                    "p": _g(r["p"]), "Holm p": _g(r["p_holm"]),
                    "verdict": r["verdict"] + (f": {r['note']}" if r.get("note") else "")})
    return out


def format_claims(rows: list) -> str:
    """A fixed-width table of :func:`table_rows`."""
    body = [list(t.values()) for t in table_rows(rows)]
    head = list(table_rows([rows[0]])[0]) if rows else []
    widths = [max(len(x[i]) for x in body + [head]) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def markdown_claims(rows: list) -> str:
    """The claims as a markdown table (for results.md)."""
    tr = table_rows(rows)
    if not tr:
        return ""
    head = ["claim", "A", "B", "metric"] + list(tr[0])[1:]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, t in zip(rows, tr):
        cells = [t["claim"], r["a"], r["b"], r["metric"]] + list(t.values())[1:-1] + [f"**{t['verdict']}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COLOURS = {HOLDS: "tab:green", CONTRADICTED: "tab:red", BELOW_SESOI: "tab:blue", UNDERPOWERED: "tab:orange",
           NOT_SIGNIFICANT: "tab:grey"}


def plot_claims(rows: list, path, title: str = "paired differences A - B over seeds (95% t-interval)"):
    """A forest plot of the claims' paired differences with their intervals, per-seed points and the
    smallest effect of interest around each claim's boundary; the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    rows = [r for r in rows if r["mean"] is not None]
    metrics = sorted({r["metric"] for r in rows}) or ["-"]
    counts = [max(1, sum(r["metric"] == m for r in rows)) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 1.4 + 0.6 * max(1, len(rows))), squeeze=False,
                             gridspec_kw={"height_ratios": [c + 0.8 for c in counts]})
    for ax, metric in zip(axes[:, 0], metrics):
        sub = [r for r in rows if r["metric"] == metric]
        for i, r in enumerate(sub):
            c = COLOURS.get(r["verdict"], "tab:grey")
            if r["lo"] is not None:
                ax.plot([r["lo"], r["hi"]], [i, i], color=c, lw=3)
            ax.plot(r["diffs"], [i] * len(r["diffs"]), "o", color=c, ms=3, alpha=0.5)
            ax.plot([r["mean"]], [i], "D", color="k", ms=4)
            b, d = boundary(r, r["mean"]), r["smallest_effect"]
            marks = [-d, d] if r["kind"] == "equivalent" else [b] if r["kind"] == "noninferior" else [b - d, b + d]
            ax.plot(marks, [i] * len(marks), "|", color="k", ms=12)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.set_ylim(max(1, len(sub)) - 0.5, -0.5)
        ax.set_yticks(range(len(sub)), [f"{r['claim'][:60]}: {r['verdict']}" for r in sub], fontsize=7)
        ax.set_xlabel(f"{metric}: A - B (bars: smallest effect of interest around the boundary)", fontsize=8)
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    from nm_plugins.runtime.results import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path

"""Compare a run's ratios with the last accepted baseline; exit 1 when one regressed by more than its margin.

    python -m benchmarks.compare CURRENT_JSON BASELINE_JSON         # check (exit 0 ok, 1 regression, 2 bad input)
    python -m benchmarks.compare CURRENT_JSON BASELINE_JSON --accept  # make CURRENT the new baseline

Only ratios are compared, never absolute times, so that two runners with the same GPU kind compare: the
SR-STE/dense and STE/dense step ratios (``*_over_dense``: lower is better), the sparse/dense inference and
GEMM speed-ups (``infer/*speedup*``, ``gemm/best_speedup``: higher is better) and the mask kernel's speed-up
over the argsort reference (``*_over_nm_mask``). A ratio regresses when it is worse than the baseline's by
more than its margin (percent of the baseline; see ``RULES``). The percentage check itself is
pytest-benchmark's ``PercentageRegressionCheck`` (what ``--benchmark-compare-fail=median:N%`` uses), applied
to the ratio, or to 1/speed-up where higher is better, instead of to a benchmark's absolute time.

CURRENT and BASELINE are files written by ``make throughput`` (``results/throughput/<gpu>.json``), by ``make
gpu-smoke`` (``results/gpu-smoke/<gpu>.json``), by ``make bench`` (pytest-benchmark's JSON; its interleaved
step ratios and the mask speed-up), or a baseline written by ``--accept``. A baseline ratio missing from
CURRENT fails (a section that no longer runs must not pass silently); a ratio new in CURRENT is listed.
Comparing runs of two different GPU kinds is refused (exit 2).
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

from pytest_benchmark.utils import PercentageRegressionCheck

# (metric name pattern, "lower"/"higher" is better, margin in % of the baseline ratio). First match wins.
RULES = [
    (r"(^|/)(srste|ste)_over_dense$", "lower", 3.0),   # training-step cost of SR-STE / STE vs dense
    (r"^infer/(min|best)_[a-z_]*speedup[a-z_]*$", "higher", 5.0),  # 2:4 inference vs dense (5% drift seen on an H100)
    (r"^gemm/best_speedup$", "higher", 5.0),
    (r"_over_nm_mask$", "higher", 20.0),               # argsort reference / nm_mask (a speed-up; noisy on shared CPUs)
]


def rule_for(name: str):
    """(direction, margin %) of a compared ratio, or None for a metric that is not compared."""
    for pattern, direction, margin in RULES:
        if re.search(pattern, name):
            return direction, margin
    return None


def gpu_of(data: dict) -> str | None:
    """The GPU kind a results file was measured on ('h100', 'cpu', ...), None when it does not say."""
    from benchmarks.throughput import gpu_slug
    env = data.get("env") or {}
    if data.get("benchmarks") is not None:  # pytest-benchmark JSON: the CPU suite
        return "cpu"
    return gpu_slug(env["gpu"]) if env.get("gpu") else data.get("gpu")


def load_ratios(path: Path) -> tuple[dict, dict]:
    """({ratio name: value} of the compared ratios, the whole file) from any of the accepted file kinds."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmarks.compare: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"benchmarks.compare: {path} is not JSON ({exc})") from exc
    if data.get("benchmarks") is not None:
        from nm_plugins.report.bench_ratios import ratio_metrics
        metrics = ratio_metrics(path)
    elif isinstance(data.get("metrics"), dict):
        metrics = data["metrics"]
    else:
        raise ValueError(f"benchmarks.compare: {path} holds neither a 'metrics' mapping nor pytest-benchmark "
                         "'benchmarks' (expected a file from make throughput, make gpu-smoke, make bench or --accept)")
    ratios = {k: float(v) for k, v in metrics.items()
              if rule_for(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return ratios, data


def compare(current: dict, baseline: dict, margin_scale: float = 1.0) -> list:
    """One row per ratio: (name, baseline, current, change %, margin %, verdict); verdict is 'ok',
    'REGRESSED', 'MISSING' (in the baseline, not in current) or 'new' (no baseline). ``change`` is the
    worsening in percent (positive = worse)."""
    rows = []
    for name in sorted(set(current) | set(baseline)):
        direction, margin = rule_for(name)
        margin *= margin_scale
        if name not in current:
            rows.append((name, baseline[name], None, None, margin, "MISSING"))
            continue
        if name not in baseline:
            rows.append((name, None, current[name], None, margin, "new"))
            continue
        cost = (lambda v: v) if direction == "lower" else (lambda v: 1.0 / v if v else float("inf"))
        check = PercentageRegressionCheck("ratio", margin)
        now, then = {"ratio": cost(current[name])}, {"ratio": cost(baseline[name])}
        change = check.compute(now, then)
        rows.append((name, baseline[name], current[name], change, margin, "REGRESSED" if check.fails(now, then) else "ok"))
    return rows


def format_rows(rows: list) -> str:
    """A fixed-width table of the compared ratios."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    body = [(n, fmt(b, ".4g"), fmt(c, ".4g"), fmt(ch, "+.1f"), f"{m:g}", v) for n, b, c, ch, m, v in rows]
    head = ("ratio", "baseline", "current", "worse by %", "margin %", "verdict")
    widths = [max(len(r[i]) for r in body + [head]) for i in range(6)]
    line = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([line.format(*head)] + [line.format(*r) for r in body])


def accept(current_path: Path, baseline_path: Path, ratios: dict, data: dict) -> None:
    """Write CURRENT's compared ratios as the new baseline (with the GPU, versions and source named)."""
    record = {"gpu": gpu_of(data), "env": data.get("env") or data.get("machine_info", {}).get("cpu", {}),
              "source": str(current_path), "accepted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "metrics": ratios}
    from nm_plugins.runtime.results import write_json
    write_json(baseline_path, record, sort_keys=True, ensure_ascii=True, default=None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("current", type=Path)
    ap.add_argument("baseline", type=Path)
    ap.add_argument("--accept", action="store_true", help="write CURRENT's ratios to BASELINE (no comparison)")
    ap.add_argument("--margin-scale", type=float, default=1.0, help="multiply every margin (e.g. 2 on a noisy runner)")
    ap.add_argument("--allow-missing", action="store_true", help="a baseline ratio absent from CURRENT does not fail")
    args = ap.parse_args(argv)
    try:
        current, data = load_ratios(args.current)
        if args.accept:
            accept(args.current, args.baseline, current, data)
            print(f"accepted {len(current)} ratios of {args.current} as the baseline {args.baseline}")
            return 0
        if not args.baseline.is_file():
            print(f"no baseline {args.baseline} yet: nothing to compare ({len(current)} ratios in {args.current}); "
                  f"accept this run with: python -m benchmarks.compare {args.current} {args.baseline} --accept")
            return 0
        baseline, base_data = load_ratios(args.baseline)
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    now_gpu, then_gpu = gpu_of(data), gpu_of(base_data)
    if now_gpu and then_gpu and now_gpu != then_gpu:
        print(f"benchmarks.compare: {args.current} was measured on '{now_gpu}' but the baseline {args.baseline} on "
              f"'{then_gpu}': ratios are only compared between runs of the same GPU kind", file=sys.stderr)
        return 2
    if not current:
        print(f"benchmarks.compare: {args.current} holds none of the compared ratios", file=sys.stderr)
        return 2
    rows = compare(current, baseline, args.margin_scale)
    print(f"Ratios of {args.current} against the baseline {args.baseline} ({then_gpu or 'GPU not named'})")
    print(format_rows(rows))
    bad = [r for r in rows if r[5] == "REGRESSED" or (r[5] == "MISSING" and not args.allow_missing)]
    print(f"{len(rows) - len(bad)} of {len(rows)} ratios ok" + (f"; {len(bad)} regressed or missing" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""The CPU benchmark ratios side by side (``python -m benchmarks.report results/bench/cpu.json`` prints them).

Ratios use the median and the minimum of each benchmark's rounds (the minimum is the steadier one on a
shared machine). The step-cost target is read from the interleaved benchmark, whose rounds alternate
dense, SR-STE and STE steps: the median of its round-by-round ratios does not drift with the machine's
load the way a ratio of two benchmarks run a minute apart does. ``--strict`` exits 1 when a ratio misses
its target.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

INTERLEAVED = "test_step_interleaved_resnet18"
# (label, numerator, denominator, target, "le" = ratio <= target / "ge" = ratio >= target); a numerator
# "interleaved:<method>" is the paired ratio <method>/dense of the interleaved benchmark's rounds
RATIOS = [
    ("SR-STE step / dense step (ResNet-18 64x64 b32; interleaved rounds)", "interleaved:srste", INTERLEAVED, 1.10, "le"),
    ("STE step / dense step (interleaved rounds)", "interleaved:ste", INTERLEAVED, None, None),
    ("SR-STE step / dense step (separate benchmarks)", "test_step_srste_resnet18", "test_step_dense_resnet18", None, None),
    ("STE step / dense step (separate benchmarks)", "test_step_ste_resnet18", "test_step_dense_resnet18", None, None),
    ("argsort reference / nm_mask (ResNet-50 convs; speed-up)", "test_mask_argsort_reference_resnet50", "test_mask_nm_mask_resnet50", 10.0, "ge"),
    ("argsort reference / nm_mask + masked weight (speed-up)", "test_mask_argsort_reference_resnet50", "test_mask_and_masked_weight_resnet50", None, None),
]


def load_stats(path: Path) -> dict:
    """{benchmark name: stats dict} from a pytest-benchmark JSON file; the interleaved benchmark's paired
    ratios come as "interleaved:<method>" entries: median = the median of the round-by-round ratios, min =
    the method's fastest round over dense's fastest round."""
    data = json.loads(path.read_text())
    stats = {b["name"]: b["stats"] for b in data.get("benchmarks", [])}
    for b in data.get("benchmarks", []):
        if b["name"] == INTERLEAVED:
            info = b.get("extra_info", {})
            for method, ratios in info.get("paired_ratio", {}).items():
                low = min(info["seconds"][method]) / min(info["seconds"]["dense"])
                stats[f"interleaved:{method}"] = {"median": statistics.median(ratios), "min": low, "paired": True}
    return stats, data.get("machine_info", {})


# the ratios ``benchmarks.compare`` holds against a baseline: {metric name: (numerator, denominator)}
COMPARED = {"bench/srste_over_dense": ("interleaved:srste", INTERLEAVED), "bench/ste_over_dense": ("interleaved:ste", INTERLEAVED),
            "bench/argsort_over_nm_mask": ("test_mask_argsort_reference_resnet50", "test_mask_nm_mask_resnet50")}


def ratio_metrics(path: Path) -> dict:
    """{metric name: median ratio} of the COMPARED ratios whose benchmarks ran (for benchmarks.compare)."""
    stats, _ = load_stats(path)
    out = {}
    for name, (num, den) in COMPARED.items():
        if num in stats and den in stats:
            out[name] = stats[num]["median"] if stats[num].get("paired") else stats[num]["median"] / stats[den]["median"]
    return out


def rows(stats: dict) -> list:
    """(label, median ratio, min ratio, target text, verdict) for each ratio whose benchmarks ran."""
    out = []
    for label, num, den, target, op in RATIOS:
        if num not in stats or den not in stats:
            out.append((label, None, None, "", "not run"))
            continue
        if stats[num].get("paired"):  # already ratios, round by round
            med, low = stats[num]["median"], stats[num]["min"]
        else:
            med = stats[num]["median"] / stats[den]["median"]
            low = stats[num]["min"] / stats[den]["min"]
        if target is None:
            out.append((label, med, low, "", ""))
            continue
        ok = (med <= target) if op == "le" else (med >= target)
        out.append((label, med, low, f"{'<=' if op == 'le' else '>='} {target:g}", "meets target" if ok else "MISSES target"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CPU benchmark ratios")
    ap.add_argument("json", type=Path)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses its target")
    args = ap.parse_args(argv)
    if not args.json.is_file():
        print(f"bench ratios: {args.json} does not exist (run make bench first)", file=sys.stderr)
        return 2
    stats, machine = load_stats(args.json)
    print(f"CPU benchmark ratios from {args.json} ({machine.get('cpu', {}).get('brand_raw', 'unknown CPU')}, "
          f"{machine.get('cpu', {}).get('count', '?')} cores)")
    table = rows(stats)
    width = max(len(r[0]) for r in table)
    print(f"{'ratio':<{width}}  {'median':>7}  {'min':>7}  {'target':<8}  verdict")
    for label, med, low, target, verdict in table:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{label:<{width}}  {fmt(med):>7}  {fmt(low):>7}  {target:<8}  {verdict}")
    for name in sorted(n for n in stats if not stats[n].get("paired")):
        print(f"  {name:<45} median {stats[name]['median'] * 1e3:9.2f} ms  min {stats[name]['min'] * 1e3:9.2f} ms")
    missed = [r for r in table if r[4] == "MISSES target"]
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``make bench-methods``: CPU time of one training step of each proxy's model per registered N:M method (the
harness's methods: the registry minus dense, fixed, asp) against dense, interleaved within every round; ratio of
medians printed side by side, JSON to the path given (default results/bench/methods.json).

    python -m benchmarks.methods_step [OUT_JSON]

The numbers are measured by :mod:`nm_plugins.methods_harness.bench`, which ``make reproduce-methods`` also runs
(its leaderboard's step-time column).
"""
import json
import sys
from pathlib import Path

from nm_plugins.core.methods import method_names
from nm_plugins.methods_harness import grid as G
from nm_plugins.methods_harness.bench import ratios, step_times
from nm_plugins.runtime.config import read_yaml
from nm_plugins.runtime.results import provenance, write_json


def proxy_configs(proxy: str) -> dict:
    """{"dense" | "<method>_<pattern>": resolved config} of every harness row of ``proxy`` (seed 0)."""
    settings = read_yaml(G.SETTINGS)
    plan = G.read_plan(proxy, smoke=False)
    out = {"dense": G.load_run_config(proxy, ["sparsity.method=dense", "train.out_dir=/tmp/nm-bench-methods"])}
    for method in G.harness_methods(method_names(), settings, proxy):
        args = G.method_settings(method, settings, proxy, G.registry_defaults(method))
        for pattern in plan["patterns"]:
            overrides = G.run_overrides(proxy, method, pattern, 0, args, Path("/tmp/nm-bench-methods"), [])
            out[G.row_key(method, pattern)] = G.load_run_config(proxy, overrides)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "results/bench/methods.json")
    result = {"provenance": provenance(), "proxies": {}}
    for proxy, spec in G.PROXIES.items():
        times = step_times(proxy_configs(proxy), spec["trainer"])
        rows = ratios(times)
        result["proxies"][proxy] = {"rows": rows, "seconds": times}
        print(f"\n{proxy}: one training step, 1 thread, interleaved ({len(times['dense'])} rounds)")
        print(f"{'row':>22}  {'median ms':>10}  {'/ dense':>8}  {'paired':>8}")
        for label, r in rows.items():
            print(f"{label:>22}  {1e3 * r['median_s']:>10.2f}  {r['ratio_vs_dense']:>7.2f}x  {r['paired_ratio_median']:>7.2f}x")
    write_json(out, result)
    print(f"\n{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

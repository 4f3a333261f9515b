"""Print the CPU benchmark ratios side by side: ``python -m benchmarks.report results/bench/cpu.json [--strict]``.

The ratio code is the package's (:mod:`nm_plugins.report.bench_ratios`), which the report page uses too."""
import sys

from nm_plugins.report.bench_ratios import main

if __name__ == "__main__":
    sys.exit(main())

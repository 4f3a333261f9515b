"""Check a results.json against a thresholds YAML: ``python -m ci.check RESULTS_JSON THRESHOLDS_YAML``.

The checks and the claim statistics are the package's (:mod:`nm_plugins.verdicts`); this is CI's command line.
Prints a table and exits 1 when a figure falls short or a claim fails."""
import sys

from nm_plugins.verdicts.check import main

if __name__ == "__main__":
    sys.exit(main())

"""Verdicts on results: threshold checks (:mod:`.check`) and the paper's claims judged with paired statistics
over seeds (:mod:`.claims`). Imports no adapter; ``python -m nm_plugins.verdicts.check`` is the command line."""

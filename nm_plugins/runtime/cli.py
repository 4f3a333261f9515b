"""The command line every trainer shares: ``python -m nm_plugins.<adapter>.train --config FILE [--resume]
[--resume-from CHECKPOINT] [section.key=value ...]``."""
from __future__ import annotations

import argparse


def trainer_parser(doc: str, configs: str, example: str, resume_from: bool = True) -> argparse.ArgumentParser:
    """The parser of a trainer's ``main()``: ``--config`` (a YAML of ``configs``), ``--resume`` (from the run's own
    last checkpoint), ``--resume-from CHECKPOINT`` (when ``resume_from``) and ``section.key=value`` overrides
    (``example`` shows some)."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--config", required=True, help=f"YAML config (see {configs})")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint when present")
    if resume_from:
        parser.add_argument("--resume-from", metavar="CHECKPOINT", default=None, help="continue from this checkpoint file")
    parser.add_argument("overrides", nargs="*", help=f"section.key=value, e.g. {example}")
    return parser

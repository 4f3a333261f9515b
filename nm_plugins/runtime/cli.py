"""The command lines the trainers and reproductions share: a trainer's ``python -m nm_plugins.<adapter>.train
--config FILE [--resume] [--resume-from CHECKPOINT] [section.key=value ...]`` (:func:`trainer_parser`) and a
reproduction's ``python -m nm_plugins.<adapter>.reproduce [--help]``, set up by environment variables
(:func:`reproduce_parser`)."""
from __future__ import annotations

import argparse

from nm_plugins.runtime.project import ENV, project_root


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


def reproduce_parser(doc: str, prog: str) -> argparse.ArgumentParser:
    """The command line of a ``reproduce`` entry point: its module doc and the project folder as help (the runs
    are chosen by environment variables); no options besides ``--help``."""
    epilog = (f"Project folder: {ENV} (the folder holding configs/ and ci/thresholds/; default: the checkout the "
              f"package runs from, else the current directory). Now: {project_root()}")
    return argparse.ArgumentParser(prog=prog, description=doc, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

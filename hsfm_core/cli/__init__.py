"""`python -m hsfm_core …` and `hsfm …`: the command lines other tools script against
(docs/ARCHITECTURE.md §Layers, §Instruments). argparse and printing only: each command group's
module parses its arguments and calls the facade (`hsfm_core/instruments/`) or the trainer, jobs and
sweeps; none opens a store or checks a run itself.

Bad input ends with a one-line `error: …` on stderr and exit status 2; the store or workspace
being written is left as it was.
"""

from __future__ import annotations

import argparse
import sys

from hsfm_core.cli import analysis, data, rendering, training
from hsfm_core.cli.common import EXIT_BAD_INPUT, Parser
from hsfm_core.errors import InputError

__all__ = ["EXIT_BAD_INPUT", "build_parser", "console_main", "main"]


def build_parser(prog: str = "python -m hsfm_core") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="HSFM Studio command line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    data.add_commands(sub)
    training.add_commands(sub)
    analysis.add_commands(sub)
    rendering.add_commands(sub)
    return parser


def console_main() -> int:
    """The `hsfm` command (pyproject.toml [project.scripts]): the same commands as `python -m hsfm_core`."""
    return main(prog="hsfm")


def main(argv: list[str] | None = None, prog: str = "python -m hsfm_core") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: a store being written was left as it was; runs in progress are marked cancelled",
              file=sys.stderr)
        return 130

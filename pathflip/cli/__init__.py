"""The `pathflip` command line: one verb per task, one module per group of verbs."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import data, doctor, hub, jobs, models, released


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `pathflip`."""
    parser = argparse.ArgumentParser(prog="pathflip", description="PathFLIP whole-slide tools")
    parser.add_argument("--version", action="version", version=f"pathflip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (data, models, released, jobs, hub, doctor):
        group.add_verbs(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pathflip` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["train"]:
            return jobs.command_train(argv[1:])
        args = build_parser().parse_args(argv)
        return args.run(args)
    except ValueError as error:  # bad input: say what and how to fix it, without a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

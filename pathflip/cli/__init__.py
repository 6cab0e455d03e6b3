"""The `pathflip` command line: one verb per task, one module per group of verbs.

Exit codes: 0 done; 1 done in part (some slides failed, listed) or stopped by the machine (a file, folder,
permission or disk problem, named); 2 bad input (an option, a file or a model that cannot be used, named with
the fix), nothing done; 130 interrupted (Ctrl-C). ``--debug`` shows the traceback of an error.
"""

from __future__ import annotations

import argparse
import errno
import sys

from .. import __version__
from . import data, doctor, hub, jobs, models, released, serve
from .options import OneLineErrorParser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `pathflip`."""
    parser = OneLineErrorParser(prog="pathflip", description="PathFLIP whole-slide tools")
    parser.add_argument("--version", action="version", version=f"pathflip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for group in (data, models, released, jobs, hub, serve, doctor):
        group.add_verbs(commands)
    return parser


def main(argv: list[str] | None = None, *, train_prog: str = "pathflip train") -> int:
    """Entry point of the `pathflip` command (and of train.py, as ``train`` with ``train_prog="train.py"``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = argv[:1] == ["--debug"]
    verb = argv[1:] if debug else argv
    try:
        if verb[:1] == ["train"]:  # the Trainer's own options: HfArgumentParser reads them, not argparse
            return jobs.command_train(verb[1:], prog=train_prog)
        args = build_parser().parse_args(argv)
        return args.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        again = ("add --resume_from_checkpoint to the same command to go on from the last checkpoint"
                 if verb[:1] == ["train"] else "run the same command again to go on")  # fmt: skip
        print(f"interrupted: finished work is kept; {again}.", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        code, message = explain(error)
        if code is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return code


def explain(error: Exception) -> tuple[int | None, str]:
    """``(exit code, one line)`` for an expected failure; ``(None, "")`` for a bug (shown with its traceback)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, (ValueError, TypeError, ImportError)):
        return 2, str(error).strip()
    if isinstance(error, FileNotFoundError):
        return 2, f"{error.filename} does not exist; check the path." if error.filename else first
    if isinstance(error, PermissionError):
        return 1, f"no permission to use {error.filename or first}; choose a writable output folder or fix its rights."
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 1, f"the disk is full ({error.filename or first}); free space or write elsewhere. Finished work is kept."
    if isinstance(error, OSError) and error.errno == errno.EROFS:
        return 1, f"{error.filename or first} is on a read-only filesystem; write to another --output folder."
    if isinstance(error, OSError):  # transformers/huggingface_hub: a model that cannot be loaded, no network, ...
        return 2, f"{first} (--debug shows the details)"
    return None, ""


if __name__ == "__main__":
    sys.exit(main())

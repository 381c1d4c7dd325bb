"""Which third-party log records reach the user's terminal, set by the CLI and the server at start-up.

pydicom's pixel decoders log full tracebacks (e.g. "The decoded segment length does not match")
for files MediFlow then refuses with its own one-line message; Pillow and the pylibjpeg plugins
log every chunk or plugin lookup at DEBUG. Neither helps a user: `quiet_libraries` stops their
records at their own loggers; `mediflow --verbose` lets them through for debugging a file.
pydicom's warnings and the records logged on the "pydicom" logger itself quote header element
values (a patient's name, say): those stay dropped even then.

Importing MediFlow changes no logging or warnings setting: a program that imports the decoder as
a library keeps its own; `mediflow` (cli.py) and the server (serving/app.py create_app) call
`quiet_libraries` when they start.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARY_LOGGERS = ("pydicom", "PIL", "pylibjpeg", "openjpeg", "libjpeg", "rle")


def _drop(record: logging.LogRecord) -> bool:
    return False


def keep_header_values_out_of_logs() -> None:
    """pydicom both warns and logs about malformed elements, quoting their values (a patient's name
    or age, say); neither may reach MediFlow's logs or stderr. A logger filter drops the records of
    the "pydicom" logger whatever handlers or levels are configured later, and a warnings filter
    (not catch_warnings, which is not thread-safe; decoding runs in worker threads) silences its
    warnings. Safe to call more than once."""
    logger = logging.getLogger("pydicom")
    if _drop not in logger.filters:
        logger.addFilter(_drop)
    warnings.filterwarnings("ignore", module=r"pydicom\b")


def quiet_libraries(verbose: bool | None = None) -> None:
    """Stop (or, with `verbose`, restore) propagation of LIBRARY_LOGGERS to the root handlers, and keep
    pydicom's header values out of the logs either way (keep_header_values_out_of_logs).

    Records of pydicom's child loggers (pydicom.pixels.*, which log decoder tracebacks) bypass the
    filter on "pydicom" itself; they stop here unless `verbose`. `verbose` None (a server started
    outside the CLI): verbose when the root logger logs DEBUG, as `mediflow --verbose` sets it."""
    keep_header_values_out_of_logs()
    if verbose is None:
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).propagate = verbose


# -- a child runtime's own output (Ray under Flower's simulation) ------------------------------------
# Ray's C++ core writes to the process's stderr directly (not through Python logging), and Flower and
# Ray colour their lines with ANSI escape codes; in a log file both are noise.
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
NOISE = (
    re.compile(r"Failed to establish connection to the .*(metrics|event).* exporter agent"),
    re.compile(r"^\((raylet|pid=gcs_server|gcs_server)\)"),
    re.compile(r"FutureWarning: Tip: In future versions of Ray"),
    re.compile(r"^\s*warnings\.warn\($"),
)


def clean_line(line: str) -> str | None:
    """`line` without ANSI escape codes, or None when it is one of Ray's known harmless complaints."""
    plain = ANSI.sub("", line)
    return None if any(p.search(plain.strip()) for p in NOISE) else plain


@contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """While the block runs, everything written to file descriptor 2 (Python's and native code's
    alike) passes through clean_line on its way to the real stderr. `enabled=False` (--verbose):
    nothing is filtered."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "r", encoding="utf-8", errors="replace", newline="") as src, \
                os.fdopen(os.dup(real), "w", encoding="utf-8", buffering=1) as dst:
            for line in src:
                kept = clean_line(line)
                if kept is not None:
                    dst.write(kept)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the pump reads to its end and stops
        thread.join(timeout=2)
        os.close(real)

"""Which third-party log records reach the user's terminal.

pydicom's pixel decoders log full tracebacks (e.g. "The decoded segment length does not match")
for files MediFlow then refuses with its own one-line message; Pillow and the pylibjpeg plugins
log every chunk or plugin lookup at DEBUG. Neither helps a user: by default their records stop at their own loggers. `mediflow
--verbose` lets them through for debugging a file. Records logged on the "pydicom" logger itself,
which quote header element values (a patient's name, say), stay dropped even then (see
mediflow.data.dicom).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

LIBRARY_LOGGERS = ("pydicom", "PIL", "pylibjpeg", "openjpeg", "libjpeg", "rle")


def quiet_libraries(verbose: bool = False) -> None:
    """Stop (or, with `verbose`, restore) propagation of LIBRARY_LOGGERS to the root handlers."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).propagate = verbose


quiet_libraries()


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

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

LIBRARY_LOGGERS = ("pydicom", "PIL", "pylibjpeg", "openjpeg", "libjpeg", "rle")


def quiet_libraries(verbose: bool = False) -> None:
    """Stop (or, with `verbose`, restore) propagation of LIBRARY_LOGGERS to the root handlers."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).propagate = verbose


quiet_libraries()

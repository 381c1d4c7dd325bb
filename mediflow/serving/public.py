"""What the API may say about the server it runs on: no file-system paths, no library builds.

The model card and the evaluation file are written for operators (they name the checkpoint's path,
the training data's folder, the exact torch build); over the API a model is identified by its
SHA-256 and version. `public_view` keeps the document's shape and drops the rest.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

# Keys whose values describe the server's software build rather than the model.
BUILD_KEYS = frozenset({"torch", "torchvision", "onnxruntime", "python", "cuda", "cudnn", "numpy", "platform",
                        "hostname"})
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


def is_server_path(value: str) -> bool:
    """An absolute (or home-relative) file-system path: /srv/x, ~/x, C:\\x, \\\\share\\x."""
    v = value.strip()
    return v.startswith(("/", "~", "\\\\")) or bool(_WINDOWS_PATH.match(v))


def file_name(value: str) -> str:
    """The last component of a path, without the folders that lead to it."""
    v = value.strip()
    return (PureWindowsPath(v) if ("\\" in v or _WINDOWS_PATH.match(v)) else PurePosixPath(v)).name


def public_view(document: Any) -> Any:
    """`document` with build keys removed and every absolute path reduced to its file name."""
    if isinstance(document, dict):
        return {k: public_view(v) for k, v in document.items() if str(k).lower() not in BUILD_KEYS}
    if isinstance(document, list):
        return [public_view(v) for v in document]
    if isinstance(document, str) and is_server_path(document):
        return file_name(document)
    return document

"""A decoded image -> a small PNG for display: browsers cannot show DICOM (or 16-bit PNG) natively."""

from __future__ import annotations

import base64
import io

from PIL import Image

PREVIEW_SIZE = 1024


def preview_png(img: Image.Image, max_side: int = PREVIEW_SIZE) -> bytes:
    """PNG bytes of `img` shrunk to fit max_side x max_side (never enlarged)."""
    small = img.copy()
    small.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def preview_data_url(img: Image.Image, max_side: int = PREVIEW_SIZE) -> str:
    """`data:image/png;base64,...`, ready for an <img src>."""
    return "data:image/png;base64," + base64.b64encode(preview_png(img, max_side)).decode("ascii")

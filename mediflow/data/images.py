"""Bytes or files -> a DecodedImage (an RGB PIL image, with what the decoder noticed and read),
checked by content rather than by name or declared type.

Every entry point (dataset loading, CLI prediction, the API, the DICOM node) decodes through
`decode_image`, so a bad file gets the same clear error everywhere. JPEG, PNG, WebP and TIFF go
through Pillow, DICOM through pydicom (dicom.py); 16-bit grayscale is windowed to 8 bits alike.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from mediflow.data.decoded import FORMAT_NAMES, DecodedImage, SourceFormat
from mediflow.data.dicom import decode_dicom, looks_like_dicom
from mediflow.data.jpeg_stripes import decode_in_stripes
from mediflow.errors import ImageDecodeError, ImageTooLargeError

# Full-resolution chest films are at most ~4k x 4k; anything far beyond is a decompression bomb.
DEFAULT_MAX_PIXELS = 50_000_000

# Truncated JPEGs must fail loudly, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_MAGIC: dict[SourceFormat, tuple[bytes, ...]] = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    # TIFF 6.0 section 2: byte order "II" (little endian) or "MM", then 42; BigTIFF writes 43.
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}


def sniff_format(data: bytes) -> SourceFormat | None:
    """The image format by magic bytes: 'jpeg', 'png', 'webp', 'tiff', 'dicom' or None."""
    for fmt, magics in _MAGIC.items():
        if any(data.startswith(m) for m in magics):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":  # a RIFF container (its size between) of WebP
        return "webp"
    if looks_like_dicom(data):
        return "dicom"
    return None


# EXIF Orientation (tag 0x0112; CIPA DC-008 4.6.4, TIFF 6.0): how a viewer turns the stored pixels to
# show them upright. The same table as PIL.ImageOps.exif_transpose, applied here without rewriting
# the EXIF block (which that function does, and which can fail on a garbled block).
EXIF_ORIENTATION_TAG = 0x0112
EXIF_ORIENTATIONS = {
    2: ("flipped left to right", Image.Transpose.FLIP_LEFT_RIGHT),
    3: ("rotated 180°", Image.Transpose.ROTATE_180),
    4: ("flipped top to bottom", Image.Transpose.FLIP_TOP_BOTTOM),
    5: ("flipped about its main diagonal", Image.Transpose.TRANSPOSE),
    6: ("rotated 90° clockwise", Image.Transpose.ROTATE_270),
    7: ("flipped about its anti-diagonal", Image.Transpose.TRANSVERSE),
    8: ("rotated 90° counter-clockwise", Image.Transpose.ROTATE_90),
}


def _exif_orientation(img: Image.Image) -> int | None:
    """The image's EXIF Orientation when it asks for a transform (2..8), else None."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001  a garbled EXIF block is metadata, not a reason to refuse the film
        return None
    return value if isinstance(value, int) and value in EXIF_ORIENTATIONS else None


def _apply_orientation(img: Image.Image, orientation: int | None) -> Image.Image:
    """Turn the stored pixels the way an image viewer (and the doctor's browser) shows them, so the
    model, the preview and the heatmap all see the film as it is displayed. The result carries no
    EXIF block, so nothing downstream turns it again."""
    if orientation is None:
        return img
    turned = img.transpose(EXIF_ORIENTATIONS[orientation][1])
    turned.info.pop("exif", None)
    return turned


# Pillow's modes for one sample of more than 8 bits: 16-bit PNG and TIFF, 32-bit integer, float.
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# TIFF Photometric Interpretation (tag 262) 0, WhiteIsZero: the lowest value is white, as in DICOM's
# MONOCHROME1. Pillow inverts 8-bit such files itself, but not 16-bit ones.
TIFF_PHOTOMETRIC = 262
TIFF_WHITE_IS_ZERO = 0


def _to_rgb(img: Image.Image, *, keep_gray: bool = False, white_is_zero: bool = False) -> Image.Image:
    """Any supported mode -> 8-bit RGB (or 8-bit "L" with keep_gray). 16-bit grayscale is min-max
    windowed to 8 bits, as a DICOM without a stored window is, because X-ray PNGs and digitised
    films often use only 10-12 of their 16 bits and would otherwise look black. `white_is_zero`:
    the lowest of those values is white (inverted after windowing)."""
    if img.mode in WIDE_GRAY_MODES:
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        if white_is_zero:
            scaled = 255.0 - scaled
        img = Image.fromarray(scaled.round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "P", "PA"):
        # Composite on black: transparent margins in exported films are background, not tissue.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if keep_gray and img.mode == "L":
        return img
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(
    data: bytes,
    *,
    name: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    keep_gray: bool = False,
    threads: int = 1,
) -> DecodedImage:
    """Decode JPEG/PNG/WebP/TIFF/DICOM bytes to an RGB image, or raise ImageDecodeError saying what
    is wrong. The format is judged by content only (a WebP named .jpg is a WebP).

    `draft_size`: for JPEG, let the decoder downscale in the DCT domain (by 1/2, 1/4 or 1/8) while
    keeping both sides >= draft_size; far cheaper than decoding full resolution and resizing.
    `keep_gray`: return 8-bit grayscale images as "L" instead of RGB, for a caller that resizes
    before converting (a third of the resize work; preprocessing.harmonize gives the same pixels).
    `threads`: a grayscale JPEG with a restart marker after every row of blocks (or every few) is
    decoded in that many horizontal stripes at once, the same pixels in less time (jpeg_stripes.py);
    for a caller waiting on one image while cores are free, not for one decoding many in parallel.
    An image with an EXIF Orientation is returned turned upright, with a note and the flag
    "exif_orientation"; a multi-page TIFF or animated WebP gives its first page, with a note.
    """
    if not data:
        raise ImageDecodeError(f"{name}: file is empty")
    fmt = sniff_format(data)
    if fmt == "dicom":
        return decode_dicom(data, name=name, max_pixels=max_pixels)
    if fmt is None:
        raise ImageDecodeError(f"{name}: not a {FORMAT_NAMES} image (unrecognised file signature)")
    label = _LABELS[fmt]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"{name}: image has no pixels")
            if w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: image too large: {w}x{h} pixels exceeds the limit of {max_pixels:,} pixels"
                )
            if draft_size and fmt == "jpeg":
                img.draft(img.mode if img.mode in ("L", "RGB") else None, (draft_size, draft_size))
            pages = getattr(img, "n_frames", 1) if fmt in ("tiff", "webp") else 1
            white_is_zero = (fmt == "tiff" and img.mode in WIDE_GRAY_MODES
                             and img.tag_v2.get(TIFF_PHOTOMETRIC) == TIFF_WHITE_IS_ZERO)
            striped = decode_in_stripes(data, img.size, threads) if fmt == "jpeg" and img.mode == "L" else None
            if striped is None:
                img.load()
            else:
                striped.info = dict(img.info)  # EXIF (orientation), DPI: what the caller reads from img
                img = striped
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(
            f"{name}: image too large: exceeds the limit of {max_pixels:,} pixels (decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: {label} signature but the image cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated {label} ({exc})",
                               reason=f"corrupt or truncated {label} ({type(exc).__name__})") from None
    except (KeyError, IndexError, TypeError, struct.error, ZeroDivisionError) as exc:
        if fmt != "tiff":
            raise
        # What Pillow's TIFF reader raises on a garbled image file directory, rather than OSError.
        raise ImageDecodeError(f"{name}: corrupt TIFF directory ({type(exc).__name__})",
                               reason=f"corrupt TIFF directory ({type(exc).__name__})") from None
    if img.mode == "F" and not np.isfinite(np.asarray(img)).all():
        raise ImageDecodeError(f"{name}: {label} holds pixel values that are not finite numbers")
    orientation = _exif_orientation(img)
    out = DecodedImage(_to_rgb(_apply_orientation(img, orientation), keep_gray=keep_gray,
                               white_is_zero=white_is_zero), fmt)
    if pages > 1:
        kind = "multi-page TIFF" if fmt == "tiff" else "animated WebP"
        out.add_note(f"{kind}: first {'page' if fmt == 'tiff' else 'frame'} of {pages} analysed")
    if white_is_zero:
        out.add_note("TIFF Photometric Interpretation WhiteIsZero: the lowest values are shown white")
    if orientation is not None:
        out.add_note(f"EXIF Orientation {orientation}: the image was {EXIF_ORIENTATIONS[orientation][0]} "
                     "before analysis, as image viewers show it", flag="exif_orientation")
    return out


_LABELS: dict[SourceFormat, str] = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "tiff": "TIFF",
                                    "dicom": "DICOM"}


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an image file; ImageDecodeError naming the file when it is missing, a directory
    or unreadable."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{p}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageDecodeError(f"{p}: cannot read ({exc.strerror})") from None


def load_image(path: str | Path, **kwargs) -> DecodedImage:
    """Decode an image file (`decode_image`'s keyword arguments); errors name the file."""
    return decode_image(read_image_file(path), name=str(Path(path)), **kwargs)

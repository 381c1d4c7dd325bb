"""One film in every encoding MediFlow accepts, built in the tests (no binary fixtures), for the
metamorphic decoding tests: each encoding must decode to the same picture and get the same call.

`encodings(film)` takes an 8-bit grayscale film (H, W) and returns {name: file bytes}. Each entry
stores the same picture the way a scanner, film digitizer, PACS or phone would: more bits, inverted,
windowed, compressed, rotated under an EXIF tag, and so on. The encoders are the ones MediFlow's own
decoders are tested against: Pillow (PNG, JPEG, WebP, TIFF), pydicom with pylibjpeg-openjpeg (JPEG 2000), pyjpegls
(JPEG-LS) and its native RLE encoder; JPEG data in DICOM is Pillow's JPEG, encapsulated.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
from dicom_factory import image_dataset, to_bytes
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

# EXIF Orientation -> the transpose that turns the stored pixels upright (what a viewer applies);
# a file with Orientation o therefore stores the upright picture under the inverse transform.
EXIF_TRANSPOSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {
    None: None,
    Image.Transpose.FLIP_LEFT_RIGHT: Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.ROTATE_180: Image.Transpose.ROTATE_180,
    Image.Transpose.FLIP_TOP_BOTTOM: Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE: Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
    Image.Transpose.TRANSVERSE: Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
}


def synthetic_film(rows: int = 320, cols: int = 272, seed: int = 0) -> np.ndarray:
    """An 8-bit chest-film-like picture, deliberately asymmetric (heart on one side, a marker in one
    corner, not square) so that a wrong rotation or flip cannot correlate with the original."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows * 0.5, cols * 0.5
    body = np.exp(-(((x - cx) / (0.42 * cols)) ** 6 + ((y - cy * 1.05) / (0.48 * rows)) ** 6))
    lungs = sum(np.exp(-(((x - cx + s * 0.2 * cols) / (0.14 * cols)) ** 2 + ((y - 0.45 * rows) / (0.28 * rows)) ** 2))
                for s in (-1, 1))
    heart = np.exp(-(((x - cx - 0.1 * cols) / (0.12 * cols)) ** 2 + ((y - 0.62 * rows) / (0.12 * rows)) ** 2))
    ribs = 0.08 * (np.sin(y / rows * 40 + np.abs(x - cx) / cols * 6) > 0.6)
    spine = np.exp(-((x - cx) / (0.035 * cols)) ** 2)
    img = 0.15 + 0.6 * body - 0.4 * lungs * body + 0.3 * heart + ribs * body + 0.25 * spine
    img[int(0.05 * rows):int(0.12 * rows), int(0.06 * cols):int(0.16 * cols)] = 1.0  # an "R" marker block
    img += rng.normal(0, 0.015, img.shape)
    return np.clip(img / img.max() * 255, 0, 255).round().astype(np.uint8)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


def webp(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="WEBP", **kwargs)
    return buf.getvalue()


def tiff(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF", **kwargs)
    return buf.getvalue()


def white_is_zero(tiff_bytes: bytes) -> bytes:
    """A little-endian TIFF with its first directory's Photometric Interpretation (tag 262) set to 0,
    WhiteIsZero (Pillow writes 16-bit grayscale as BlackIsZero only)."""
    assert tiff_bytes[:4] == b"II*\x00"
    out = bytearray(tiff_bytes)
    (ifd,) = struct.unpack_from("<I", out, 4)
    (count,) = struct.unpack_from("<H", out, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", out, entry)[0] == 262:
            struct.pack_into("<H", out, entry + 8, 0)
            return bytes(out)
    raise AssertionError("no Photometric Interpretation tag")


def strip_jfif(jpeg: bytes) -> bytes:
    """The JPEG without its JFIF APP0 segment (as many modalities write their JPEG data)."""
    assert jpeg[2:4] == b"\xff\xe0" and jpeg[6:10] == b"JFIF", "expected a JFIF APP0 segment after SOI"
    length = int.from_bytes(jpeg[4:6], "big")
    return jpeg[:2] + jpeg[4 + length:]


def exif_jpeg(film: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose pixels are stored turned so that its EXIF Orientation turns them back upright."""
    img = Image.fromarray(film)
    inverse = _INVERSE[EXIF_TRANSPOSE[orientation]]
    stored = img.transpose(inverse) if inverse is not None else img
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(stored, exif=exif)


def _encapsulated(ds, frames: list[bytes], transfer_syntax) -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def _compressed(arr: np.ndarray, transfer_syntax, **kwargs) -> bytes:
    ds = image_dataset(arr, bits_stored=kwargs.pop("bits_stored", None))
    ds.compress(transfer_syntax, **kwargs)
    return to_bytes(ds)


def rgb_jpeg_dicom(film: np.ndarray, *, photometric: str, jfif: bool) -> bytes:
    """A 3-sample JPEG Baseline DICOM of the film (Pillow writes YCbCr 4:2:0 colour JPEG)."""
    rgb = np.stack([film] * 3, axis=-1)
    jpeg = _jpeg(Image.fromarray(rgb))
    ds = image_dataset(rgb, photometric="RGB")
    ds.PhotometricInterpretation = photometric
    return _encapsulated(ds, [jpeg if jfif else strip_jfif(jpeg)], JPEGBaseline8Bit)


def twelve_bit(film: np.ndarray) -> np.ndarray:
    """The film as a 12-bit detector would store it (0..4095)."""
    return (film.astype(np.uint16) * 16 + 8).astype(np.uint16)


def encodings(film: np.ndarray) -> dict[str, bytes]:
    """{encoding name: file bytes}, every one holding `film` (uint8, (H, W))."""
    img = Image.fromarray(film)
    s12 = twelve_bit(film)
    out: dict[str, bytes] = {
        "png8": _png(img),
        "png16": _png(Image.fromarray(s12.astype(np.uint16))),
        "jpeg-progressive": _jpeg(img, progressive=True),
        "jpeg-cmyk": _jpeg(img.convert("RGB").convert("CMYK")),
        "webp-lossless": webp(img, lossless=True),
        "webp-lossy": webp(img, quality=90),
        "tiff8": tiff(img),
        "tiff8-lzw": tiff(img, compression="tiff_lzw"),
        # 16-bit grayscale, as film digitizers write it: 12 significant bits, the lowest value black...
        "tiff16": tiff(Image.fromarray(s12.astype(np.uint16))),
        "tiff16-deflate": tiff(Image.fromarray(s12.astype(np.uint16)), compression="tiff_adobe_deflate"),
        # ... or white (Photometric Interpretation WhiteIsZero).
        "tiff16-white-is-zero": white_is_zero(tiff(Image.fromarray((4095 - s12).astype(np.uint16)))),
    }
    for orientation in range(1, 9):
        out[f"jpeg-exif{orientation}"] = exif_jpeg(film, orientation)
    dicom: dict[str, Callable[[], bytes]] = {
        "dicom-mono2-8bit": lambda: to_bytes(image_dataset(film)),
        "dicom-mono2-12bit": lambda: to_bytes(image_dataset(s12, bits_stored=12)),
        "dicom-mono2-window": lambda: to_bytes(image_dataset(s12, bits_stored=12, window=(2048, 4096))),
        "dicom-mono1": lambda: to_bytes(image_dataset(4095 - s12, bits_stored=12, photometric="MONOCHROME1")),
        "dicom-mono1-window": lambda: to_bytes(image_dataset(4095 - s12, bits_stored=12, photometric="MONOCHROME1",
                                                             window=(2048, 4096))),
        "dicom-voi-lut": lambda: to_bytes(image_dataset(
            s12, bits_stored=12, voi_lut=(0, np.linspace(0, 65535, 4096).round().astype(int).tolist()))),
        # Signed stored values s - 2048, rescaled to 2 * s - 1024 (-1008..7152), windowed over -1024..7168.
        "dicom-rescale-signed": lambda: to_bytes(image_dataset(
            (s12.astype(np.int16) - 2048).astype(np.int16), bits_stored=12, signed=True, rescale=(2.0, 3072.0),
            window=(3072, 8192))),
        "dicom-deflated": lambda: _deflated(s12),
        "dicom-jpeg2000-lossless": lambda: _compressed(s12, JPEG2000Lossless, bits_stored=12),
        "dicom-jpeg2000-lossy": lambda: _compressed(s12, JPEG2000, bits_stored=12, j2k_cr=[15]),
        "dicom-jpegls-lossless": lambda: _compressed(s12, JPEGLSLossless, bits_stored=12),
        "dicom-jpegls-near-lossless": lambda: _compressed(s12, JPEGLSNearLossless, bits_stored=12, jls_error=4),
        "dicom-rle": lambda: _compressed(s12, RLELossless, bits_stored=12),
        "dicom-jpeg-baseline-mono": lambda: _encapsulated(image_dataset(film), [_jpeg(img)], JPEGBaseline8Bit),
        "dicom-jpeg-baseline-ybr422": lambda: rgb_jpeg_dicom(film, photometric="YBR_FULL_422", jfif=True),
        "dicom-jpeg-baseline-rgb-mislabel": lambda: rgb_jpeg_dicom(film, photometric="RGB", jfif=False),
        "dicom-rgb-native": lambda: to_bytes(image_dataset(np.stack([film] * 3, axis=-1), photometric="RGB")),
        # First frame the film, the others not: only the first frame is analysed.
        "dicom-multiframe": lambda: to_bytes(image_dataset(np.stack([s12, 4095 - s12, s12 // 2]), bits_stored=12)),
        "dicom-multiframe-rle": lambda: _compressed(np.stack([s12, 4095 - s12]), RLELossless, bits_stored=12),
    }
    out.update({name: build() for name, build in dicom.items()})
    return out


def _deflated(arr: np.ndarray) -> bytes:
    ds = image_dataset(arr, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def bundled_fp32():
    """The bundled model's fp32 predictor: its fp32 ONNX export when shipped (never an int8 one, whose
    answers differ slightly), else the checkpoint on torch."""
    from mediflow.inference.bundled import BUNDLED_MODEL
    from mediflow.inference.predictor import Predictor

    fp32 = BUNDLED_MODEL.with_suffix(".onnx")
    return Predictor.load(fp32) if fp32.is_file() else Predictor.load(BUNDLED_MODEL, backend="torch")

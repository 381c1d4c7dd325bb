"""Fuzzing the upload decoder (Hypothesis): whatever the bytes, `decode_image` returns an RGB image
or raises MediFlow's own ImageDecodeError, within a time bound (CPU seconds, and a wall-clock alarm
for hangs) and a memory bound (tracemalloc peak), never a library exception, a hang or a
decompression bomb. CPU time rather than Hypothesis' wall-clock deadline: CI machines are shared.

Profiles (MEDIFLOW_FUZZ_PROFILE): "ci" (default: derandomized, a fixed seed, 200 examples a test,
under a minute for this file on a quiet 2-core VM) and "long" (`make fuzz`: random seeds, 5,000 examples a test).
A failing input Hypothesis finds is printed with the test; keep it as a file under
tests/data/fuzz_regressions/, which `test_regression_files` replays on every run.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import time
import tracemalloc
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import jpeg_bytes, png_bytes, xray_like
from dicom_factory import dicom_bytes, gradient, image_dataset, to_bytes
from dicom_raw import TAGS, image_elements, raw_dicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mediflow.data import jpeg_stripes
from mediflow.data.images import decode_image
from mediflow.data.jpeg_stripes import decode_in_stripes, stripe_layout
from mediflow.errors import ImageDecodeError

pytestmark = pytest.mark.fuzz

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
# Small enough that any accepted image is cheap, so the memory bound below is a real check.
MAX_PIXELS = 250_000
PEAK_BYTES = 64 * 1024 * 1024
CPU_SECONDS = 2.0  # per input; the slowest seen is ~0.05 s
HANG_SECONDS = 60  # wall clock: only a hang gets near it, however loaded the machine

settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("MEDIFLOW_FUZZ_PROFILE", "ci"))


def decodes_or_refuses(data: bytes) -> None:
    """The property: an RGB image or ImageDecodeError; anything else fails the test, as do more than
    CPU_SECONDS, a hang, or a peak of more than PEAK_BYTES of Python-visible memory (NumPy's buffers
    included). A JPEG is decoded twice: whole, and on two threads with stripes as small as the
    restart markers allow (jpeg_stripes.py; the server's path for large restart-marked films)."""
    _decodes_or_refuses(data, threads=1)
    if data.startswith(b"\xff\xd8"):
        with mock.patch.object(jpeg_stripes, "MIN_STRIPE_BYTES", 1):
            _decodes_or_refuses(data, threads=2)


def _decodes_or_refuses(data: bytes, threads: int) -> None:

    def hung(signum, frame):
        raise TimeoutError(f"decode_image still running after {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    cpu = time.process_time()
    tracemalloc.start()
    try:
        img = decode_image(data, name="fuzz", max_pixels=MAX_PIXELS, threads=threads).image
    except ImageDecodeError as exc:
        message = str(exc)
        assert message.startswith("fuzz: ") and "\n" not in message and "Traceback" not in message
        assert "\n" not in exc.reason
    else:
        assert img.mode == "RGB" and img.width * img.height <= MAX_PIXELS
        assert img.width > 0 and img.height > 0
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert peak < PEAK_BYTES, f"decoding took {peak / 2**20:.0f} MiB"
    assert time.process_time() - cpu < CPU_SECONDS, "decoding took too long"


# -- seeds: valid files of every kind the decoder reads -------------------------------------------

def _seeds() -> dict[str, bytes]:
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

    film = xray_like(1, 3, size=48)
    seeds = {
        "jpeg": jpeg_bytes(film),
        "jpeg-progressive": _pil(film.convert("RGB"), "JPEG", progressive=True),
        # Tall enough for a cut after RST7 (8 block rows), so the fuzz reaches striped decoding.
        "jpeg-restart-rows": _pil(xray_like(0, 4, size=160), "JPEG", restart_marker_rows=1),
        "png-gray": png_bytes(film),
        "png-16bit": _pil(Image.fromarray(np.asarray(film, dtype=np.uint16) * 200), "PNG"),
        "png-palette-alpha": _pil(film.convert("P"), "PNG", transparency=0),
        "webp-lossless": _pil(film, "WEBP", lossless=True),
        "webp-lossy": _pil(film, "WEBP", quality=80),
        "tiff-gray": _pil(film, "TIFF"),
        "tiff-16bit-lzw": _pil(Image.fromarray(np.asarray(film, dtype=np.uint16) * 200), "TIFF",
                               compression="tiff_lzw"),
        "tiff-two-pages": _pil(film, "TIFF", save_all=True, append_images=[film]),
        "dicom-12bit": dicom_bytes(gradient(top=4095), bits_stored=12, window=(2048, 1024)),
        "dicom-mono1-rescale": dicom_bytes(gradient(top=255, dtype=np.uint8), photometric="MONOCHROME1",
                                           rescale=(2.0, -10.0)),
        "dicom-voi-lut": dicom_bytes(gradient(top=255, dtype=np.uint8), voi_lut=(0, list(range(0, 512, 2)))),
        "dicom-rgb": dicom_bytes(np.zeros((16, 16, 3), np.uint8), photometric="RGB"),
        "dicom-multiframe": dicom_bytes(np.stack([gradient(top=255, dtype=np.uint8)] * 2)),
        "dicom-no-preamble": dicom_bytes(gradient(top=255, dtype=np.uint8), preamble=False),
    }
    for uid, key in ((RLELossless, "dicom-rle"), (JPEG2000Lossless, "dicom-j2k")):
        ds = image_dataset(gradient(top=4095), bits_stored=12)
        ds.compress(uid)  # the pylibjpeg codecs are dependencies of MediFlow: a missing one fails here
        seeds[key] = to_bytes(ds)
    ds = image_dataset(gradient(top=4095), bits_stored=12)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    seeds["dicom-deflated"] = to_bytes(ds)
    return seeds


def _pil(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


SEEDS = _seeds()


def test_every_seed_decodes():
    """The mutations below start from valid files; each must decode untouched."""
    for name, data in SEEDS.items():
        img = decode_image(data, name=name, max_pixels=MAX_PIXELS).image
        assert img.mode == "RGB", name
    with mock.patch.object(jpeg_stripes, "MIN_STRIPE_BYTES", 1):
        layout = stripe_layout(SEEDS["jpeg-restart-rows"])
        assert layout is not None and decode_in_stripes(SEEDS["jpeg-restart-rows"], (160, 160), 2) is not None


# -- mutations of valid files ---------------------------------------------------------------------

seed_names = st.sampled_from(sorted(SEEDS))


@given(name=seed_names, data=st.data())
def test_truncated_files(name, data):
    blob = SEEDS[name]
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    decodes_or_refuses(blob[:cut])


@given(name=seed_names, data=st.data())
def test_flipped_bytes(name, data):
    blob = bytearray(SEEDS[name])
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        pos = data.draw(st.integers(0, len(blob) - 1), label="pos")
        blob[pos] = data.draw(st.integers(0, 255), label="byte")
    decodes_or_refuses(bytes(blob))


@given(name=seed_names, data=st.data())
def test_spliced_bytes(name, data):
    """A run of random bytes inserted or overwritten (lengths and markers in the headers shift)."""
    blob = SEEDS[name]
    pos = data.draw(st.integers(0, len(blob)), label="pos")
    chunk = data.draw(st.binary(min_size=1, max_size=64), label="chunk")
    replace = data.draw(st.booleans(), label="replace")
    decodes_or_refuses(blob[:pos] + chunk + blob[pos + (len(chunk) if replace else 0):])


@given(st.binary(max_size=512))
def test_random_bytes(blob):
    decodes_or_refuses(blob)


@given(prefix=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"\0" * 128 + b"DICM", b"\x02\x00\x00\x00",
                                b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"II*\x00", b"MM\x00*"]),
       rest=st.binary(max_size=512))
def test_random_bytes_behind_a_valid_signature(prefix, rest):
    decodes_or_refuses(prefix + rest)


# -- PNG chunks: sizes and compression the signature alone does not reveal ------------------------

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1),
       depth=st.sampled_from([1, 2, 4, 8, 16, 3, 0]), color=st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
       idat=st.binary(max_size=256), compress=st.booleans())
def test_png_headers(width, height, depth, color, idat, compress):
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    body = zlib.compress(idat) if compress else idat
    decodes_or_refuses(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
                       + _png_chunk(b"IEND", b""))


# -- DICOM headers built element by element ------------------------------------------------------

US_BOUNDARY = st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 32, 64, 255, 256, 65535])
NUMERIC_TEXT = st.sampled_from([b"0", b"1", b"-1", b"0.5", b"1e999", b"nan", b"-inf", b"abc", b"", b"1\\2",
                                b"4096", b"-32768", b"9" * 16, b" 8 "])
PHOTOMETRIC = st.sampled_from([b"MONOCHROME1", b"MONOCHROME2", b"RGB", b"PALETTE COLOR", b"YBR_FULL",
                               b"YBR_FULL_422", b"YBR_ICT", b"HSV", b"", b"monochrome2", b"MONOCHROME2\\RGB"])


def attribute(keyword: str):
    """One header attribute: absent, a boundary value in its own VR, text in IS/DS/LO (wrong VR for
    US), raw bytes (OB/UN), or two values."""
    tag = TAGS[keyword]
    own = {
        "PhotometricInterpretation": PHOTOMETRIC.map(lambda v: ("CS", v)),
        "VOILUTFunction": st.sampled_from([b"LINEAR", b"LINEAR_EXACT", b"SIGMOID", b"CUBIC", b""]).map(
            lambda v: ("CS", v)),
        "WindowCenter": NUMERIC_TEXT.map(lambda v: ("DS", v)),
        "WindowWidth": NUMERIC_TEXT.map(lambda v: ("DS", v)),
        "RescaleSlope": NUMERIC_TEXT.map(lambda v: ("DS", v)),
        "RescaleIntercept": NUMERIC_TEXT.map(lambda v: ("DS", v)),
        "NumberOfFrames": NUMERIC_TEXT.map(lambda v: ("IS", v)),
    }.get(keyword, US_BOUNDARY.map(lambda v: ("US", struct.pack("<H", v))))
    return st.one_of(
        st.none(),
        own,
        NUMERIC_TEXT.flatmap(lambda v: st.sampled_from([("IS", v), ("DS", v), ("LO", v)])),
        st.binary(max_size=6).map(lambda v: ("UN", v)),
        st.tuples(US_BOUNDARY, US_BOUNDARY).map(lambda p: ("US", struct.pack("<2H", *p))),
    ).map(lambda value: (tag, value))


FUZZED = ["SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows",
          "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "WindowCenter",
          "WindowWidth", "RescaleIntercept", "RescaleSlope", "VOILUTFunction"]
TRANSFER_SYNTAXES = st.sampled_from(["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                                     "1.2.840.10008.1.2.8.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5",
                                     "1.2.3.4", "hello", ""])


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(changes=st.lists(st.sampled_from(FUZZED).flatmap(attribute), max_size=6),
       pixel_bytes=st.one_of(st.none(), st.integers(0, 70_000)), ts=TRANSFER_SYNTAXES,
       odd=st.booleans(), preamble=st.booleans())
def test_dicom_header_values(changes, pixel_bytes, ts, odd, preamble):
    els = image_elements()
    for tag, value in changes:
        if value is None:
            els.pop(tag, None)
        else:
            els[tag] = value
    if pixel_bytes is not None:
        els[TAGS["PixelData"]] = ("OB", bytes(range(256)) * (pixel_bytes // 256) + bytes(pixel_bytes % 256))
    decodes_or_refuses(raw_dicom(els, transfer_syntax=ts, preamble=preamble, pad=not odd))


# -- crashes found so far, replayed on every run --------------------------------------------------

@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*")) if REGRESSIONS.exists() else [],
                         ids=lambda p: p.name)
def test_regression_files(path):
    decodes_or_refuses(path.read_bytes())

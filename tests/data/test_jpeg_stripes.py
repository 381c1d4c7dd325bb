"""Striped JPEG decoding (mediflow/data/jpeg_stripes.py): a restart-marked grayscale JPEG decoded in
stripes on several threads gives exactly the pixels of one decoder, and anything else is left to it."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes
from PIL import Image

from mediflow.data import jpeg_stripes
from mediflow.data.images import decode_image
from mediflow.data.jpeg_stripes import decode_in_stripes, stripe_layout
from mediflow.errors import ImageDecodeError


def film(width: int, height: int, seed: int = 0) -> Image.Image:
    """Grey levels with structure and noise, so the scan is large and every block differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, (height, width)), 0, 255).astype(np.uint8))


# High quality: large scans that keep every block's coefficients.
jpeg = functools.partial(jpeg_bytes, quality=95)


@pytest.fixture
def small_stripes(monkeypatch):
    # The size threshold only decides whether a thread pays; correctness must not depend on it.
    monkeypatch.setattr(jpeg_stripes, "MIN_STRIPE_BYTES", 1024)


@pytest.mark.parametrize("width,height,rows_between_markers", [(1000, 1200, 1), (997, 1203, 1), (640, 2001, 2)])
@pytest.mark.parametrize("draft_size", [None, 224, 100])
@pytest.mark.parametrize("threads", [2, 3])
def test_stripes_give_the_pixels_of_one_decoder(small_stripes, width, height, rows_between_markers, draft_size,
                                                threads):
    data = jpeg(film(width, height), restart_marker_rows=rows_between_markers)
    layout = stripe_layout(data)
    assert layout is not None and layout.rows_per_interval == rows_between_markers
    whole = decode_image(data, draft_size=draft_size, keep_gray=True).image
    striped = decode_in_stripes(data, whole.size, threads)
    assert striped is not None, "the film was not cut: the comparison below would test nothing"
    assert striped.mode == "L" and striped.size == whole.size
    assert np.array_equal(np.asarray(striped), np.asarray(whole))
    # And through decode_image, as the server calls it (RGB as well as grey).
    assert np.array_equal(np.asarray(decode_image(data, draft_size=draft_size, keep_gray=True, threads=threads).image),
                          np.asarray(whole))
    assert np.array_equal(np.asarray(decode_image(data, draft_size=draft_size, threads=threads).image),
                          np.asarray(decode_image(data, draft_size=draft_size).image))


def test_a_last_stripe_thinner_than_the_scale_is_not_cut(small_stripes):
    """Most of the scan in rows 64-127 of 131: the cut after row 128 would leave 3 rows, fewer than
    the 1/8 scale needs (the decoder fuzz found this as a ZeroDivisionError inside PIL's draft)."""
    pixels = np.full((131, 200), 128, np.uint8)
    pixels[64:128] = np.asarray(film(200, 64))
    data = jpeg(Image.fromarray(pixels), restart_marker_rows=1)
    whole = decode_image(data, draft_size=16, keep_gray=True).image
    assert whole.size == (25, 17)
    assert decode_in_stripes(data, whole.size, 2) is None
    assert np.array_equal(np.asarray(decode_image(data, draft_size=16, keep_gray=True, threads=2).image),
                          np.asarray(whole))
    assert decode_in_stripes(data, (200, 131), 2) is not None  # at full size the 3 rows are a stripe


def test_a_small_scan_is_decoded_whole():
    data = jpeg(film(400, 300), restart_marker_rows=1)
    assert len(data) < 2 * jpeg_stripes.MIN_STRIPE_BYTES
    assert decode_in_stripes(data, (400, 300), 2) is None


@pytest.mark.parametrize("kind", ["no restart markers", "colour", "progressive", "interval not whole rows",
                                  "one thread"])
def test_what_cannot_be_cut_is_left_to_the_decoder(small_stripes, kind):
    grey = film(800, 800)
    data, threads = {
        "no restart markers": (jpeg(grey), 2),
        "colour": (jpeg(grey.convert("RGB"), restart_marker_rows=1), 2),
        "progressive": (jpeg(grey, progressive=True, restart_marker_rows=1), 2),
        "interval not whole rows": (jpeg(grey, restart_marker_blocks=7), 2),
        "one thread": (jpeg(grey, restart_marker_rows=1), 1),
    }[kind]
    assert decode_in_stripes(data, (800, 800), threads) is None
    if kind != "one thread":
        assert stripe_layout(data) is None


def test_a_size_that_is_not_a_dct_scale_is_left_to_the_decoder(small_stripes):
    data = jpeg(film(800, 800), restart_marker_rows=1)
    assert decode_in_stripes(data, (300, 300), 2) is None
    assert decode_in_stripes(data, (100, 100), 2) is not None


def test_a_truncated_striped_jpeg_fails_as_it_does_whole(small_stripes):
    data = jpeg(film(1000, 1000), restart_marker_rows=1)
    for cut in (len(data) - 2, len(data) * 3 // 4, len(data) // 3):
        with pytest.raises(ImageDecodeError, match="corrupt or truncated JPEG"):
            decode_image(data[:cut], name="u", draft_size=224)
        with pytest.raises(ImageDecodeError, match="corrupt or truncated JPEG"):
            decode_image(data[:cut], name="u", draft_size=224, threads=2)


def test_exif_orientation_survives_stripes(small_stripes):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    data = jpeg(film(900, 700), restart_marker_rows=1, exif=exif.tobytes())
    whole = decode_image(data, draft_size=224, keep_gray=True)
    striped = decode_image(data, draft_size=224, keep_gray=True, threads=2)
    assert "exif_orientation" in striped.flags and striped.notes == whole.notes
    assert striped.image.size == whole.image.size == (-(-700 // 2), -(-900 // 2))
    assert np.array_equal(np.asarray(striped.image), np.asarray(whole.image))


def test_a_serving_predictor_decodes_on_its_threads(tiny_model: Path, small_stripes, monkeypatch):
    """A serving predictor cuts a restart-marked upload into stripes and answers exactly as one
    that decodes it whole."""
    from mediflow.data import images
    from mediflow.inference.predictor import Predictor

    serving, plain = Predictor.load(tiny_model, serving=True, threads=2), Predictor.load(tiny_model)
    assert serving.decode_threads == 2 and plain.decode_threads == 1
    cut = []

    def spy(data, size, threads):
        out = decode_in_stripes(data, size, threads)
        cut.append(out is not None)
        return out

    monkeypatch.setattr(images, "decode_in_stripes", spy)
    data = jpeg(film(900, 1100, seed=3), restart_marker_rows=1)
    striped, whole = serving.predict_bytes(data), plain.predict_bytes(data)
    assert cut == [True, False]
    assert striped["probabilities"] == whole["probabilities"] and striped["prediction"] == whole["prediction"]
    assert striped["input_check"] == whole["input_check"]


@pytest.mark.realdata
def test_striped_films_decode_to_the_same_pixels(fullres_dir: Path):
    """The real films written with a restart marker per block row (16 of the 32): the same pixels
    at full resolution and drafted to the model's size, and they are the ones that get cut."""
    striped = 0
    for f in sorted(fullres_dir.glob("*/*.jpeg")):
        data = f.read_bytes()
        for draft_size in (None, 224):
            whole = decode_image(data, draft_size=draft_size, keep_gray=True).image
            cut = decode_in_stripes(data, whole.size, 2)
            if cut is not None:
                striped += draft_size == 224
                assert np.array_equal(np.asarray(cut), np.asarray(whole)), f.name
    assert striped >= 16

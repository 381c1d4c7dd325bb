"""WebP and TIFF decode like PNG, by content: a real test_dev film saved as WebP (and named .jpg, as
another hospital published it), as an 8-bit TIFF and as a 16-bit TIFF (12 significant bits, as film
digitizers write) gives the pixels and the call of the PNG of the same film: in the library, and
through `POST /api/vision/analyze` on a real server with the bundled model.

Reference for each: the 8-bit PNG for 8-bit encodings, the 16-bit PNG for 16-bit ones (both are
windowed min-max to 8 bits, as a DICOM without a stored window is).
"""

from __future__ import annotations

import functools
import io

import httpx
import numpy as np
import pytest
from conftest import REAL_224
from decode_corpus import bundled_fp32, tiff, twelve_bit, webp, white_is_zero
from PIL import Image
from server_process import ServerProcess

from mediflow.data.images import decode_image, sniff_format

pytestmark = pytest.mark.realdata

# Lossy WebP at quality 90: the most any pixel of the 224 px film may move, and its mean move.
LOSSY_MAX, LOSSY_MEAN = 24, 1.5
# Largest change of the reported P(PNEUMONIA) a lossy WebP may cause; the call must not change.
LOSSY_P = 0.05


@functools.cache
def _film() -> tuple[str, np.ndarray]:
    """(file name, 8-bit grayscale pixels) of the first PNEUMONIA film of test_dev (by name: the choice
    is not ours)."""
    folder = REAL_224 / "test_dev" / "PNEUMONIA"
    if not folder.is_dir():
        pytest.skip(f"real films not present at {folder} (a user's clone has no ../shared)")
    path = sorted(folder.iterdir())[0]
    return path.name, np.asarray(decode_image(path.read_bytes(), name=path.name).image.convert("L"))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def _uploads() -> dict[str, tuple[str, bytes, str]]:
    """{case: (file name sent, bytes, reference case)}."""
    _, film = _film()
    s12 = twelve_bit(film)
    img = Image.fromarray(film)
    return {
        "png8": ("film.png", _png(film), "png8"),
        "png16": ("film16.png", _png(s12), "png16"),
        "webp-lossless-named-jpg": ("film.jpg", webp(img, lossless=True), "png8"),
        "webp-lossy-named-jpg": ("film.jpg", webp(img, quality=90), "png8"),
        "tiff8": ("film.tif", tiff(img), "png8"),
        "tiff8-lzw": ("film.tif", tiff(img, compression="tiff_lzw"), "png8"),
        "tiff16": ("film16.tif", tiff(Image.fromarray(s12)), "png16"),
        "tiff16-white-is-zero": ("film16.tif", white_is_zero(tiff(Image.fromarray(4095 - s12))), "png16"),
    }


CASES = [c for c in ("webp-lossless-named-jpg", "webp-lossy-named-jpg", "tiff8", "tiff8-lzw", "tiff16",
                     "tiff16-white-is-zero")]


@pytest.fixture(scope="module")
def predictor():
    return bundled_fp32()


def test_formats_are_recognised_by_content():
    uploads = _uploads()
    assert sniff_format(uploads["webp-lossless-named-jpg"][1]) == "webp"
    assert sniff_format(uploads["tiff8"][1]) == sniff_format(uploads["tiff16"][1]) == "tiff"
    # A RIFF file that is not WebP (a WAVE sound) is not taken for one.
    assert sniff_format(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)) is None


@pytest.mark.parametrize("case", CASES)
def test_decodes_to_the_pixels_of_the_png(case, predictor):
    name, data, ref = _uploads()[case]
    decoded = decode_image(data, name=name, draft_size=predictor.draft_size, keep_gray=True)
    reference = decode_image(_uploads()[ref][1], draft_size=predictor.draft_size, keep_gray=True)
    assert decoded.source_format == ("webp" if case.startswith("webp") else "tiff")
    assert decoded.dicom_header is None and decoded.flags == []
    got = np.asarray(decoded.image.convert("L"), dtype=np.int16)
    want = np.asarray(reference.image.convert("L"), dtype=np.int16)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    if case == "webp-lossy-named-jpg":
        assert diff.max() <= LOSSY_MAX and diff.mean() <= LOSSY_MEAN, (diff.max(), diff.mean())
    else:
        assert diff.max() == 0, f"{case}: {np.count_nonzero(diff)} pixels differ, by up to {diff.max()}"
    if case == "tiff16-white-is-zero":
        assert decoded.notes == ["TIFF Photometric Interpretation WhiteIsZero: the lowest values are shown white"]


@pytest.mark.parametrize("case", CASES)
def test_gets_the_call_of_the_png(case, predictor):
    name, data, ref = _uploads()[case]
    got = predictor.predict_bytes(data, name=name)
    want = predictor.predict_bytes(_uploads()[ref][1])
    assert got["prediction"] == want["prediction"]
    p, q = got["probabilities"]["PNEUMONIA"], want["probabilities"]["PNEUMONIA"]
    assert abs(p - q) <= (LOSSY_P if "lossy" in case else 1e-6), (p, q)


def test_a_multi_page_tiff_gives_its_first_page_with_a_note():
    _, film = _film()
    buf = io.BytesIO()
    Image.fromarray(film).save(buf, format="TIFF", save_all=True,
                               append_images=[Image.fromarray(255 - film), Image.fromarray(film // 2)])
    decoded = decode_image(buf.getvalue(), name="scan.tif")
    assert np.array_equal(np.asarray(decoded.image.convert("L")), film)
    assert decoded.notes == ["multi-page TIFF: first page of 3 analysed"]


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory):
    """`mediflow serve` on the bundled model (default settings, a study store in a temp folder)."""
    tmp = tmp_path_factory.mktemp("webp-tiff-server")
    server = ServerProcess(["--host", "127.0.0.1"], tmp / "serve.log", env={"MEDIFLOW_DATA_DIR": str(tmp)})
    server.start()
    yield server
    server.stop()


def _analyze(url: str, name: str, data: bytes, content_type: str) -> httpx.Response:
    return httpx.post(url + "/api/vision/analyze", files={"file": (name, data, content_type)}, timeout=120)


def test_through_the_api_webp_named_jpg_and_tiff_get_the_pngs_finding(bundled_server):
    url = bundled_server.url
    uploads = _uploads()
    answers = {}
    for case, (name, data, _) in uploads.items():
        # The browser's declared type follows the name: a WebP named .jpg arrives as image/jpeg.
        declared = {"png": "image/png", "jpg": "image/jpeg", "tif": "image/tiff"}[name.rsplit(".", 1)[1]]
        r = _analyze(url, name, data, declared)
        assert r.status_code == 200, f"{case}: {r.status_code} {r.text[:300]}"
        answers[case] = r.json()
    for case in CASES:
        got, want = answers[case], answers[uploads[case][2]]
        assert got["prediction"] == want["prediction"], case
        p, q = got["probabilities"]["PNEUMONIA"], want["probabilities"]["PNEUMONIA"]
        assert abs(p - q) <= (LOSSY_P if "lossy" in case else 1e-4), (case, p, q)
    # The study keeps the format found by content, never the name's.
    study = httpx.get(f"{url}/api/studies/{answers['webp-lossless-named-jpg']['study_id']}", timeout=30).json()
    assert study["source_format"] == "webp"
    study = httpx.get(f"{url}/api/studies/{answers['tiff16']['study_id']}", timeout=30).json()
    assert study["source_format"] == "tiff"

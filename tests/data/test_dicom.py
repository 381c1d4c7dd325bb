"""DICOM decoding: every variant is built with pydicom inside the test."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import REPO
from dicom_factory import (
    dicom_bytes,
    gradient,
    image_dataset,
    structured_report_bytes,
    to_bytes,
)
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from mediflow.data.dicom import dicom_metadata
from mediflow.data.images import decode_image, sniff_format
from mediflow.errors import ImageDecodeError, ImageTooLargeError


def gray(data: bytes, **kwargs) -> np.ndarray:
    """Decode and return one channel as int (the RGB output of a monochrome file has equal channels)."""
    rgb = np.asarray(decode_image(data, name="t.dcm", **kwargs).image)
    assert rgb.shape[2] == 3 and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].astype(int)


def expected_linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' windowing to 0..255, written out independently of pydicom."""
    c, w = center - 0.5, width - 1
    y = ((x - c) / w + 0.5)
    return np.rint(np.clip(y, 0, 1) * 255).astype(int)


# -- grayscale pipeline ---------------------------------------------------------------------------

def test_monochrome2_min_max_window_keeps_pixel_order():
    arr = gradient(top=4095)
    out = gray(dicom_bytes(arr, bits_stored=12))
    assert out.shape == arr.shape
    assert out[0, 0] == 0 and out[0, -1] == 255
    assert (np.diff(out[0]) >= 0).all() and np.diff(out[0]).sum() == 255


def test_monochrome1_is_inverted():
    arr = gradient(top=4095)
    mono2 = gray(dicom_bytes(arr, bits_stored=12, photometric="MONOCHROME2"))
    mono1 = gray(dicom_bytes(arr, bits_stored=12, photometric="MONOCHROME1"))
    # MONOCHROME1: the lowest stored value is white, so the rising gradient now falls.
    assert mono1[0, 0] == 255 and mono1[0, -1] == 0
    assert (np.diff(mono1[0]) <= 0).all()
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_12_bits_stored_in_16_uses_the_full_display_range():
    """A 12-bit film in 16-bit words must not come out nearly black (4095 / 65535 of full scale)."""
    arr16 = gradient(top=4095)
    out16 = gray(dicom_bytes(arr16, bits_stored=12))
    out8 = gray(dicom_bytes(gradient(top=255, dtype=np.uint8)))
    assert out16.max() == 255 and out16.mean() > 100
    assert np.abs(out16 - out8).max() <= 1


def test_voi_window_clips_and_stretches():
    arr = gradient(top=4095)
    center, width = 2048, 1024
    plain = gray(dicom_bytes(arr, bits_stored=12))
    windowed = gray(dicom_bytes(arr, bits_stored=12, window=(center, width)))
    np.testing.assert_array_equal(windowed, expected_linear_window(arr.astype(float), center, width))
    below, above = arr < center - width // 2, arr > center + width // 2
    assert (windowed[below] == 0).all() and (windowed[above] == 255).all()
    # Inside the window the contrast is higher than without it.
    inside = ~below & ~above
    assert np.ptp(windowed[inside]) > np.ptp(plain[inside])


def test_voi_lut_sequence_is_applied():
    arr = gradient(top=4095)
    x = np.arange(4096) / 4095
    lut = np.rint(x ** 2 * 65535).astype(int).tolist()  # a gamma curve: darkens mid-tones
    out = gray(dicom_bytes(arr, bits_stored=12, voi_lut=(0, lut)))
    expected = np.rint((arr / 4095) ** 2 * 255).astype(int)
    assert np.abs(out - expected).max() <= 1
    assert out[0, arr.shape[1] // 2] < gray(dicom_bytes(arr, bits_stored=12))[0, arr.shape[1] // 2] - 40


def _lut_dataset(arr: np.ndarray, first: int, entries: list[int], *, descriptor_entries: int | None = None, **kw):
    """A VOI LUT Sequence file; `descriptor_entries` 0 is the standard's way of writing 65536 entries."""
    ds = image_dataset(arr, voi_lut=(first, entries[:1]), **kw)
    item = ds.VOILUTSequence[0]
    item.LUTDescriptor = [len(entries) if descriptor_entries is None else descriptor_entries, first, 16]
    # OW, not US: 65536 US values overflow explicit VR US's 2-byte length field.
    del item.LUTData
    item.add_new(0x00283006, "OW", np.asarray(entries, "<u2").tobytes())
    return ds


def test_voi_lut_with_nonzero_first_mapped_value_spans_its_own_output_range():
    """PS3.3 C.11.2.1.1: values below the first mapped value take the first entry, values past the
    last take the last; the display spans the LUT's own output range (here 5000..29564, not 0..65535)."""
    arr = gradient(top=4095)
    first, n = 1000, 2048
    entries = [5000 + 12 * i for i in range(n)]
    out = gray(to_bytes(_lut_dataset(arr, first, entries, bits_stored=12)))
    idx = np.clip(arr.astype(int) - first, 0, n - 1)
    expected = np.rint((5000 + 12 * idx - 5000) / (12 * (n - 1)) * 255).astype(int)
    np.testing.assert_array_equal(out, expected)


def test_voi_lut_with_65536_entries_written_as_zero():
    arr = gradient(top=65535)
    entries = [65535 - i for i in range(65536)]  # an inverting LUT over the full 16-bit range
    out = gray(to_bytes(_lut_dataset(arr, 0, entries, descriptor_entries=0, bits_stored=16)))
    np.testing.assert_array_equal(out, np.rint((65535 - arr.astype(int)) / 65535 * 255).astype(int))


def test_rescaled_values_are_rounded_before_indexing_the_voi_lut():
    """With a fractional slope the modality values are not integers; the LUT is indexed by the nearest
    integer. An alternating black/white LUT makes an index off by one (truncation) visible."""
    stored = gradient(top=4095)
    ds = _lut_dataset(stored, 0, [65535 * (i % 2) for i in range(1639)], bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 0.4, 0.0, "US"
    out = gray(to_bytes(ds))
    idx = np.floor(stored.astype(float) * 0.4 + 0.5).astype(int)  # no exact .5 ties at slope 0.4
    np.testing.assert_array_equal(out, 255 * (idx % 2))


def test_uniform_film_without_window_is_black_not_undefined():
    """min == max: no range to stretch; the film shows as the darkest value (white for MONOCHROME1)."""
    flat = np.full((8, 12), 700, np.uint16)
    assert (gray(dicom_bytes(flat, bits_stored=12)) == 0).all()
    assert (gray(dicom_bytes(flat, bits_stored=12, photometric="MONOCHROME1")) == 255).all()


def test_window_center_without_width_is_not_a_window():
    arr = gradient(top=4095)
    ds = image_dataset(arr, bits_stored=12)
    ds.WindowCenter = 2048
    np.testing.assert_array_equal(gray(to_bytes(ds)), gray(dicom_bytes(arr, bits_stored=12)))


def test_first_of_several_windows_is_applied():
    """PS3.3 C.11.2.1.2: several windows may be given; the first is the default."""
    arr = gradient(top=4095)
    out = gray(dicom_bytes(arr, bits_stored=12, window=([2048, 1000], [1024, 400])))
    np.testing.assert_array_equal(out, expected_linear_window(arr.astype(float), 2048, 1024))


def test_rescale_slope_intercept_before_window():
    """The window is in rescaled (e.g. Hounsfield) units: it must be applied after the modality LUT."""
    stored = gradient(top=4000).astype(np.int16)
    slope, intercept, center, width = 1.0, -1024.0, 40.0, 400.0  # a soft-tissue CT window
    out = gray(dicom_bytes(stored, bits_stored=16, signed=True, rescale=(slope, intercept), window=(center, width)))
    np.testing.assert_array_equal(out, expected_linear_window(stored * slope + intercept, center, width))
    # Ignoring the rescale would put the window elsewhere: stored 40 +- 200 is all black here.
    assert out[0, -1] == 255 and (out > 0).any()


def test_rescale_without_window_keeps_order_with_negative_slope():
    stored = gradient(top=1000)
    out = gray(dicom_bytes(stored, bits_stored=12, rescale=(-1.0, 0.0)))
    assert out[0, 0] == 255 and out[0, -1] == 0


def test_multiframe_takes_first_frame_with_note():
    frame0 = gradient(top=4095)
    frames = np.stack([frame0, frame0[:, ::-1], np.zeros_like(frame0)])
    data = dicom_bytes(frames, bits_stored=12)
    decoded = decode_image(data)
    out = np.asarray(decoded.image)[..., 0].astype(int)
    np.testing.assert_array_equal(out, gray(dicom_bytes(frame0, bits_stored=12)))
    assert out[0, 0] == 0 and out[0, -1] == 255  # frame 0, not the mirrored frame 1
    assert decoded.notes == ["multi-frame DICOM: first frame of 3 analysed"]
    assert decode_image(dicom_bytes(frame0, bits_stored=12)).notes == []


def test_rgb_dicom():
    arr = np.zeros((16, 24, 3), np.uint8)
    arr[..., 0] = 200
    arr[:, 12:, 1] = 120
    arr[..., 2] = np.arange(24, dtype=np.uint8)[None, :] * 10
    out = np.asarray(decode_image(dicom_bytes(arr, photometric="RGB")).image)
    np.testing.assert_array_equal(out, arr)


def test_ybr_full_dicom_is_converted_to_rgb():
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 24, dtype=np.uint8)[None, :]
    rgb[:8, :, 1] = 180
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = image_dataset(rgb, photometric="RGB")
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = ybr.tobytes()
    out = np.asarray(decode_image(to_bytes(ds)).image).astype(int)
    assert np.abs(out - rgb).max() <= 2


def test_palette_color_dicom():
    index = np.tile(np.arange(4, dtype=np.uint8), (8, 2))  # 8 x 8, palette entries 0..3
    ds = image_dataset(index)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint16) * 257  # 16-bit LUTs
    for channel, name in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", colors[:, channel].astype("<u2").tobytes())
    out = np.asarray(decode_image(to_bytes(ds)).image)
    np.testing.assert_array_equal(out[0, :4], colors[:, :] // 257)


def test_dicom_without_preamble_is_accepted():
    arr = gradient(top=4095)
    data = dicom_bytes(arr, bits_stored=12, preamble=False)
    assert data[128:132] != b"DICM" and sniff_format(data) == "dicom"
    np.testing.assert_array_equal(gray(data), gray(dicom_bytes(arr, bits_stored=12)))


def test_bytes_that_only_look_like_dicom_are_rejected():
    rng = np.random.default_rng(0)
    for i in range(200):
        junk = rng.integers(0, 256, int(rng.integers(16, 3000)), dtype=np.uint8).tobytes()
        # Half get a plausible first element so the forced pydicom read really runs on garbage.
        data = (b"\x08\x00\x05\x00CS\x0a\x00" + junk) if i % 2 else junk
        with pytest.raises(ImageDecodeError):
            decode_image(data)


# -- rejection ------------------------------------------------------------------------------------

def test_structured_report_is_rejected():
    with pytest.raises(ImageDecodeError, match=r"DICOM has no image \(SOP class Basic Text SR Storage"):
        decode_image(structured_report_bytes(), name="report.dcm")


@pytest.mark.parametrize("keep", [140, 250, 400, 0.5, 0.99])
def test_truncated_dicom_is_a_decode_error(keep):
    data = dicom_bytes(gradient(top=4095), bits_stored=12)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    with pytest.raises(ImageDecodeError, match="t.dcm: .*(truncated|no data elements)"):
        decode_image(data[:cut], name="t.dcm")


def peak_bytes_while_refused(data: bytes, max_pixels: int, match: str) -> int:
    """Decode must raise ImageTooLargeError; returns the peak Python memory it allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=match):
            decode_image(data, max_pixels=max_pixels)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_declared_size_is_refused_before_decoding():
    ds = image_dataset(gradient(top=4095), bits_stored=12)
    ds.Rows, ds.Columns = 60000, 60000  # 3.6e9 pixels declared; 7 GB if decoded
    assert peak_bytes_while_refused(to_bytes(ds), 50_000_000, "60000x60000 pixels exceeds") < 5_000_000


def test_deflate_bomb_is_refused_before_inflating():
    ds = image_dataset(np.zeros((2048, 4096), np.uint16), bits_stored=12)  # 16 MB that deflates to ~16 KB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds)
    assert len(data) < 100_000
    assert peak_bytes_while_refused(data, 1000, "deflated DICOM expands") < 4_000_000


def test_deflated_dicom_decodes():
    # Several files, so that both an odd-length deflate stream (padded with one byte) and an even one occur.
    for top in range(4000, 4096, 12):
        arr = gradient(top=top)
        ds = image_dataset(arr, bits_stored=12)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        np.testing.assert_array_equal(gray(to_bytes(ds)), gray(dicom_bytes(arr, bits_stored=12)))


# -- compressed transfer syntaxes -----------------------------------------------------------------

def _require_codec(uid, *, encode: bool = True) -> None:
    """The pylibjpeg plugins are dependencies of MediFlow: a missing codec is a broken install, not a skip."""
    decoder = get_decoder(uid)
    assert decoder.is_available, f"no decoder installed for {uid.name}: {decoder.missing_dependencies}"
    if encode:
        encoder = get_encoder(uid)
        assert encoder.is_available, f"no encoder installed for {uid.name}: {encoder.missing_dependencies}"


@pytest.mark.parametrize("uid", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_lossless_compressed_matches_uncompressed(uid):
    _require_codec(uid)
    arr = gradient(top=4095)
    ds = image_dataset(arr, bits_stored=12, photometric="MONOCHROME1", window=(2000, 3000))
    ds.compress(uid)
    assert ds.file_meta.TransferSyntaxUID == uid
    expected = gray(dicom_bytes(arr, bits_stored=12, photometric="MONOCHROME1", window=(2000, 3000)))
    np.testing.assert_array_equal(gray(to_bytes(ds)), expected)


def test_jpeg_baseline_dicom():
    _require_codec(JPEGBaseline8Bit, encode=False)
    from PIL import Image

    arr = gradient(top=255, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    ds = image_dataset(arr)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out = gray(to_bytes(ds))
    assert np.abs(out - gray(dicom_bytes(arr))).max() <= 3


def test_transfer_syntax_without_any_decoder():
    ds = image_dataset(gradient(top=255, dtype=np.uint8))
    ds.PixelData = encapsulate([b"\0\0\1\xb3" + b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(ImageDecodeError, match=r"transfer syntax MPEG2 Main Profile / Main Level .* not supported"):
        decode_image(to_bytes(ds))


def test_compressed_without_installed_plugin_names_the_syntax(monkeypatch):
    decoder = get_decoder(JPEGLSLossless)
    # As on a machine without pylibjpeg-libjpeg: the decoder exists but no plugin can run.
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    ds = image_dataset(gradient(top=4095), bits_stored=12)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    with pytest.raises(ImageDecodeError,
                       match=r"no decoder installed for DICOM transfer syntax JPEG-LS Lossless.*pylibjpeg-libjpeg"):
        decode_image(to_bytes(ds))


# -- metadata -------------------------------------------------------------------------------------

def test_metadata_fields_and_nothing_identifying():
    ds = image_dataset(np.stack([gradient(top=255, dtype=np.uint8)] * 2))
    meta = dicom_metadata(to_bytes(ds))
    assert meta == {
        "StudyInstanceUID": ds.StudyInstanceUID, "SOPInstanceUID": ds.SOPInstanceUID, "Modality": "DX",
        "PatientAge": "004Y", "PatientSex": "F", "BodyPartExamined": "CHEST", "ViewPosition": "AP",
        "SOPClassUID": ds.SOPClassUID, "NumberOfFrames": 2,
    }
    assert "Synthetic" not in repr(meta) and "SYN0001" not in repr(meta)


def test_metadata_absent_fields_are_none():
    ds = image_dataset(gradient(top=255, dtype=np.uint8))
    del ds.PatientAge, ds.ViewPosition
    meta = dicom_metadata(to_bytes(ds, preamble=False))
    assert meta["PatientAge"] is None and meta["ViewPosition"] is None and "NumberOfFrames" not in meta
    with pytest.raises(ImageDecodeError):
        dicom_metadata(b"\0" * 128 + b"DICM" + b"\x02\x00")


BAD_UID = "Jane.Doe.1.2.3"  # letters are not allowed in a UI value: pydicom quotes it when it reads it


def malformed_header_dicom() -> bytes:
    ds = image_dataset(gradient(top=255, dtype=np.uint8))
    good = ds.StudyInstanceUID = "1.2.826.0.1.36"  # same length as BAD_UID
    # Patched into the bytes: pydicom validates values it is given, but must read what it is sent.
    return to_bytes(ds).replace(good.encode(), BAD_UID.encode())


def test_malformed_header_values_never_reach_the_logs(caplog):
    """pydicom quotes invalid element values in its warnings and log records; a study's identifiers
    (or a patient's name or age) must not end up in MediFlow's logs once the CLI or the server has
    started (both call quiet_libraries)."""
    from mediflow.logs import quiet_libraries

    quiet_libraries(verbose=True)  # the header values stay out even with --verbose
    data = malformed_header_dicom()
    caplog.clear()
    with caplog.at_level("DEBUG"):
        decoded = decode_image(data)
        meta = dicom_metadata(data)
    assert meta["StudyInstanceUID"] == BAD_UID == decoded.dicom_header["StudyInstanceUID"]  # kept, as it is
    assert BAD_UID not in caplog.text


def test_malformed_header_values_never_reach_stderr_from_the_cli(tmp_path):
    """The same in a fresh process: `mediflow --verbose predict` logs DEBUG to stderr (pytest's own
    warning capture would hide what a real run prints)."""
    path = tmp_path / "odd.dcm"
    path.write_bytes(malformed_header_dicom())
    r = subprocess.run([sys.executable, "-W", "always", "-m", "mediflow", "--verbose", "predict", str(path)],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode in (0, 1) and str(path) in r.stdout, r.stderr  # 1: the input check refused it
    assert "pydicom" in r.stderr or "DEBUG" in r.stderr, "not a verbose run: the test would show nothing"
    assert BAD_UID not in r.stderr


IMPORT_ONLY = """
import logging, sys, warnings
from mediflow.data.images import load_image
decoded = load_image(sys.argv[1])
pydicom_log = logging.getLogger("pydicom")
untouched = (pydicom_log.filters == [] and pydicom_log.propagate
             and not any("pydicom" in str(getattr(m, "pattern", m) or "") for *_, m, _ in warnings.filters))
print(untouched, sys.argv[2] in decoded.dicom_header["StudyInstanceUID"])
"""

SERVER_START = """
import logging
from mediflow.serving.app import create_app
from mediflow.serving.settings import Settings
create_app(Settings(database_url="none"))
print(len(logging.getLogger("pydicom").filters), logging.getLogger("pydicom").propagate)
"""


def test_importing_the_decoder_leaves_logging_alone_and_the_server_quiets_it(tmp_path):
    """A program that uses MediFlow's decoder as a library keeps its own logging and warnings
    settings; the server sets MediFlow's when it is created."""
    path = tmp_path / "odd.dcm"
    path.write_bytes(malformed_header_dicom())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", IMPORT_ONLY, str(path), BAD_UID], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=env)
    assert r.returncode == 0 and r.stdout.split() == ["True", "True"], r.stderr
    r = subprocess.run([sys.executable, "-c", SERVER_START], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=env)
    assert r.returncode == 0 and r.stdout.split() == ["1", "False"], r.stderr

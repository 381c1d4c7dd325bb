"""DICOM bytes -> an RGB PIL image for the model, and the few header fields a study needs.

Display pipeline, in the order the DICOM standard (PS3.4 N.2) applies it: stored values (only the
Bits Stored low bits of each word, sign-extended when signed, whatever decoder produced them) ->
Modality LUT (rescale slope/intercept or a LUT) -> VOI LUT (window centre/width or a LUT; min-max
when the file has none; a percentile window when the stored one turns almost every pixel black,
or almost every pixel white) -> MONOCHROME1 inversion -> 8 bits. Only the first frame of a
multi-frame object is decoded. What the decoder assumed or corrected comes back with the image as
notes and flag codes (`DecodedImage.notes`, `.flags`); docs/dicom.md lists them.

Header values can identify a patient: nothing here logs them. pydicom's own warnings and log
records may quote element values; the CLI and the server keep them out of MediFlow's logs
(`mediflow.logs.quiet_libraries`), which importing this module does not do.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from mediflow.data.decoded import FORMAT_NAMES, DecodedImage
from mediflow.data.dicom_header import check_pixel_data_length, check_pixel_header, check_value_transforms, label
from mediflow.errors import ImageDecodeError, ImageTooLargeError

# Header fields kept with a study. Patient age and sex are clinical context; names and IDs are not read.
METADATA_FIELDS = ("StudyInstanceUID", "SOPInstanceUID", "Modality", "PatientAge", "PatientSex",
                   "BodyPartExamined", "ViewPosition", "SOPClassUID")

# Deflated DICOM is inflated whole by pydicom; cap what a small upload may expand to.
_INFLATE_OVERHEAD = 4 * 1024 * 1024

# Window fallback: a stored VOI window (or VOI LUT) that leaves at least this share of the pixels at
# one end of its output range (all black or all white after 8-bit rounding) shows no anatomy.
# MediFlow's own rule: far above the share a real film's background or collimation border gives,
# just below the 100 % of a window that misses the pixel values altogether. One end, not
# both: a LUT may binarise on purpose.
SATURATED_SHARE = 0.99
# ...and it is replaced by the 0.5th-99.5th percentile of the modality values: robust to the few
# burnt-in labels or dead pixels at the extremes that a min-max window would stretch to.
FALLBACK_PERCENTILES = (0.5, 99.5)


def _file_meta_transfer_syntax(data: bytes) -> tuple[str | None, int]:
    """(Transfer Syntax UID, offset after the file meta group) read straight from the bytes.

    The file meta group is always explicit-VR little endian; reading it by hand lets us look at the
    transfer syntax before pydicom inflates a deflated dataset of unknown size.
    """
    pos = 132 if data[128:132] == b"DICM" else 0
    ts = None
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            if pos + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if elem == 0x0010:
            ts = data[start:start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return ts, pos


def looks_like_dicom(data: bytes) -> bool:
    """True for Part 10 files ('DICM' at 128) and for preamble-less DICOM whose first element is a
    plausible file-meta (0002,xxxx) or identifying (0008,xxxx) element; random bytes fail this."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if len(data) < 16:
        return False
    group, elem = struct.unpack_from("<HH", data, 0)
    if group not in (0x0002, 0x0008) or elem > 0x0020:
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    (length,) = struct.unpack_from("<I", data, 4)  # implicit VR: a 4-byte length that fits the file
    return 0 < length < min(len(data), 1024)


def _check_inflated_size(data: bytes, offset: int, limit: int, name: str) -> None:
    """Stream-inflate a deflated dataset, discarding output, to bound its size before pydicom inflates it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    tail = data[offset:]
    try:
        # Stop at the end of the deflate stream: writers pad it to an even length, and that pad byte
        # stays in unconsumed_tail for ever.
        while not inflater.eof:
            out = inflater.decompress(tail, 1 << 18)
            total += len(out)
            if total > limit:
                raise ImageTooLargeError(f"{name}: deflated DICOM expands beyond {limit:,} bytes")
            if not out and len(inflater.unconsumed_tail) == len(tail):
                break  # no progress: the stream is cut short; pydicom reports it when reading
            tail = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageDecodeError(f"{name}: corrupt deflated DICOM ({exc})") from None


def _read_dataset(data: bytes, name: str, *, stop_before_pixels: bool, max_pixels: int | None = None):
    try:
        import pydicom
    except ImportError:
        raise ImageDecodeError(f"{name}: DICOM images are not supported by this installation "
                               "(pydicom is not installed)") from None
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    ts, meta_end = _file_meta_transfer_syntax(data)
    if ts == DeflatedExplicitVRLittleEndian:
        limit = (max_pixels or 50_000_000) * 8 + _INFLATE_OVERHEAD
        _check_inflated_size(data, meta_end, limit, name)
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble, stop_before_pixels=stop_before_pixels)
        _check_not_truncated(ds, name)
    except ImageDecodeError:
        raise
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"{name}: not a valid DICOM file ({exc})",
                               reason="not a valid DICOM file") from None
    except Exception as exc:  # pydicom raises many types on malformed input; none is a server bug
        raise ImageDecodeError(f"{name}: corrupt or truncated DICOM ({type(exc).__name__}: {_first_line(exc)})",
                               reason=f"corrupt or truncated DICOM ({type(exc).__name__})") from None
    _touch_elements(ds, name)
    if len(ds) == 0 and has_preamble:
        raise ImageDecodeError(f"{name}: DICOM file has no data elements (truncated?)")
    if not any(k in ds for k in ("SOPClassUID", "PixelData", "Rows", "Modality")):
        raise ImageDecodeError(f"{name}: not a {FORMAT_NAMES} image (no DICOM elements found)")
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    if meta is not None and "TransferSyntaxUID" in meta and not str(meta.TransferSyntaxUID).strip("\0 "):
        del meta.TransferSyntaxUID  # empty: as if absent
    if meta is None or "TransferSyntaxUID" not in meta:
        # A bare dataset without file meta: its encoding is what pydicom detected while reading.
        implicit, little = ds.original_encoding
        from pydicom.dataset import FileMetaDataset

        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        if little is False:
            meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _touch_elements(ds, name: str) -> None:
    """Convert every top-level element now, so a garbled value fails here, once, by its name.
    (pydicom converts raw values lazily, and reading the header must not fail halfway through.)"""
    from pydicom.datadict import dictionary_description

    for tag in list(ds.keys()):
        try:
            ds[tag]
        except Exception as exc:
            try:
                what = f"{dictionary_description(tag)} ({tag.group:04X},{tag.element:04X})"
            except KeyError:  # private or unknown tag
                what = f"element ({tag.group:04X},{tag.element:04X})"
            raise ImageDecodeError(f"{name}: DICOM {what} cannot be read ({type(exc).__name__}: {_first_line(exc)})",
                                   reason=f"DICOM {what} cannot be read ({type(exc).__name__})") from None


def _transfer_syntax(ds, name: str):
    """The file's Transfer Syntax UID, if pydicom knows it; an unknown one (a private UID, or one added
    to the standard after this pydicom release, e.g. 1.2.840.10008.1.2.8.1) cannot be decoded."""
    ts = ds.file_meta.TransferSyntaxUID
    what = label("TransferSyntaxUID")
    if not ts.is_valid:
        raise ImageDecodeError(f"{name}: DICOM {what} is not a valid UID ({str(ts)[:64]!r})",
                               reason=f"DICOM {what} is not a valid UID")
    if not ts.is_transfer_syntax:
        raise ImageDecodeError(f"{name}: DICOM {what} {ts} is not a transfer syntax this decoder knows",
                               reason=f"DICOM {what} is not a transfer syntax this decoder knows")
    return ts


def _check_not_truncated(ds, name: str) -> None:
    """pydicom keeps a value cut short by the end of the file; its last element then has fewer bytes
    than its declared length."""
    from pydicom.dataelem import RawDataElement

    if len(ds) == 0:
        return
    last = ds.get_item(list(ds.keys())[-1])
    if (isinstance(last, RawDataElement) and isinstance(last.value, bytes)
            and last.length != 0xFFFFFFFF and len(last.value) < last.length):
        raise ImageDecodeError(f"{name}: DICOM file is truncated ({len(last.value):,} of {last.length:,} bytes "
                               f"of its last element)")


def _first_line(exc: BaseException) -> str:
    """The exception's first line; with the next one when it only announces a list (pydicom's "Unable
    to decode as exceptions were raised by all available plugins:" says why on the lines after)."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not text:
        return ""
    first = text[0] if not (text[0].endswith(":") and len(text) > 1) else f"{text[0]} {text[1]}"
    return first[:300]


def dicom_metadata(data: bytes) -> dict[str, Any]:
    """Study-level header fields (see METADATA_FIELDS; None when absent) plus NumberOfFrames if present.

    Contains patient age and sex: store it with the study, never log it.
    """
    return _metadata(_read_dataset(data, "DICOM", stop_before_pixels=True))


def _metadata(ds) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in METADATA_FIELDS:
        value = ds.get(key)
        out[key] = str(value).strip() if value not in (None, "") else None
    try:
        frames = int(ds.get("NumberOfFrames") or 0)
    except (TypeError, ValueError):  # malformed: decode_dicom refuses such a file by name
        frames = 0
    if frames > 0:
        out["NumberOfFrames"] = frames
    return out


def _sop_class(ds) -> str:
    uid = ds.get("SOPClassUID")
    if not uid:
        return "unknown"
    label = uid.name if uid.name != str(uid) else ""
    return f"{label}, {uid}" if label else str(uid)


def _check_decoder(ds, name: str) -> None:
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageDecodeError(f"{name}: DICOM transfer syntax {ts.name} ({ts}) is not supported") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise ImageDecodeError(
            f"{name}: no decoder installed for DICOM transfer syntax {ts.name} ({ts}): {missing}")


def _output_range(ds, windowed_with: str) -> tuple[float, float]:
    """The range the VOI stage maps into, found by pushing extreme values through pydicom's own VOI
    code (so window, sigmoid, LINEAR_EXACT and LUT sequences all get their exact output range)."""
    from pydicom.pixels import apply_voi_lut

    if windowed_with == "lut":
        desc = ds.VOILUTSequence[0].LUTDescriptor
        n, first = (desc[0] or 2**16), desc[1]
        probe = np.arange(first, first + n, dtype=np.int64)
    else:
        probe = np.array([-1e12, 1e12])
    out = np.asarray(apply_voi_lut(probe, ds, index=0), dtype=np.float64)
    return float(out.min()), float(out.max())


def _to_unit_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((arr.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _saturated(unit: np.ndarray) -> tuple[float, str]:
    """(share 0..1, "black" or "white"): the larger share of pixels that an 8-bit rendering of `unit`
    (values in [0, 1]) shows at one end of the range, and which end."""
    edge = 0.5 / 255.0
    black, white = np.count_nonzero(unit < edge), np.count_nonzero(unit > 1.0 - edge)
    size = max(unit.size, 1)
    return (black / size, "black") if black >= white else (white / size, "white")


def _percentile_window(values: np.ndarray) -> np.ndarray:
    """`values` -> [0, 1] by the FALLBACK_PERCENTILES window (min-max if those two coincide)."""
    lo, hi = (float(v) for v in np.percentile(values, FALLBACK_PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return _to_unit_range(values, lo, hi)


def _grayscale(arr: np.ndarray, ds, notes: list[tuple[str, str | None]]) -> np.ndarray:
    """Monochrome stored values -> display values in [0, 1], white = dense (bone).

    A stored window or VOI LUT that leaves >= SATURATED_SHARE of the pixels black, or as many white,
    is replaced by a percentile window; (note, flag) pairs saying so are appended to `notes`."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(arr, ds)
    stored = None
    if ds.get("VOILUTSequence"):
        if not np.issubdtype(arr.dtype, np.integer):
            arr = np.rint(arr).astype(np.int64)  # a LUT is indexed by integers
        lo, hi = _output_range(ds, "lut")
        unit = _to_unit_range(apply_voi_lut(arr, ds, index=0), lo, hi)
        stored = "VOI LUT"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        lo, hi = _output_range(ds, "window")
        unit = _to_unit_range(apply_voi_lut(arr, ds, index=0, prefer_lut=False), lo, hi)
        stored = f"window (centre {float(ds.WindowCenter):g}, width {float(ds.WindowWidth):g})"
    else:
        unit = _to_unit_range(arr, float(arr.min()), float(arr.max()))
    if stored is not None and float(arr.max()) > float(arr.min()):
        share, end = _saturated(unit)
        if share >= SATURATED_SHARE:
            unit = _percentile_window(arr)
            p_lo, p_hi = FALLBACK_PERCENTILES
            notes.append((f"the stored {stored} shows {share:.1%} of the pixels pure {end}; "
                          f"a {p_lo:g}th-{p_hi:g}th percentile window was used instead", "window_fallback"))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: the lowest value is white
    return unit


def _stored_bits_only(arr: np.ndarray, header) -> tuple[np.ndarray, bool]:
    """Keep the Bits Stored low bits of each stored value and sign-extend signed ones (PS3.5 8.1.1:
    the bits above High Bit are not pixel data; overlays and junk may sit there). Returns the array
    and whether any value changed. Done here after every decoder, because pydicom 3 does it for
    native, RLE and JPEG lossless data but not for JPEG 2000 or JPEG-LS (it only fixes the
    codestream's signedness there, and a codestream may carry all 16 bits)."""
    if not np.issubdtype(arr.dtype, np.integer):
        return arr, False
    shift = arr.dtype.itemsize * 8 - header.bits_stored
    if shift <= 0:
        return arr, False
    if header.signed:
        wide = arr.astype(np.int64) if arr.dtype.kind == "u" else arr
        fixed = ((wide << shift).astype(arr.dtype.str.replace("u", "i")) >> shift)
    else:
        fixed = arr & np.array((1 << header.bits_stored) - 1, dtype=arr.dtype)
    changed = bool(np.any(fixed != arr))
    return fixed, changed


def _jpeg_markers(frame: bytes) -> tuple[dict[int, bytes], list[int]]:
    """APPn payloads (by n) and the frame header's component identifiers of a JPEG codestream,
    read from SOI up to the first SOS (ITU T.81 B.2); malformed streams give what was read."""
    apps: dict[int, bytes] = {}
    ids: list[int] = []
    pos = 2 if frame[:2] == b"\xff\xd8" else len(frame)
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            break
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        body = frame[pos + 4:pos + 2 + length]
        if 0xE0 <= marker <= 0xEF:
            apps.setdefault(marker - 0xE0, body)
        elif marker in (0xC0, 0xC1, 0xC2, 0xC3) and len(body) >= 6:
            count = body[5]
            ids = [body[6 + 3 * i] for i in range(count) if 6 + 3 * i < len(body)]
        elif marker == 0xDA:  # start of scan: the headers are over
            break
        pos += 2 + length
    return apps, ids


def _jpeg_is_ycbcr(frame: bytes) -> bool:
    """Whether a 3-component lossy JPEG holds YCbCr, by libjpeg's rule (jdapimin.c
    default_decompress_parms, after JFIF ITU T.871 and Adobe TN 5116): an Adobe APP14 marker's
    transform flag decides (0 = RGB); else component identifiers 'R','G','B' mean RGB; else YCbCr."""
    apps, ids = _jpeg_markers(frame)
    adobe = apps.get(14, b"")
    if adobe.startswith(b"Adobe") and len(adobe) >= 12:
        return adobe[11] != 0
    if 0 in apps and apps[0].startswith(b"JFIF"):
        return True
    return ids not in ([82, 71, 66], [114, 103, 98])


def _first_frame(ds, frames: int) -> bytes:
    from pydicom.encaps import get_frame

    return get_frame(ds.PixelData, 0, number_of_frames=frames)


def _color(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = 16 if arr.dtype == np.uint16 else 8
    else:
        bits = int(ds.BitsStored)
    return _to_unit_range(arr, 0.0, float(2**bits - 1))


def _decoding_plugin(ts) -> str:
    """pydicom's own RLE decoder (pure Python, bounds-checked) rather than pylibjpeg-rle, whose Rust
    code panics on a segment that decodes past the frame (found by tests/data/test_fuzz_decode.py) and
    prints that panic to stderr, where no logging setting can stop it. About 0.4 s more per 2k x 2k
    film. Any other syntax: whichever plugin pydicom finds ("")."""
    from pydicom.uid import RLELossless

    return "pydicom" if ts == RLELossless else ""


def decode_dicom(data: bytes, *, name: str, max_pixels: int) -> DecodedImage:
    """Decode the first frame of a DICOM image to 8-bit RGB, or raise ImageDecodeError.

    Rows x Columns is checked against `max_pixels` before any pixel data is decoded.
    The result's notes say what was assumed or corrected (e.g. frames skipped, a window replaced),
    its flags give their codes ("window_fallback", "ycbcr_mislabel", "high_bits_masked"), and its
    `dicom_header` / `dicom_dataset` the header read on the way (one parse per file).
    """
    from pydicom.pixels import pixel_array

    # Lossy JPEG syntaxes whose 3-component codestreams follow JFIF's colour convention (ITU T.871).
    from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

    ds = _read_dataset(data, name, stop_before_pixels=False, max_pixels=max_pixels)
    if "PixelData" not in ds:
        other = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        if other:
            raise ImageDecodeError(f"{name}: DICOM with {other} is not supported (SOP class {_sop_class(ds)})")
        sop = _sop_class(ds)
        hint = "; truncated?" if "Image Storage" in sop else ""
        raise ImageDecodeError(f"{name}: DICOM has no image (SOP class {sop}{hint})")
    ts = _transfer_syntax(ds, name)
    header = check_pixel_header(ds, name, native=not ts.is_compressed)
    rows, cols = header.rows, header.columns
    if rows * cols > max_pixels:
        raise ImageTooLargeError(f"{name}: {cols}x{rows} pixels exceeds the limit of {max_pixels:,} pixels",
                                 reason=f"{cols}x{rows} pixels exceeds the limit of {max_pixels:,} pixels")
    if ts.is_compressed:
        _check_decoder(ds, name)
    else:
        check_pixel_data_length(ds, header, name)
    check_value_transforms(ds, header, name)
    found: list[tuple[str, str | None]] = []  # (note, flag) from decoding
    options: dict[str, Any] = {"correct_unused_bits": False}  # done by _stored_bits_only, for every syntax
    try:
        if (ts in (JPEGBaseline8Bit, JPEGExtended12Bit) and header.photometric == "RGB"
                and _jpeg_is_ycbcr(_first_frame(ds, header.frames))):
            # A common modality mislabel: pydicom would show the YCbCr samples as RGB.
            options["force_rgb"] = True
            found.append(("the JPEG data is YCbCr (no Adobe marker saying RGB) although Photometric "
                          "Interpretation says RGB; decoded as YCbCr", "ycbcr_mislabel"))
        arr = pixel_array(ds, index=0, decoding_plugin=_decoding_plugin(ts), **options)
        arr, masked = _stored_bits_only(arr, header)
        if masked:
            found.append((f"bits above Bits Stored ({header.bits_stored}) set in the pixel data "
                          "(e.g. overlay planes) were ignored", "high_bits_masked"))
        if header.photometric.startswith("MONOCHROME"):
            unit = _grayscale(arr, ds, found)
        else:
            unit = _color(arr, ds)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001  corrupt codestreams, and what the header checks do not foresee.
        # BaseException: a Rust decoder's panic (pyo3 PanicException) is not an Exception.
        raise ImageDecodeError(
            f"{name}: DICOM pixel data ({ts.name}) cannot be decoded ({type(exc).__name__}: {_first_line(exc)})",
            reason=f"DICOM pixel data ({ts.name}) cannot be decoded ({type(exc).__name__})") from None
    expected = (rows, cols) if header.photometric in ("MONOCHROME1", "MONOCHROME2") else (rows, cols, 3)
    if unit.shape != expected:
        raise ImageDecodeError(f"{name}: DICOM pixel data decodes to shape {unit.shape}, but the header "
                               f"declares {expected} (Rows, Columns, Samples per Pixel disagree with it)",
                               reason="DICOM pixel data shape disagrees with the header")
    if not np.isfinite(unit).all():
        raise ImageDecodeError(f"{name}: DICOM Rescale Slope/Intercept or window values take pixels beyond the "
                               "range of a number", reason="DICOM pixel values not finite after rescale/window")
    img = Image.fromarray(np.rint(unit * 255.0).astype(np.uint8)).convert("RGB")
    out = DecodedImage(img, "dicom", dicom_header=_metadata(ds))
    for note in header.notes:
        out.add_note(note)
    if header.frames > 1:
        out.add_note(f"multi-frame DICOM: first frame of {header.frames} analysed")
    for note, flag in found:
        out.add_note(note, flag=flag)
    del ds.PixelData  # the caller keeps the header, not a second copy of the upload's pixels
    out.dicom_dataset = ds
    return out

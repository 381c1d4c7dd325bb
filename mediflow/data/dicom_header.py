"""Check every DICOM header attribute the pixel decoder reads, before pydicom uses it.

A file's Image Pixel, Modality LUT, VOI LUT and Palette Color attributes (DICOM PS3.3 C.7.6.3,
C.11.1, C.11.2, C.7.9) may be missing, empty, of the wrong VR, multi-valued, not a number, or out
of the range the standard allows. pydicom would then raise whatever its code happens to hit (a
TypeError, a struct.error, a NumPy dtype error); here each fault becomes one ImageDecodeError
naming the attribute and its tag, or, where the standard's intent is clear, a note on the image.

After `check_pixel_header`, the attributes pydicom reads hold clean values of their dictionary VR,
so its pixel code sees well-formed input. Only Image Pixel module values (numbers, photometric
terms) are quoted in messages; `reason` (the server's log line) quotes none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mediflow.errors import ImageDecodeError

# PS3.3 C.7.6.3.1.2. Those this decoder turns into grayscale or RGB (YBR_FULL(_422) through
# pydicom's colour conversion; YBR_ICT/RCT come out of the JPEG 2000 decoder as RGB).
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
PHOTOMETRIC = (*MONOCHROME, "PALETTE COLOR", *COLOR)
# PS3.3 C.11.2.1.3: the VOI LUT Functions defined by the standard, all three implemented by pydicom.
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
PALETTE_COLORS = ("Red", "Green", "Blue")

_MISSING = object()


@dataclass
class PixelHeader:
    """The checked Image Pixel attributes. Sizes in pixels; bits per sample."""

    rows: int
    columns: int
    samples: int  # 1 (grayscale, palette) or 3 (colour)
    photometric: str  # one of PHOTOMETRIC
    bits_allocated: int  # 1, or 8..64 in steps of 8
    bits_stored: int  # 1..bits_allocated
    signed: bool  # Pixel Representation 1
    frames: int  # >= 1
    notes: list[str] = field(default_factory=list)  # for the image: what was assumed or ignored


def label(keyword: str) -> str:
    """'Rows' -> 'Rows (0028,0010)': the attribute's name and tag as the standard writes them."""
    from pydicom.datadict import dictionary_description, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"{dictionary_description(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


def _fail(name: str, text: str, shown: Any = _MISSING) -> ImageDecodeError:
    """`name: DICOM <text>`, with the offending value appended for the user but not for the log."""
    value = "" if shown is _MISSING else f" ({_show(shown)})"
    return ImageDecodeError(f"{name}: DICOM {text}{value}", reason=f"DICOM {text}")


def _show(value: Any) -> str:
    text = repr(value if not isinstance(value, (list, tuple)) else list(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _value(ds, keyword: str, name: str) -> Any:
    """The element's value, or _MISSING when absent or empty (a type 2 attribute may be empty)."""
    if keyword not in ds:
        return _MISSING
    try:
        value = ds[keyword].value
    except Exception as exc:  # pydicom converts raw values lazily; a garbled one raises here
        raise ImageDecodeError(f"{name}: DICOM {label(keyword)} cannot be read ({type(exc).__name__})") from None
    if value is None or (isinstance(value, str) and not value.strip("\0 ")):
        return _MISSING
    if isinstance(value, (bytes, bytearray)) and not value:
        return _MISSING
    if _is_multi(value) and len(value) == 0:
        return _MISSING
    return value


def _is_multi(value: Any) -> bool:
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    return isinstance(value, (list, tuple, MultiValue, Sequence))


def _number(value: Any, name: str, keyword: str) -> float:
    """One finite number from a value of any VR: int, float, DS/IS string, or text in a wrong VR."""
    if isinstance(value, (bytes, bytearray)):
        raise _fail(name, f"{label(keyword)} holds bytes, not a number (wrong VR)")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        raise _fail(name, f"{label(keyword)} is not a number", value) from None
    if not math.isfinite(number):
        raise _fail(name, f"{label(keyword)} is not a finite number", value)
    return number


def _single(ds, keyword: str, name: str) -> Any:
    value = _value(ds, keyword, name)
    if value is not _MISSING and _is_multi(value):
        if len(value) != 1:
            raise _fail(name, f"{label(keyword)} has {len(value)} values, where it takes one")
        value = value[0]
    return value


def _integer(ds, keyword: str, name: str, *, required: bool, lo: int, hi: int, why: str = "") -> int | None:
    """A whole number in [lo, hi], or None when absent and not required."""
    value = _single(ds, keyword, name)
    if value is _MISSING:
        if required:
            raise _fail(name, f"image lacks {label(keyword)}")
        return None
    number = _number(value, name, keyword)
    if not number.is_integer():
        raise _fail(name, f"{label(keyword)} is not a whole number", value)
    if not lo <= number <= hi:
        raise _fail(name, f"{label(keyword)} is {int(number)}, outside {why or f'{lo}..{hi}'}")
    return int(number)


def _set(ds, keyword: str, value: Any) -> None:
    """Replace an element with a clean value of its dictionary VR (it may have come in a wrong one)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    if " or " in vr:  # US or SS, OB or OW: pick what the value needs
        vr = "SS" if "SS" in vr and isinstance(value, int) and value < 0 else vr.split(" or ")[0]
    if tag in ds:
        del ds[tag]
    ds.add_new(tag, vr, value)


# PS3.3 C.7.6.3: the Image Pixel attributes of type 1 this decoder needs whatever the image.
REQUIRED = ("Rows", "Columns", "PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored",
            "PixelRepresentation")


def _check_present(ds, name: str) -> None:
    """Raise one ImageDecodeError naming every required attribute that is absent or empty, e.g.
    'image lacks Rows (0028,0010) and Bits Stored (0028,0101)', so a file is fixed in one go."""
    missing = [label(k) for k in REQUIRED if _value(ds, k, name) is _MISSING]
    if not missing:
        return
    listed = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    raise _fail(name, f"image lacks {listed}")


def check_pixel_header(ds, name: str, *, native: bool) -> PixelHeader:
    """Check and normalise the Image Pixel attributes of `ds` (a pydicom Dataset), in place.

    `native`: the transfer syntax is uncompressed (Planar Configuration is then required for colour).
    Raises ImageDecodeError naming every missing or empty required attribute, or else the first
    faulty one (not a number, multi-valued, out of its PS3.3 C.7.6.3 range, or inconsistent with
    another).
    """
    _check_present(ds, name)
    rows = _integer(ds, "Rows", name, required=True, lo=0, hi=2**32)
    cols = _integer(ds, "Columns", name, required=True, lo=0, hi=2**32)
    if rows == 0 or cols == 0:
        raise _fail(name, f"image has no pixels ({cols}x{rows})")
    photometric = _single(ds, "PhotometricInterpretation", name)
    if photometric is _MISSING:
        raise _fail(name, f"image lacks {label('PhotometricInterpretation')}")
    if isinstance(photometric, (bytes, bytearray)):
        raise _fail(name, f"{label('PhotometricInterpretation')} holds bytes, not text (wrong VR)")
    photometric = str(photometric).strip(" \0")
    if photometric not in PHOTOMETRIC:
        raise _fail(name, f"{label('PhotometricInterpretation')} is not one this decoder supports "
                          f"({', '.join(PHOTOMETRIC)})", photometric)
    samples = _integer(ds, "SamplesPerPixel", name, required=True, lo=1, hi=3, why="1 or 3")
    if samples == 2:
        raise _fail(name, f"{label('SamplesPerPixel')} is 2, outside 1 or 3")
    if samples != (3 if photometric in COLOR else 1):
        raise _fail(name, f"{label('SamplesPerPixel')} is {samples}, but {photometric} images have "
                          f"{3 if photometric in COLOR else 1}")
    bits_allocated = _integer(ds, "BitsAllocated", name, required=True, lo=1, hi=64,
                              why="1 or a multiple of 8 up to 64")
    if bits_allocated != 1 and bits_allocated % 8:
        raise _fail(name, f"{label('BitsAllocated')} is {bits_allocated}, outside 1 or a multiple of 8 up to 64")
    bits_stored = _integer(ds, "BitsStored", name, required=True, lo=1, hi=bits_allocated,
                           why=f"1..Bits Allocated ({bits_allocated})")
    high_bit = _integer(ds, "HighBit", name, required=False, lo=0, hi=63)
    if high_bit is not None and high_bit != bits_stored - 1:
        # PS3.5 8.1.1 allows the stored bits anywhere in the word; every decoder here assumes the low bits.
        raise _fail(name, f"{label('HighBit')} is {high_bit}, but only High Bit = Bits Stored - 1 "
                          f"({bits_stored - 1}) is supported")
    pixel_representation = _integer(ds, "PixelRepresentation", name, required=True, lo=0, hi=1, why="0 or 1")
    if photometric.startswith("YBR") and bits_allocated != 8:
        raise _fail(name, f"{photometric} colour with {label('BitsAllocated')} {bits_allocated} is not "
                          "supported (only 8)")
    notes: list[str] = []
    planar = None
    if samples == 3:
        planar = _integer(ds, "PlanarConfiguration", name, required=native, lo=0, hi=1, why="0 or 1")
    frames = _integer(ds, "NumberOfFrames", name, required=False, lo=0, hi=2**31 - 1)
    if frames == 0:
        notes.append(f"{label('NumberOfFrames')} is 0; read as 1")
    frames = frames or 1

    for keyword, value in (("Rows", rows), ("Columns", cols), ("PhotometricInterpretation", photometric),
                           ("SamplesPerPixel", samples), ("BitsAllocated", bits_allocated),
                           ("BitsStored", bits_stored), ("HighBit", bits_stored - 1),
                           ("PixelRepresentation", pixel_representation)):
        _set(ds, keyword, value)
    if planar is not None or samples == 3:
        _set(ds, "PlanarConfiguration", planar or 0)
    if "NumberOfFrames" in ds:
        _set(ds, "NumberOfFrames", frames)
    header = PixelHeader(rows, cols, samples, photometric, bits_allocated, bits_stored,
                         bool(pixel_representation), frames, notes)
    return header


def check_pixel_data_length(ds, h: PixelHeader, name: str) -> None:
    """Uncompressed Pixel Data must hold every frame the header declares (PS3.5 8.1.1); raises
    ImageDecodeError saying how many bytes it has and needs."""
    data = ds.PixelData
    if data is None or len(data) == 0:
        raise _fail(name, f"{label('PixelData')} is empty")
    if not isinstance(data, (bytes, bytearray)):
        raise _fail(name, f"{label('PixelData')} is not a byte string (wrong VR)")
    per_pixel = h.samples * h.bits_allocated
    if h.photometric == "YBR_FULL_422":
        per_pixel = 2 * h.bits_allocated  # two luminance samples share one pair of chroma samples
    needed = (h.rows * h.columns * per_pixel * h.frames + 7) // 8
    if len(data) < needed:
        raise _fail(name, f"{label('PixelData')} holds {len(data):,} bytes, but {h.frames} frame(s) of "
                          f"{h.columns}x{h.rows} x {h.samples} sample(s) x {h.bits_allocated} bits need {needed:,}")


def _lut_descriptor(item, keyword: str, name: str, where: str, bits: tuple[int, ...]) -> tuple[int, int, int]:
    """(entries, first mapped value, bits per entry) of a LUT Descriptor (PS3.3 C.11.1.1.1).
    `where`: the sequence holding the item ('' for the palette descriptors of the dataset itself)."""
    value = _value(item, keyword, name)
    if value is _MISSING:
        raise _fail(name, f"{where or 'image '}lacks {label(keyword)}")
    if not _is_multi(value) or len(value) != 3:
        raise _fail(name, f"{where}{label(keyword)} does not have 3 values", value)
    numbers = [_number(v, name, keyword) for v in value]
    if not all(n.is_integer() for n in numbers):
        raise _fail(name, f"{where}{label(keyword)} is not whole numbers", value)
    entries, first, depth = (int(n) for n in numbers)
    if not 0 <= entries <= 65535:
        raise _fail(name, f"{where}{label(keyword)} gives {entries} entries, outside 0..65535")
    if depth not in bits:
        raise _fail(name, f"{where}{label(keyword)} gives {depth} bits per entry, outside "
                          f"{', '.join(map(str, bits))}")
    if not -32768 <= first <= 65535:
        raise _fail(name, f"{where}{label(keyword)} gives first value {first}, outside -32768..65535")
    return entries or 65536, first, depth


def _lut_data(item, keyword: str, name: str, where: str, entries: int, depth: int) -> None:
    value = _value(item, keyword, name)
    if value is _MISSING:
        raise _fail(name, f"{where or 'image '}lacks {label(keyword)}")
    if isinstance(value, (bytes, bytearray)):
        count = len(value) // 2
    elif _is_multi(value):
        count = len(value)
        if any(not isinstance(v, int) or not 0 <= v < 2 ** (8 if depth == 8 else 16) for v in value):
            raise _fail(name, f"{where}{label(keyword)} holds values outside {depth}-bit entries")
    else:
        count = 1
    if count < entries:
        raise _fail(name, f"{where}{label(keyword)} holds {count:,} entries, but its descriptor declares {entries:,}")
    if isinstance(value, (bytes, bytearray)) and len(value) != 2 * entries:
        item[keyword].value = bytes(value[:2 * entries])  # pydicom unpacks exactly `entries` words


def _first_item(ds, keyword: str, name: str):
    seq = _value(ds, keyword, name)
    if seq is _MISSING:
        return None
    if not _is_multi(seq):
        raise _fail(name, f"{label(keyword)} is not a sequence (wrong VR)")
    return seq[0]


def check_value_transforms(ds, header: PixelHeader, name: str) -> None:
    """Check the Modality LUT, VOI LUT (window or LUT) and palette attributes pydicom will apply.

    Window Center without Window Width (or the reverse) is ignored with a note on `header`;
    everything malformed raises ImageDecodeError naming the attribute.
    """
    grayscale = header.photometric in MONOCHROME
    if grayscale:
        _check_modality(ds, name)
        _check_voi(ds, header, name)
    elif header.photometric == "PALETTE COLOR":
        for color in PALETTE_COLORS:
            where = ""
            desc = f"{color}PaletteColorLookupTableDescriptor"
            # Palette descriptors: entries, first mapped value, 8 or 16 bits (PS3.3 C.7.6.3.1.5).
            entries, _, depth = _lut_descriptor(ds, desc, name, where, (8, 16))
            if _value(ds, f"Segmented{color}PaletteColorLookupTableData", name) is _MISSING:
                _lut_data(ds, f"{color}PaletteColorLookupTableData", name, where, entries, depth)


def _check_modality(ds, name: str) -> None:
    item = _first_item(ds, "ModalityLUTSequence", name)
    if item is not None:
        where = f"{label('ModalityLUTSequence')} item "
        entries, _, depth = _lut_descriptor(item, "LUTDescriptor", name, where, (8, 16))
        _lut_data(item, "LUTData", name, where, entries, depth)
        return
    slope = _single(ds, "RescaleSlope", name)
    intercept = _single(ds, "RescaleIntercept", name)
    if slope is _MISSING or intercept is _MISSING:
        for keyword in ("RescaleSlope", "RescaleIntercept"):  # pydicom uses the pair or neither
            if keyword in ds:
                del ds[keyword]
        return
    slope_value = _number(slope, name, "RescaleSlope")
    if slope_value == 0:
        raise _fail(name, f"{label('RescaleSlope')} is 0, which maps every pixel to one value")
    _set(ds, "RescaleSlope", slope_value)
    _set(ds, "RescaleIntercept", _number(intercept, name, "RescaleIntercept"))


def _check_voi(ds, header: PixelHeader, name: str) -> None:
    item = _first_item(ds, "VOILUTSequence", name)
    if item is not None:
        where = f"{label('VOILUTSequence')} item "
        # VOI LUT entries: 8 or 10-16 bits (PS3.3 C.11.2.1.1.1); pydicom implements exactly these.
        entries, _, depth = _lut_descriptor(item, "LUTDescriptor", name, where, (8, *range(10, 17)))
        _lut_data(item, "LUTData", name, where, entries, depth)
        return
    center = _value(ds, "WindowCenter", name)
    width = _value(ds, "WindowWidth", name)
    if center is _MISSING and width is _MISSING:
        return
    if center is _MISSING or width is _MISSING:
        present = "WindowCenter" if width is _MISSING else "WindowWidth"
        header.notes.append(f"{label(present)} without its pair ignored; the whole range is shown")
        if present in ds:
            del ds[present]
        return
    centers = [_number(v, name, "WindowCenter") for v in (center if _is_multi(center) else [center])]
    widths = [_number(v, name, "WindowWidth") for v in (width if _is_multi(width) else [width])]
    function = _single(ds, "VOILUTFunction", name)
    function = "LINEAR" if function is _MISSING else str(function).strip(" \0").upper()
    if function not in VOI_FUNCTIONS:
        raise _fail(name, f"{label('VOILUTFunction')} is not one of {', '.join(VOI_FUNCTIONS)}", function)
    # PS3.3 C.11.2.1.2.1 and C.11.2.1.3.2: LINEAR needs width >= 1, the others width > 0.
    if widths[0] < 1 if function == "LINEAR" else widths[0] <= 0:
        raise _fail(name, f"{label('WindowWidth')} is {widths[0]:g}, below the "
                          f"{'1' if function == 'LINEAR' else 'positive value'} a {function} window needs")
    _set(ds, "WindowCenter", centers[0])
    _set(ds, "WindowWidth", widths[0])
    if "VOILUTFunction" in ds:
        _set(ds, "VOILUTFunction", function)

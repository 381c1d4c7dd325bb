"""DICOM files written byte by byte, for headers pydicom refuses to write: unknown transfer syntax
UIDs, a wrong VR, text in a numeric element, odd lengths. Explicit VR little endian throughout
(the file meta group always is, PS3.10 7.1)."""

from __future__ import annotations

import struct

import numpy as np

EXPLICIT_LE = "1.2.840.10008.1.2.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
# VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}

Elements = dict[int, tuple[str, bytes]]


def element(tag: int, vr: str, value: bytes, *, pad: bool = True) -> bytes:
    """One explicit VR little endian element; `pad=False` keeps an odd length (malformed on purpose)."""
    if pad and len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in LONG_VRS:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", min(len(value), 0xFFFF)) + value


def us(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}H", *values)


def text(*values: str) -> bytes:
    return "\\".join(values).encode("ascii")


def file_meta(transfer_syntax: str) -> bytes:
    body = (element(0x00020001, "OB", b"\0\1") + element(0x00020002, "UI", text(DX_STORAGE))
            + element(0x00020003, "UI", text("1.2.826.0.1.3680043.8.498.1"))
            + element(0x00020010, "UI", transfer_syntax.encode("ascii")))
    return element(0x00020000, "UL", struct.pack("<I", len(body))) + body


def raw_dicom(elements: Elements, *, transfer_syntax: str = EXPLICIT_LE, preamble: bool = True,
              pad: bool = True) -> bytes:
    """A Part 10 file: preamble, file meta with `transfer_syntax`, then `elements` in tag order."""
    head = b"\0" * 128 + b"DICM" if preamble else b""
    body = b"".join(element(tag, vr, value, pad=pad) for tag, (vr, value) in sorted(elements.items()))
    return head + file_meta(transfer_syntax) + body


def image_elements(rows: int = 16, cols: int = 16, *, bits: int = 8) -> Elements:
    """A valid MONOCHROME2 image (a left-to-right ramp) as raw elements, to start faults from."""
    dtype = np.uint8 if bits == 8 else np.uint16
    ramp = np.tile(np.linspace(0, 2**bits - 1, cols).astype(dtype), (rows, 1))
    return {
        0x00080016: ("UI", text(DX_STORAGE)),
        0x00080018: ("UI", text("1.2.826.0.1.3680043.8.498.1")),
        0x00080060: ("CS", text("DX")),
        0x00280002: ("US", us(1)),
        0x00280004: ("CS", text("MONOCHROME2")),
        0x00280010: ("US", us(rows)),
        0x00280011: ("US", us(cols)),
        0x00280100: ("US", us(bits)),
        0x00280101: ("US", us(bits)),
        0x00280102: ("US", us(bits - 1)),
        0x00280103: ("US", us(0)),
        0x7FE00010: ("OB" if bits == 8 else "OW", ramp.tobytes()),
    }


TAGS = {
    "SamplesPerPixel": 0x00280002, "PhotometricInterpretation": 0x00280004, "PlanarConfiguration": 0x00280006,
    "NumberOfFrames": 0x00280008, "Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101, "HighBit": 0x00280102, "PixelRepresentation": 0x00280103,
    "WindowCenter": 0x00281050, "WindowWidth": 0x00281051, "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053, "VOILUTFunction": 0x00281056, "PixelData": 0x7FE00010,
}

"""Small DICOM files built with pydicom, for the tests and the benchmarks (no binary fixtures in the repository)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _base(sop_class: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN0001"
    ds.PatientAge = "004Y"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    return ds


def to_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]


def image_dataset(arr: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                  signed: bool = False, window: tuple[float, float] | None = None,
                  rescale: tuple[float, float] | None = None, voi_lut: tuple[int, list[int]] | None = None,
                  sop_class: str = DX_STORAGE) -> FileDataset:
    """`arr`: (rows, cols) or (frames, rows, cols) grayscale, or (rows, cols, 3) RGB, uint8/uint16/int16.

    voi_lut: (first mapped value, LUT entries) for a VOI LUT Sequence with 16-bit entries."""
    ds = _base(sop_class)
    color = photometric == "RGB"
    frames = arr.shape[0] if (arr.ndim == 3 and not color) or arr.ndim == 4 else 1
    ds.Rows, ds.Columns = (arr.shape[1:3] if frames > 1 else arr.shape[:2])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if voi_lut:
        first, entries = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(entries), first, 16]
        item.LUTData = entries
        item["LUTData"].VR = "US"
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def dicom_bytes(arr: np.ndarray, *, preamble: bool = True, **kwargs) -> bytes:
    return to_bytes(image_dataset(arr, **kwargs), preamble=preamble)


def structured_report_bytes() -> bytes:
    ds = _base(BASIC_TEXT_SR)
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    return to_bytes(ds)


def gradient(rows: int = 32, cols: int = 48, *, top: int = 4095, dtype=np.uint16) -> np.ndarray:
    """Rises left to right from 0 to `top`: lets tests check pixel order after inversion/windowing."""
    row = np.linspace(0, top, cols).round().astype(dtype)
    return np.tile(row, (rows, 1))

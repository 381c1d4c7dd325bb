"""The same film presented differently: the variants of the invariance check.

Each variant takes a decoded film (a PIL image, `decode_image(...).image`) and returns the film
as another site, viewer or encoder would hand it over: inside a dark screen frame, padded, cropped,
with another exposure or contrast, as a 12-bit DICOM windowed min-max, re-encoded as JPEG at
quality 50, at a hospital's resolution, rotated or flipped. A model that reads the lungs keeps its
call on every one of them.

Variants that hand the film over as a file (JPEG, DICOM) are `EncodedVariant`s: calling one decodes
its bytes in full, and `encode` gives the bytes themselves, so a caller can decode them the way the
server decodes an upload (JPEG draft mode, see `decode_image`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mediflow.data.images import decode_image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset, FileDataset

Variant = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class EncodedVariant:
    """A variant whose result is a file: `encode(img)` -> (bytes, a file name saying the format).
    Calling it returns the bytes decoded in full by `decode_image` (PIL image in, PIL image out,
    like every variant)."""

    encode: Callable[[Image.Image], tuple[bytes, str]]

    def __call__(self, img: Image.Image) -> Image.Image:
        data, name = self.encode(img)
        return decode_image(data, name=name).image


def dark_frame(img: Image.Image) -> Image.Image:
    """The film at 1,000 px high in the middle of a dark 1920x1080 canvas: a viewer's screenshot."""
    h = 1000
    w = round(img.width * h / img.height)
    canvas = Image.new(img.mode, (1920, 1080), (12,) * len(img.getbands()))
    canvas.paste(img.resize((w, h), Image.Resampling.BILINEAR), ((1920 - w) // 2, 40))
    return canvas


def pad_square(img: Image.Image) -> Image.Image:
    """The film shown at its usual 4:3 landscape shape, padded with black to a square."""
    w, h = round(img.height * 4 / 3), img.height
    film = img.resize((w, h), Image.Resampling.BILINEAR)
    canvas = Image.new(img.mode, (w, w), (0,) * len(img.getbands()))
    canvas.paste(film, (0, (w - h) // 2))
    return canvas


def crop(fraction: float) -> Variant:
    """Cut `fraction` of the width and height off each border (a tighter collimation or crop)."""

    def apply(img: Image.Image) -> Image.Image:
        dx, dy = round(img.width * fraction), round(img.height * fraction)
        return img.crop((dx, dy, img.width - dx, img.height - dy))

    return apply


def gamma(g: float) -> Variant:
    """Grey levels x -> 255 (x / 255) ** g: another exposure or detector response."""

    def apply(img: Image.Image) -> Image.Image:
        lut = [round(255 * (v / 255) ** g) for v in range(256)]
        return img.point(lut * len(img.getbands()))

    return apply


def contrast(factor: float) -> Variant:
    """PIL's contrast enhancement (blend with the mean grey) by `factor`."""
    return lambda img: ImageEnhance.Contrast(img).enhance(factor)


def dx_dataset(arr: np.ndarray, *, bits_stored: int, window: tuple[float, float] | None = None) -> FileDataset:
    """A Digital X-Ray MONOCHROME2 pydicom FileDataset holding `arr` ((rows, cols) uint16 values of
    `bits_stored` bits), uncompressed; `window`: (centre, width) to store, none by default."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("variant.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = arr.astype("<u2").tobytes()
    return ds


def dicom_file_bytes(ds: Dataset) -> bytes:
    """A pydicom dataset as the bytes of a DICOM file (preamble, file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_12bit_bytes(img: Image.Image) -> tuple[bytes, str]:
    """The film stored as a 12-bit MONOCHROME2 DICOM file without a window (value = 16 x grey + 8)."""
    arr = np.asarray(img.convert("L"), dtype=np.uint16) * 16 + 8
    return dicom_file_bytes(dx_dataset(arr, bits_stored=12)), "variant.dcm"


dicom_12bit = EncodedVariant(dicom_12bit_bytes)
"""The 12-bit DICOM copy decoded by MediFlow's own DICOM path, which windows it min-max."""


def jpeg_bytes(img: Image.Image, quality: int) -> tuple[bytes, str]:
    """`img` as a JPEG file at `quality` (PIL, 4:2:0 for colour images)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), "variant.jpeg"


def jpeg(quality: int) -> EncodedVariant:
    """Re-encoded as a JPEG at `quality` (PIL, 4:2:0)."""
    return EncodedVariant(lambda img: jpeg_bytes(img, quality))


def upscale(long_side: int) -> EncodedVariant:
    """The film at a hospital's resolution (long side `long_side` px, bicubic), encoded as JPEG q95
    the way a PACS export would be."""

    def encode(img: Image.Image) -> tuple[bytes, str]:
        s = long_side / max(img.size)
        return jpeg_bytes(img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BICUBIC), 95)

    return EncodedVariant(encode)


def rotate(degrees: float) -> Variant:
    """Rotated by `degrees` (counter-clockwise) about the centre, corners filled black."""
    return lambda img: img.rotate(degrees, resample=Image.Resampling.BILINEAR)


def hflip(img: Image.Image) -> Image.Image:
    """Mirrored left-right (a film hung the wrong way round)."""
    return ImageOps.mirror(img)


VARIANTS: dict[str, Variant] = {
    "dark frame 1920x1080": dark_frame,
    "padded to square": pad_square,
    "crop 6%": crop(0.06),
    "crop 12%": crop(0.12),
    "gamma 0.7": gamma(0.7),
    "gamma 1.4": gamma(1.4),
    "contrast 80%": contrast(0.8),
    "12-bit DICOM, min-max": dicom_12bit,
    "JPEG q50": jpeg(50),
    "upscaled to 2048 px": upscale(2048),
    "rotated +7 deg": rotate(7),
    "rotated -7 deg": rotate(-7),
    "horizontal flip": hflip,
}


# -- original vs copy: the same film as the hospital's original and as the training copy ----------


@dataclass(frozen=True)
class FilmPair:
    """A full-resolution original and its 224 px training copy (same file name), with the class."""

    label: str
    original: Path
    copy: Path


def original_copy_pairs(original_dirs: Sequence[Path], copies_root: Path) -> list[FilmPair]:
    """Every original under `original_dirs` (class folders, e.g. shared/data/fullres_train and
    fullres_samples) whose copy sits at `copies_root/<class>/<same name>`, each file name once (the
    first folder wins), sorted by class then name. Folders that do not exist are skipped."""
    pairs: dict[str, FilmPair] = {}
    for root in original_dirs:
        for original in sorted(Path(root).glob("*/*")):
            copy = Path(copies_root) / original.parent.name / original.name
            if original.is_file() and copy.is_file() and original.name not in pairs:
                pairs[original.name] = FilmPair(original.parent.name, original, copy)
    return sorted(pairs.values(), key=lambda fp: (fp.label, fp.original.name))


def png_bytes(img: Image.Image) -> tuple[bytes, str]:
    """`img` as a lossless PNG (grey levels kept), the way a film digitizer or a viewer exports it."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "original.png"


ORIGINAL_FORMS: dict[str, Callable[[bytes, Image.Image], tuple[bytes, str]]] = {
    "original JPEG": lambda data, _img: (data, "original.jpeg"),
    "original PNG": lambda _data, img: png_bytes(img.convert("L")),
    "original 12-bit DICOM": lambda _data, img: dicom_12bit_bytes(img),
}
"""How a hospital sends an original film: the file as acquired (a full-resolution JPEG), its pixels as
a lossless PNG, or as a 12-bit MONOCHROME2 DICOM. Each takes the original's bytes and its fully
decoded image and returns (bytes, a file name saying the format). None of them carries the training
copies' JPEG q75 blocks: a model that reads the film gives each the call its copy gets."""

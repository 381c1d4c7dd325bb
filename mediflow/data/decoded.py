"""What a decoder hands back: the picture, and what it noticed and read on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

if TYPE_CHECKING:  # pydicom is needed only when a DICOM file is decoded
    from pydicom import Dataset

# The formats recognised by content (images.sniff_format); never a file name or a declared type.
SourceFormat = Literal["jpeg", "png", "webp", "tiff", "dicom"]
# The same, as messages name them.
FORMAT_NAMES = "JPEG, PNG, WebP, TIFF or DICOM"


@dataclass
class DecodedImage:
    """One decoded film.

    `image`: 8-bit RGB, or 8-bit "L" when the caller asked to keep grayscale.
    `notes`: sentences for the user saying what the decoder assumed or corrected (e.g. "multi-frame
    DICOM: first frame of 3 analysed"); `flags`: their machine-readable codes ("window_fallback",
    "exif_orientation", ...) that the input check reads. docs/dicom.md lists them.
    `dicom_header`: for a DICOM file, the study-level header fields (dicom.METADATA_FIELDS, plus
    NumberOfFrames when present); None for any other format. It holds patient age and sex: store it
    with the study, never log it.
    `dicom_dataset`: for a DICOM file, the header as pydicom read it, Pixel Data removed, for a caller
    that needs more of it (the DICOM node's result objects copy the patient and study modules).
    """

    image: Image.Image
    source_format: SourceFormat
    notes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    dicom_header: dict[str, Any] | None = None
    dicom_dataset: Dataset | None = field(default=None, repr=False)

    def add_note(self, note: str, flag: str | None = None) -> None:
        """Add a human-readable `note` and, optionally, its machine-readable `flag` code."""
        self.notes.append(note)
        if flag is not None:
            self.flags.append(flag)

"""Inputs the input check must refuse, built from what ships with MediFlow's own dependencies.

No downloads: natural images and data that come with scikit-learn, matplotlib and SciPy (photographs,
an MR slice, elevation maps, plots), documents rendered with matplotlib's DejaVu font, synthetic
CT-, MR- and ultrasound-like slices, DICOM files whose header names another modality or body part,
and blank images. Each item is (name, kind, bytes); `kind` is one of KINDS. Also real DICOM files
of other projects (pydicom's test files) and, when scikit-image is installed, its sample pictures
(sets no choice was made on). Used by the input check's fit (the auxiliary non-radiographs of its
outlier rule: `corpus`), by benchmarks/input_check.py (docs/input_check.md) and by the tests.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps
from pydicom import uid

KINDS = ("natural", "document", "ct_like", "mr_like", "ultrasound_like", "other_modality_dicom", "blank")
Item = tuple[str, str, bytes]


def encode(img: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _package_images() -> list[tuple[str, Image.Image]]:
    """Photographs and pictures shipped in installed packages (each file that exists)."""
    import matplotlib
    import sklearn

    mpl = Path(matplotlib.get_data_path())
    candidates = [
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        mpl / "sample_data" / "grace_hopper.jpg",
        mpl / "sample_data" / "Minduka_Present_Blue_Pack.png",
        mpl / "sample_data" / "logo2.png",
        mpl / "images" / "matplotlib_large.png",
    ]
    try:
        import scipy

        candidates.append(Path(scipy.__file__).parent / "ndimage" / "tests" / "dots.png")
    except ImportError:
        pass
    out = []
    for p in candidates:
        if p.is_file():
            with Image.open(p) as im:
                out.append((p.stem, im.convert("RGB")))
    # Elevation maps as grey and as coloured renderings: smooth natural textures.
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        p = mpl / "sample_data" / name
        if p.is_file():
            z = np.load(p)[key].astype(np.float64)
            g = ((z - z.min()) / (np.ptp(z) or 1) * 255).astype(np.uint8)
            out.append((f"{name.split('.')[0]}-grey", Image.fromarray(g).convert("RGB")))
            import matplotlib.cm as cm

            out.append((f"{name.split('.')[0]}-terrain",
                        Image.fromarray((cm.terrain(g)[..., :3] * 255).astype(np.uint8))))
    return out


def scikit_image_samples() -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled sample pictures (photographs, microscopy, astronomy, text, patterns;
    the PNG and JPEG files in `skimage/data` with both sides >= 64 px), or [] when scikit-image is not
    installed. A second set of natural images: none of them was looked at while the check was
    designed, so the rate measured on them is not tuned to them."""
    try:
        import skimage
    except ImportError:
        return []
    out = []
    for p in sorted((Path(skimage.__file__).parent / "data").iterdir()):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(p) as im:
                if min(im.size) >= 64:
                    out.append((f"skimage-{p.stem}", im.convert("RGB")))
    return out


def scikit_image_lfw(size: int = 256) -> Iterator[Item]:
    """scikit-image's `lfw_subset`: 100 faces from Labeled Faces in the Wild and 100 patches of other
    pictures, 25 x 25 grey, enlarged to `size` px (bicubic) and saved as JPEG; nothing when
    scikit-image is not installed. A set of small grey pictures no choice was made on."""
    try:
        import skimage
    except ImportError:
        return
    arr = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")
    for i, a in enumerate(arr):
        im = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).resize((size, size),
                                                                                      Image.Resampling.BICUBIC)
        yield f"lfw-{'face' if i < 100 else 'other'}-{i:03d}.jpeg", "lfw", encode(im, "JPEG")


def natural_images(images: list[tuple[str, Image.Image]] | None = None, kind: str = "natural") -> Iterator[Item]:
    """Each image (default: the package images) as shipped, in grey, grey with equalised contrast,
    cropped and mirrored, blurred and inverted; items of `kind`."""
    for stem, im in (_package_images() if images is None else images):
        im = im if min(im.size) >= 256 else im.resize((max(256, im.width * 256 // min(im.size)),
                                                        max(256, im.height * 256 // min(im.size))))
        w, h = im.size
        grey = ImageOps.grayscale(im)
        variants = {
            "colour": im, "grey": grey, "grey-eq": ImageOps.equalize(grey),
            "grey-crop-left": grey.crop((0, 0, w * 2 // 3, h)), "grey-crop-right": grey.crop((w // 3, 0, w, h)),
            "grey-mirror": ImageOps.mirror(grey), "grey-blur": grey.filter(ImageFilter.GaussianBlur(2)),
            "grey-inverted": ImageOps.invert(grey),
        }
        for v, img in variants.items():
            yield f"{stem}-{v}.jpeg", kind, encode(img.convert("RGB") if img.mode != "L" else img, "JPEG")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(p), size) if p.is_file() else ImageFont.load_default(size)


WORDS = ("patient report findings lungs clear heart size normal no acute process impression follow up "
         "recommended history cough fever three days radiograph chest portable view comparison none "
         "signed electronically department of radiology page result table value unit range").split()


def documents(n: int = 24, seed: int = 0) -> Iterator[Item]:
    """Rendered text pages (reports, forms, tables), grey and coloured, JPEG and PNG."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (850, 1100) if i % 3 else (1100, 850)
        bg = (255, 255, 255) if i % 4 else (245, 240, 225)
        img = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(img)
        size = int(rng.integers(12, 28))
        font = _font(size)
        y = int(rng.integers(30, 80))
        colour = (0, 0, 0) if i % 5 else (20, 40, 140)
        d.text((40, y), "REPORT " + str(i), fill=colour, font=_font(size + 10))
        y += size * 3
        while y < h - 40:
            if i % 6 == 5 and rng.random() < 0.3:  # a table row
                for c in range(5):
                    d.rectangle((40 + c * 150, y, 40 + (c + 1) * 150, y + size + 8), outline=(0, 0, 0))
                    d.text((46 + c * 150, y + 3), str(int(rng.integers(0, 999))), fill=colour, font=font)
            else:
                d.text((40, y), " ".join(rng.choice(WORDS, int(rng.integers(4, 12)))), fill=colour, font=font)
            y += int(size * 1.6)
        if i % 4 == 3:  # a coloured letterhead band
            d.rectangle((0, 0, w, 20), fill=(30, 90, 200))
        out = img if i % 2 else ImageOps.grayscale(img)
        yield f"document-{i:02d}.{'png' if i % 3 == 0 else 'jpeg'}", "document", \
            encode(out, "PNG" if i % 3 == 0 else "JPEG")


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def ct_slice(seed: int, size: int = 512) -> np.ndarray:
    """A synthetic axial chest CT slice in Hounsfield units (int16): air outside, a soft-tissue body,
    two dark lungs with vessels, a heart, a vertebra and the table."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    hu = np.full((size, size), -1000.0)
    ry, rx = rng.uniform(0.28, 0.34), rng.uniform(0.38, 0.44)
    body = _ellipse(yy, xx, 0.5, 0.5, ry, rx)
    hu[body] = 40
    hu[_ellipse(yy, xx, 0.5, 0.5, ry - 0.02, rx - 0.02)
       & ~_ellipse(yy, xx, 0.5, 0.5, ry - 0.04, rx - 0.04)] = -100  # fat
    for cx in (0.32, 0.68):
        lung = _ellipse(yy, xx, 0.47, cx, ry * rng.uniform(0.7, 0.85), rx * 0.35)
        hu[lung] = -850 + rng.normal(0, 30, lung.sum())
    for _ in range(40):  # vessels
        cy, cx = rng.uniform(0.3, 0.65), rng.choice([rng.uniform(0.2, 0.42), rng.uniform(0.58, 0.8)])
        hu[_ellipse(yy, xx, cy, cx, 0.006, 0.006)] = 40
    hu[_ellipse(yy, xx, 0.5, 0.52, 0.1, 0.09)] = 50  # heart
    hu[_ellipse(yy, xx, 0.75, 0.5, 0.05, 0.045)] = 700  # vertebra
    hu[_ellipse(yy, xx, 0.43, 0.5, 0.03, 0.03)] = 300  # contrast in the aorta
    hu[(yy > 0.5 + ry + 0.04) & (yy < 0.5 + ry + 0.06)] = 200  # table
    hu += rng.normal(0, 12, hu.shape)
    return np.clip(hu, -1024, 3000).astype(np.int16)


def window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    return (np.clip((hu - centre + width / 2) / width, 0, 1) * 255).astype(np.uint8)


def ct_like(n: int = 20) -> Iterator[Item]:
    """Synthetic CT slices rendered as a viewer would (lung and soft-tissue windows), PNG and JPEG."""
    for i in range(n):
        hu = ct_slice(i)
        img = window(hu, -600, 1500) if i % 2 else window(hu, 40, 400)
        yield (f"ct-{i:02d}.{'png' if i % 3 else 'jpeg'}", "ct_like",
               encode(Image.fromarray(img), "PNG" if i % 3 else "JPEG"))


def mr_slice(seed: int, size: int = 256) -> np.ndarray:
    """A synthetic axial brain MR-like slice (uint8): skull ring, grey/white matter, ventricles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size))
    img[_ellipse(yy, xx, 0.5, 0.5, 0.42, 0.35)] = 200
    img[_ellipse(yy, xx, 0.5, 0.5, 0.39, 0.32)] = 60
    img[_ellipse(yy, xx, 0.5, 0.5, 0.37, 0.30)] = 130
    img[_ellipse(yy, xx, 0.5, 0.5, 0.28, 0.22)] = 170
    for cx in (0.45, 0.55):
        img[_ellipse(yy, xx, 0.48, cx, 0.1, 0.03)] = 30
    img += rng.normal(0, 8, img.shape)
    return np.clip(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1)), 0, 255
                   ).astype(np.uint8)


def matplotlib_mr() -> np.ndarray | None:
    """The real MR slice in matplotlib's sample data (256 x 256, 16-bit), as uint8; None if absent."""
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
    if not p.is_file():
        return None
    a = np.frombuffer(gzip.decompress(p.read_bytes()), np.uint16).reshape(256, 256).astype(np.float64)
    return (a / a.max() * 255).astype(np.uint8)


def mr_like(n: int = 12) -> Iterator[Item]:
    real = matplotlib_mr()
    if real is not None:
        for k, im in enumerate((real, real[:, ::-1], np.rot90(real))):
            yield f"mr-matplotlib-{k}.png", "mr_like", encode(Image.fromarray(np.ascontiguousarray(im)))
    for i in range(n):
        yield f"mr-{i:02d}.png", "mr_like", encode(Image.fromarray(mr_slice(i)).resize((512, 512)))


def ultrasound_like(n: int = 12) -> Iterator[Item]:
    """A speckled fan-shaped sector on black, with a little text, as an ultrasound screen looks."""
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        size = 600
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        r = np.hypot(yy - 40, xx - size / 2)
        ang = np.arctan2(xx - size / 2, yy - 40)
        fan = (r < 520) & (r > 60) & (np.abs(ang) < 0.6)
        speckle = rng.rayleigh(40, (size, size)) * np.exp(-r / 900)
        speckle[_ellipse(yy / size, xx / size, 0.5 + rng.uniform(-0.1, 0.1), 0.5, 0.12, 0.1)] *= 0.2  # a cyst
        img = np.where(fan, np.clip(speckle, 0, 255), 0).astype(np.uint8)
        im = Image.fromarray(img).filter(ImageFilter.GaussianBlur(1))
        ImageDraw.Draw(im).text((10, 10), f"US {i} 5.0MHz", fill=255, font=_font(18))
        yield f"ultrasound-{i:02d}.jpeg", "ultrasound_like", encode(im, "JPEG")


def _dicom(arr: np.ndarray, *, modality: str, sop_class: str, body_part: str | None = "CHEST",
           rescale: tuple[float, float] | None = None) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    signed = arr.dtype.kind == "i"
    bits = 8 if arr.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, int(signed)
    if rescale:
        ds.RescaleIntercept, ds.RescaleSlope = rescale
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


CT_STORAGE = uid.CTImageStorage
MR_STORAGE = uid.MRImageStorage
US_STORAGE = uid.UltrasoundImageStorage
MG_STORAGE = uid.DigitalMammographyXRayImageStorageForPresentation
DX_STORAGE = uid.DigitalXRayImageStorageForPresentation
SC_STORAGE = uid.SecondaryCaptureImageStorage


def other_modality_dicoms(film: np.ndarray | None = None) -> Iterator[Item]:
    """DICOM files of other modalities (CT, MR, US, MG) and other body parts; `film` (uint8, a chest
    film) is also wrapped under a CT/MG/knee header: the header alone must refuse those."""
    for i in range(4):
        hu = ct_slice(50 + i)
        yield f"ct-{i}.dcm", "other_modality_dicom", _dicom((hu + 1024).astype(np.uint16), modality="CT",
                                                             sop_class=CT_STORAGE, rescale=(-1024, 1))
        yield f"mr-{i}.dcm", "other_modality_dicom", _dicom(mr_slice(50 + i), modality="MR", sop_class=MR_STORAGE,
                                                             body_part="HEAD")
        us = np.asarray(Image.open(io.BytesIO(next(iter(ultrasound_like(1)))[2])).convert("L"))
        yield f"us-{i}.dcm", "other_modality_dicom", _dicom(us, modality="US", sop_class=US_STORAGE, body_part=None)
        mg = (np.clip(np.random.default_rng(i).normal(120, 30, (512, 400)), 0, 255)).astype(np.uint8)
        yield f"mg-{i}.dcm", "other_modality_dicom", _dicom(mg, modality="MG", sop_class=MG_STORAGE, body_part="BREAST")
    if film is not None:
        yield "film-as-ct.dcm", "other_modality_dicom", _dicom(film, modality="CT", sop_class=CT_STORAGE)
        yield "film-as-mg.dcm", "other_modality_dicom", _dicom(film, modality="MG", sop_class=MG_STORAGE,
                                                                body_part=None)
        yield "film-as-knee.dcm", "other_modality_dicom", _dicom(film, modality="DX", sop_class=DX_STORAGE,
                                                                  body_part="KNEE")
        yield "film-as-us-secondary.dcm", "other_modality_dicom", _dicom(film, modality="US", sop_class=SC_STORAGE,
                                                                          body_part=None)


# Header fields that name the modality, the body part or the kind of object.
_IDENTITY_TAGS = ("Modality", "SOPClassUID", "BodyPartExamined")


def pydicom_test_files(*, strip_identity: bool = False) -> Iterator[Item]:
    """Real DICOM files of other projects: every file with pixel data among pydicom's bundled test
    files (CT, MR, ultrasound, nuclear medicine, segmentations, RT dose, colour secondary captures
    and test patterns, in many transfer syntaxes; none is a chest radiograph). With `strip_identity`
    the Modality, SOP Class and BodyPartExamined are removed (from the file meta too), so only the
    pixels can refuse them. Files pydicom cannot read back are skipped."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    for path in sorted(folder.glob("*.dcm")):
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if "PixelData" not in ds:
                continue
            if strip_identity:
                for tag in _IDENTITY_TAGS:
                    if tag in ds:
                        delattr(ds, tag)
                meta = getattr(ds, "file_meta", None)
                if meta is not None and "MediaStorageSOPClassUID" in meta:
                    del meta.MediaStorageSOPClassUID
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=False)
                data = buf.getvalue()
        except Exception:  # noqa: BLE001  (a test file pydicom itself cannot rewrite: not ours to judge)
            continue
        yield (f"{path.stem}{'-no-identity' if strip_identity else ''}.dcm",
               "real_other_dicom_no_identity" if strip_identity else "real_other_dicom", data)


def blanks() -> Iterator[Item]:
    """Constant, nearly constant (faint noise, JPEG artefacts, a tiny label) and all-saturated images,
    as PNG, JPEG and DICOM, at several sizes."""
    rng = np.random.default_rng(7)
    sizes = ((224, 224), (512, 640), (1024, 800))
    for level in (0, 1, 60, 128, 200, 254, 255):
        for k, (h, w) in enumerate(sizes):
            a = np.full((h, w), level, np.uint8)
            yield f"constant-{level}-{w}x{h}.png", "blank", encode(Image.fromarray(a))
            if k == 1:
                yield f"constant-{level}-{w}x{h}.jpeg", "blank", encode(Image.fromarray(a), "JPEG", 75)
    for level in (30, 128, 230):
        noisy = np.clip(level + rng.normal(0, 2, (512, 512)), 0, 255).astype(np.uint8)
        yield f"faint-noise-{level}.jpeg", "blank", encode(Image.fromarray(noisy), "JPEG")
        labelled = Image.fromarray(np.full((600, 600), level, np.uint8))
        ImageDraw.Draw(labelled).text((20, 20), "L", fill=255 - level, font=_font(24))
        yield f"labelled-{level}.png", "blank", encode(labelled)
    for white in (True, False):
        a = np.full((800, 800), 255 if white else 0, np.uint8)
        a[rng.random(a.shape) < 0.02] = 0 if white else 255  # 2% the other extreme: still saturated
        yield f"saturated-{'white' if white else 'black'}.png", "blank", encode(Image.fromarray(a))
        yield f"saturated-{'white' if white else 'black'}-rgb.jpeg", "blank", encode(Image.fromarray(a).convert("RGB"),
                                                                                    "JPEG")
    for v in (0, 4095):
        yield f"dicom-constant-{v}.dcm", "blank", _dicom(np.full((256, 256), v, np.uint16), modality="DX",
                                                         sop_class=DX_STORAGE)


def corpus(film: np.ndarray | None = None) -> list[Item]:
    """Every item, in a fixed order (deterministic: the same bytes on every run, up to library versions)."""
    return [*natural_images(), *documents(), *ct_like(), *mr_like(), *ultrasound_like(),
            *other_modality_dicoms(film), *blanks()]

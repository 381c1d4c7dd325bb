"""The one definition of preprocessing, shared by training, evaluation, export and serving.

A `PreprocessConfig` is stored in every checkpoint, so whatever loads the model rebuilds exactly
the transforms it was trained with.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from torchvision import transforms as T

# torch and torchvision are imported inside the functions that need them: the ONNX serving path
# preprocesses with `eval_array` alone and must not pay torch's ~500 MB of resident memory.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    # Squash to a square (Resize((224, 224))): the training data was squashed too.
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    # When the training images were all image_size x image_size JPEG copies at one quality (the
    # Kermany 224 set: quality 75, PIL's default), an input of any other size is resized and sent
    # through the same JPEG encoding, so a full-resolution upload reaches the model looking like
    # what it learnt from: the model picks up the copies' JPEG texture. None: no such step.
    source_jpeg_quality: int | None = None
    # Framing normalisation: "squash" resizes the whole input, as the training copies were made; "trim" first removes
    # uniform borders (a dark viewer frame, padding to a square, collimator bands), so where the
    # film sits in its canvas cannot inform the model.
    framing: str = "squash"
    # Intensity normalisation: "none", or "equalize" (global histogram equalisation of the grey
    # levels; Gonzalez & Woods, Digital Image Processing, 3.3), which makes any monotone change of
    # the grey scale (gamma, contrast, window/level) nearly vanish before the model. Adaptive
    # equalisation (CLAHE) did no better on test_dev (docs/experiments.md) and is not invariant.
    intensity: str = "none"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(
            image_size=int(d.get("image_size", 224)),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
            interpolation=str(d.get("interpolation", "bilinear")),
            source_jpeg_quality=None if d.get("source_jpeg_quality") is None else int(d["source_jpeg_quality"]),
            # Older checkpoints have neither key: they were trained on squashed, unequalised images.
            framing=str(d.get("framing", "squash")),
            intensity=str(d.get("intensity", "none")),
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation. `design` is the original design's recipe (flip and rotation)."""

    hflip: float = 0.5
    rotation: float = 10.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    # Acquisition robustness: with these probabilities, blur (another resizer's softness) and a
    # JPEG re-encode at a random quality in jpeg_quality (another encoder's blocks), so the model
    # stops keying on the training copies' exact pixel texture.
    blur: float = 0.0
    jpeg: float = 0.0
    jpeg_quality: tuple[int, int] = (60, 95)
    # Framing and exposure made uninformative: the field of view scaled by a factor drawn from
    # `zoom` (< 1 crops in, > 1 zooms out onto a flat dark canvas) with its aspect ratio drawn
    # log-uniformly from `aspect`, and a grey-level gamma drawn log-uniformly from `gamma`.
    zoom: tuple[float, float] = (1.0, 1.0)
    aspect: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def design(cls) -> AugmentConfig:
        return cls()

    @classmethod
    def xray(cls) -> AugmentConfig:
        # Small geometric and exposure changes that real AP films show; no vertical flips.
        return cls(hflip=0.5, rotation=10.0, translate=0.06, scale=(0.9, 1.1), brightness=0.2, contrast=0.2)

    @classmethod
    def xray_robust(cls) -> AugmentConfig:
        return replace(cls.xray(), blur=0.3, jpeg=0.5)

    @classmethod
    def acquisition(cls) -> AugmentConfig:
        """Everything a film from another hospital may differ in besides the lungs: framing
        (a field of view 0.65-1.25 times the film's, aspect 0.8-1.25), rotation, exposure and contrast (gamma
        0.6-1.6), sharpness and JPEG encoding (quality 30-95)."""
        return cls(hflip=0.5, rotation=10.0, brightness=0.15, contrast=0.25, blur=0.3, jpeg=0.5,
                   jpeg_quality=(30, 95), zoom=(0.65, 1.25), aspect=(0.8, 1.25), gamma=(0.6, 1.6))

    @classmethod
    def acquisition_heavy(cls) -> AugmentConfig:
        """`acquisition` with the two presentations a model flips on most made common: rotation up
        to 15 degrees, and a JPEG re-encode on 70% of views at quality 20-95."""
        return replace(cls.acquisition(), rotation=15.0, jpeg=0.7, jpeg_quality=(20, 95))

    @classmethod
    def named(cls, name: str) -> AugmentConfig:
        presets = {"design": cls.design, "xray": cls.xray, "xray_robust": cls.xray_robust,
                   "acquisition": cls.acquisition, "acquisition_heavy": cls.acquisition_heavy}
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("scale", "jpeg_quality", "zoom", "aspect", "gamma"):
            d[key] = list(getattr(self, key))
        return d


# The IJG standard luminance quantization table (JPEG Annex K), in natural (row-major) order, as
# PIL reports `Image.quantization`. Encoders scale it by the quality setting.
_IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)


def _ijg_luma_table(quality: int) -> tuple[int, ...]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(min(max((v * scale + 50) // 100, 1), 255) for v in _IJG_LUMA)


_QUALITY_OF_TABLE = {_ijg_luma_table(q): q for q in range(1, 101)}


def _quality_of(im: Image.Image) -> int | None:
    tables = getattr(im, "quantization", None) if im.format == "JPEG" else None
    return _QUALITY_OF_TABLE.get(tuple(tables[0])) if tables else None


def jpeg_quality(path: str | Path) -> int | None:
    """The IJG quality a JPEG file was saved at (from its luminance table, header only), or None when
    it is not a JPEG or its table is not a scaled standard one."""
    try:
        with Image.open(path) as im:
            return _quality_of(im)
    except (OSError, ValueError, KeyError):
        return None


def detect_source_jpeg_quality(paths: Sequence[str | Path], image_size: int, *, sample: int = 200,
                               share: float = 0.95) -> int | None:
    """The JPEG quality of a data set of image_size x image_size JPEG copies: at least `share` of an
    evenly spaced sample of `paths` must be JPEGs of that size at one quality; otherwise None (e.g.
    PNGs, full-resolution films, or mixed sources, where no single encoding describes the data)."""
    if not paths:
        return None
    picked = list(paths)[:: max(1, len(paths) // sample)][:sample]
    found: Counter[int | None] = Counter()
    for p in picked:
        try:
            with Image.open(p) as im:  # header only: size and quantization tables
                found[_quality_of(im) if im.size == (image_size, image_size) else None] += 1
        except (OSError, ValueError, KeyError):
            found[None] += 1
    quality, count = found.most_common(1)[0]
    return quality if quality is not None and count >= share * len(picked) else None


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """`image` encoded as a JPEG (PIL, 4:2:0 chroma) at `quality` and decoded again, in its own mode."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert(image.mode)


# The resize filters by name. torchvision's Resize calls PIL's own `Image.resize` for PIL images, so
# resizing with PIL here is the same operation, and the serving path needs no torch.
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


# A row or column of the canvas whose grey levels vary less than this (standard deviation, 8-bit
# levels) carries no anatomy: a flat frame, padding or a closed collimator. JPEG noise on a flat
# border stays well under it; any row crossing the chest is far above it.
BORDER_STD = 6.0
# Never trim a side to less than this share of the canvas: a (nearly) flat image stays whole.
MIN_KEEP = 0.2
_TRIM_PROBE = 256  # samples per row or column in the border search


def content_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The bounding box (left, upper, right, lower), in `image` pixels, of what remains after removing
    uniform borders: outermost rows and columns whose grey-level standard deviation is below
    BORDER_STD. The whole image when trimming would keep less than MIN_KEEP of a side.

    Exact in the trimmed direction; along each row (column) every k-th pixel is sampled, k chosen
    so a side has at most _TRIM_PROBE samples, which keeps this ~ms on full-resolution films."""
    a = np.asarray(image.convert("L"))
    h, w = a.shape
    box = [0, 0, w, h]
    for axis, (lo, hi), n in ((0, (0, 2), w), (1, (1, 3), h)):  # axis 0: per column; 1: per row
        step = max(1, a.shape[axis] // _TRIM_PROBE)
        sample = a[::step, :] if axis == 0 else a[:, ::step]
        keep = np.flatnonzero(sample.std(axis=axis, dtype=np.float32) >= BORDER_STD)
        if keep.size and (keep[-1] + 1 - keep[0]) >= MIN_KEEP * n:
            box[lo], box[hi] = int(keep[0]), int(keep[-1]) + 1
    return box[0], box[1], box[2], box[3]


INTENSITY_MODES = ("none", "equalize")


def as_training_copy(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """`image` made the way the training copies were made from their originals: squashed to
    image_size x image_size with `cfg.interpolation` and, when the copies were JPEGs
    (`source_jpeg_quality`), encoded at that quality (PIL, 4:2:0) and decoded. Inputs already at the
    model's size, and configs without a source encoding, come back unchanged.

    Kermany's 224 px copies are PIL bilinear squashes saved at JPEG quality 75 (shared/data's
    README). A model trained on them reads the copies' block artifacts: the same film uploaded as
    its original, without them, drifts toward NORMAL. Making the copy first, before any framing or
    grey-level step, hands the model the pixels it was trained on.

    Raises ValueError for an unknown interpolation name."""
    size = (cfg.image_size, cfg.image_size)
    if cfg.source_jpeg_quality is None or image.size == size:
        return image
    return jpeg_roundtrip(_resize(image, size, cfg.interpolation).convert("RGB"), cfg.source_jpeg_quality)


def decode_size(cfg: PreprocessConfig) -> int:
    """The smallest side, in pixels, a JPEG decoder may reduce an upload to in the DCT domain (draft
    mode, see data/images.decode_image) before `harmonize`: the model's input size, or twice it for a
    model read through training copies (`source_jpeg_quality`). The copies were squashed from full
    resolution; squashing a draft reduced to about 224 px instead changes enough pixels that 3.0% of
    original films got another call than their copies, against 2.3% from a 448 px draft or a full
    decode (bundled model, 264 original/copy pairs, 2026-12-07)."""
    return cfg.image_size * (2 if cfg.source_jpeg_quality is not None else 1)


def _resize(image: Image.Image, size: tuple[int, int], interpolation: str) -> Image.Image:
    try:
        resample = _PIL_RESAMPLE[interpolation]
    except KeyError:
        raise ValueError(f"unsupported interpolation {interpolation!r}") from None
    return image.resize(size, resample)


def harmonize(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The first step of every transform: an RGB image at image_size x image_size.

    An input of another size is first made into a training copy (`as_training_copy`: squashed and,
    when the training copies were JPEGs, re-encoded the same way). Then, with `framing="trim"`,
    uniform borders are cut off (`content_box`) and the rest squashed back to the model's size; with
    `intensity="equalize"` the grey levels are histogram-equalised on the model-sized image, so the
    result does not depend on the upload's resolution. With the defaults (squash, no
    equalisation) inputs already at the model's size pass untouched. Grayscale ("L") inputs are
    resized before becoming RGB: the same pixels for a third of the work.

    Raises ValueError for an unknown interpolation, framing or intensity name."""
    if cfg.framing not in ("squash", "trim"):
        raise ValueError(f"unsupported framing {cfg.framing!r}")
    if cfg.intensity not in INTENSITY_MODES:
        raise ValueError(f"unsupported intensity normalisation {cfg.intensity!r}")
    image = as_training_copy(image, cfg)
    if cfg.intensity != "none" and image.mode != "L":
        image = image.convert("L")  # equalisation works on grey levels; a chest film has no colour
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if cfg.framing == "trim":
        box = content_box(image)
        if box != (0, 0, *image.size):
            image = image.crop(box)
    size = (cfg.image_size, cfg.image_size)
    if image.size != size:
        image = _resize(image, size, cfg.interpolation)
    if cfg.intensity == "equalize":
        image = ImageOps.equalize(image.convert("L"))

    return image.convert("RGB") if image.mode != "RGB" else image


class Harmonize:
    """`harmonize` as a transform step (a class, so DataLoader workers can pickle it)."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def __call__(self, image: Image.Image) -> Image.Image:
        return harmonize(image, self.cfg)


class RandomJPEG:
    """With probability p, re-encode a PIL image as JPEG at a quality drawn from [low, high]."""

    def __init__(self, p: float, quality: tuple[int, int]):
        self.p, self.quality = p, quality

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        if torch.rand(()) >= self.p:
            return image
        return jpeg_roundtrip(image, int(torch.randint(self.quality[0], self.quality[1] + 1, ())))


def _log_uniform(low: float, high: float) -> float:
    import torch

    return float(np.exp(np.log(low) + float(torch.rand(())) * (np.log(high) - np.log(low))))


class RandomFraming:
    """Show a random field of view of the film: `zoom` scales its width and height (< 1 crops in,
    > 1 leaves a flat dark margin), `aspect` stretches it, at a random position. Output size = the
    field's size: `Harmonize` resizes it afterwards, as it would an upload."""

    def __init__(self, zoom: tuple[float, float], aspect: tuple[float, float]):
        self.zoom, self.aspect = zoom, aspect

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        w, h = image.size
        s = float(self.zoom[0] + torch.rand(()) * (self.zoom[1] - self.zoom[0]))
        r = _log_uniform(*self.aspect) if self.aspect != (1.0, 1.0) else 1.0
        cw, ch = max(8, round(w * s * r ** 0.5)), max(8, round(h * s / r ** 0.5))
        left = int(torch.randint(min(0, w - cw), max(0, w - cw) + 1, ()))
        top = int(torch.randint(min(0, h - ch), max(0, h - ch) + 1, ()))
        if 0 <= left and 0 <= top and left + cw <= w and top + ch <= h:
            return image.crop((left, top, left + cw, top + ch))
        fill = int(torch.randint(0, 41, ()))  # a dark canvas, not always pure black
        canvas = Image.new(image.mode, (cw, ch), fill if image.mode == "L" else (fill,) * 3)
        canvas.paste(image, (-left, -top))
        return canvas


class RandomGamma:
    """Grey levels x -> 255 (x / 255) ** g with g drawn log-uniformly from `gamma`."""

    def __init__(self, gamma: tuple[float, float]):
        self.gamma = gamma

    def __call__(self, image: Image.Image) -> Image.Image:
        g = _log_uniform(*self.gamma)
        lut = [round(255 * (v / 255) ** g) for v in range(256)]
        return image.point(lut * len(image.getbands()))


def eval_transform(cfg: PreprocessConfig) -> T.Compose:
    """PIL RGB image -> normalized float tensor (3, S, S). Used for validation and training-time eval."""
    from torchvision import transforms as T

    return T.Compose(
        [
            Harmonize(cfg),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


def train_transform(cfg: PreprocessConfig, aug: AugmentConfig) -> T.Compose:
    """PIL image (any size) -> augmented, normalized float tensor (3, S, S). Every augmentation acts
    on the decoded input, before `Harmonize`, as a different acquisition or encoding of the same
    film would; preprocessing then treats it exactly as it treats an upload."""
    from torchvision import transforms as T

    steps: list[Any] = []
    if aug.zoom != (1.0, 1.0) or aug.aspect != (1.0, 1.0):
        steps.append(RandomFraming(aug.zoom, aug.aspect))
    if aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.translate > 0 or aug.scale != (1.0, 1.0):
        steps.append(T.RandomAffine(degrees=aug.rotation, translate=(aug.translate, aug.translate), scale=aug.scale))
    elif aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation))
    if aug.gamma != (1.0, 1.0):
        steps.append(RandomGamma(aug.gamma))
    if aug.brightness > 0 or aug.contrast > 0:
        steps.append(T.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
    if aug.blur > 0:
        steps.append(T.RandomApply([T.GaussianBlur(3, sigma=(0.2, 0.8))], p=aug.blur))
    if aug.jpeg > 0:
        steps.append(RandomJPEG(aug.jpeg, aug.jpeg_quality))
    steps += [Harmonize(cfg), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(steps)


def eval_array(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """`eval_transform` in numpy: PIL RGB image -> float32 array (3, S, S), equal to eval_transform's
    tensor up to float rounding (tested). The serving and batch-prediction path; no torch needed."""
    return normalize_pixels(np.asarray(harmonize(image, cfg)), cfg)


def normalize_pixels(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """harmonize's uint8 pixels, (S, S, 3) or a batch (N, S, S, 3) -> the model's float32 input,
    (3, S, S) or (N, 3, S, S): (x / 255 - mean) / std per channel."""
    # Transpose the 8-bit pixels, then one multiply and one subtract in place: the same values as
    # (x / 255 - mean) / std up to float rounding, ~1 ms faster per image than the textbook form.
    arr = np.ascontiguousarray(np.moveaxis(pixels, -1, -3)).astype(np.float32)
    scale, offset = _normalize_constants(cfg.mean, cfg.std)
    arr *= scale
    arr -= offset
    return arr


@lru_cache(maxsize=8)
def _normalize_constants(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    m, sd = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return ((1.0 / (255.0 * sd)).astype(np.float32)[:, None, None], (m / sd).astype(np.float32)[:, None, None])

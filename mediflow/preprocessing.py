"""The one definition of preprocessing, shared by training, evaluation, export and serving.

A `PreprocessConfig` is stored in every checkpoint, so whatever loads the model rebuilds exactly
the transforms it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch
    from torchvision import transforms as T

# torch and torchvision are imported inside the functions that need them: the ONNX serving path
# preprocesses with `eval_array` alone and must not pay torch's ~500 MB of resident memory.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    # Squash to a square as the design did (Resize((224, 224))): the training data was squashed too.
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        return cls(
            image_size=int(d.get("image_size", 224)),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
            interpolation=str(d.get("interpolation", "bilinear")),
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation. `design` is the design document's recipe."""

    hflip: float = 0.5
    rotation: float = 10.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def design(cls) -> "AugmentConfig":
        return cls()

    @classmethod
    def xray(cls) -> "AugmentConfig":
        # Small geometric and exposure changes that real AP films show; no vertical flips.
        return cls(hflip=0.5, rotation=10.0, translate=0.06, scale=(0.9, 1.1), brightness=0.2, contrast=0.2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"] = list(self.scale)
        return d


def _interp(name: str) -> "T.InterpolationMode":
    from torchvision import transforms as T

    return T.InterpolationMode(name)


def eval_transform(cfg: PreprocessConfig) -> "T.Compose":
    """PIL RGB image -> normalized float tensor (3, S, S). Used for validation and training-time eval."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize((cfg.image_size, cfg.image_size), interpolation=_interp(cfg.interpolation), antialias=True),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


def train_transform(cfg: PreprocessConfig, aug: AugmentConfig) -> "T.Compose":
    from torchvision import transforms as T

    steps: list[Any] = [
        T.Resize((cfg.image_size, cfg.image_size), interpolation=_interp(cfg.interpolation), antialias=True)
    ]
    if aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.translate > 0 or aug.scale != (1.0, 1.0):
        steps.append(T.RandomAffine(degrees=aug.rotation, translate=(aug.translate, aug.translate), scale=aug.scale))
    elif aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation))
    if aug.brightness > 0 or aug.contrast > 0:
        steps.append(T.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
    steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(steps)


# torchvision resizes PIL images with PIL's own `Image.resize` and these filters, so calling PIL
# directly gives the same pixels without torch.
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def eval_array(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """`eval_transform` in numpy: PIL RGB image -> float32 array (3, S, S), equal to eval_transform's
    tensor up to float rounding (tested). The serving and batch-prediction path; no torch needed."""
    try:
        resample = _PIL_RESAMPLE[cfg.interpolation]
    except KeyError:
        raise ValueError(f"unsupported interpolation {cfg.interpolation!r}") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = (cfg.image_size, cfg.image_size)
    small = image if image.size == size else image.resize(size, resample)
    arr = np.asarray(small, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> "torch.Tensor":
    """One image -> a (1, 3, S, S) batch."""
    return eval_transform(cfg)(image).unsqueeze(0)


def denormalize_to_uint8(batch: "torch.Tensor", cfg: PreprocessConfig) -> np.ndarray:
    """(3, S, S) normalized tensor -> (S, S, 3) uint8, for overlays and debugging."""
    import torch

    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    img = (batch.detach().cpu() * std + mean).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

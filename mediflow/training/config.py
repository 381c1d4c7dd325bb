"""Training configuration and the named recipes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "model.pth"
    arch: str = "efficientnet_lite0"
    weights: str | None = None  # None -> the architecture's default ('imagenet')
    recipe: str = "frozen"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None  # None -> inverse class frequency
    augment: str = "design"  # a preset of preprocessing.AugmentConfig.named
    feature_views: int = 2
    unfreeze: int | None = None  # finetune: last N backbone stages; None -> all
    val_fraction: float = 0.2
    val_dir: str | None = None
    extra_data: list[str] = field(default_factory=list)
    min_sensitivity: float = 0.97
    # Which epoch to keep: "best" validation AUC (ties: balanced accuracy), or the "last", for
    # recipes whose schedule decays to zero, where picking among epochs whose AUCs differ by less
    # than the AUC's own standard error (~0.001 here) chooses by noise.
    select: str = "best"
    calibrate: bool = True
    image_size: int = 224
    # "auto": detect whether the training images are image_size JPEG copies at one quality (see
    # PreprocessConfig.source_jpeg_quality); "none"; or a quality 1-100.
    source_jpeg_quality: str = "auto"
    # Preprocessing (see PreprocessConfig): "squash" | "trim"; "none" | "equalize".
    framing: str = "squash"
    intensity: str = "none"
    # The probe recipe's inverse L2 strength (scikit-learn's C on standardised features).
    probe_c: float = 0.01
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True
    workers: int = 1
    skip_bad: bool = False
    resume: str | None = None
    progress: bool = True
    max_train_samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Named presets. `frozen` is the design document's recipe; `finetune` is the accuracy recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "frozen": dict(epochs=5, lr=1e-3, batch_size=32, augment="design", weight_decay=0.0, label_smoothing=0.0),
    # The last `unfreeze` stages fine-tuned on cached activations of the frozen ones: most of
    # fine-tuning's gain at a fraction of its CPU cost.
    "partial": dict(
        epochs=12, lr=1e-3, backbone_lr_scale=0.3, batch_size=32, augment="xray", weight_decay=1e-4,
        warmup_epochs=0.5, label_smoothing=0.1, bf16=True, unfreeze=3, feature_views=4, select="last",
    ),
    # A frozen backbone and an L2 logistic-regression head fitted on many augmented views, with the
    # framing and grey levels normalised first: the recipe that generalises to films from elsewhere
    # (docs/experiments.md). `epochs` is 1: the head is fitted once, on every view together.
    "probe": dict(epochs=1, augment="acquisition", feature_views=8, framing="trim", intensity="equalize",
                  source_jpeg_quality="none", probe_c=0.01, select="last"),
    "finetune": dict(
        epochs=8, lr=1e-3, backbone_lr_scale=0.2, batch_size=32, augment="xray", weight_decay=1e-4,
        warmup_epochs=0.5, label_smoothing=0.1, bf16=True, select="last",
    ),
}


def apply_recipe(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """Fill the recipe's defaults into every field the user did not set on the command line."""
    for key, value in RECIPES[cfg.recipe].items():
        if key not in explicit:
            setattr(cfg, key, value)
    return cfg

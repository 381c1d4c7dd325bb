"""Training configuration, the recipes' defaults, and named configuration files.

A configuration resolves in layers: TrainConfig's defaults, then the recipe's (RECIPES), then a
configuration file's keys (`--config`: a TOML file of TrainConfig fields, or the name of one
packaged in mediflow/training/recipes/, e.g. `bundled`), then the command line's options.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mediflow.errors import MediFlowError

RECIPE_DIR = Path(__file__).parent / "recipes"


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


# Named presets. `frozen` is the original design's recipe (frozen backbone, new
# head); `finetune` is the accuracy recipe.
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


def packaged_configs() -> list[str]:
    """Names of the configuration files shipped with the package (`bundled`, ...)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def config_path(name: str | Path) -> Path:
    """The file `--config name` means: an existing file as given, else the packaged configuration
    named `name`, `name.toml` or `recipes/name.toml` (so the repository's spelling works installed)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = RECIPE_DIR / f"{path.name.removesuffix('.toml')}.toml"
    if path.parent in (Path("."), Path("recipes")) and packaged.is_file():
        return packaged
    raise MediFlowError(f"--config {name}: no such file, nor a packaged configuration "
                        f"(packaged: {', '.join(packaged_configs())})")


def _check_value(key: str, value: Any, annotation: str) -> Any:
    """`value` as field `key` (annotated `annotation`) holds it, or a one-line error."""
    kinds = [a.strip() for a in annotation.split("|") if a.strip() != "None"]
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind == "str" and isinstance(value, str):
            return value
        if kind.startswith("list[") and isinstance(value, list):
            inner = kind[5:-1]
            return [_check_value(key, v, inner) for v in value]
    if key == "source_jpeg_quality" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a quality written as a number
    raise MediFlowError(f"configuration key {key!r} should be {' or '.join(kinds)}, got {value!r}")


def read_config_file(name: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a configuration file sets (see config_path for `name`), checked:
    an unknown key, a wrong type or an unknown recipe is a one-line error."""
    path = config_path(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MediFlowError(f"--config {path}: not a readable TOML file ({exc})") from None
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    values = {}
    for key, value in raw.items():
        if key not in types:
            raise MediFlowError(f"--config {path}: unknown key {key!r} (keys are TrainConfig fields, e.g. "
                                f"epochs, recipe, augment)")
        values[key] = _check_value(key, value, types[key])
    if values.get("recipe", "frozen") not in RECIPES:
        raise MediFlowError(f"--config {path}: unknown recipe {values['recipe']!r} (one of {', '.join(RECIPES)})")
    return values


def resolve_config(*layers: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from `layers` of field values, later ones winning (a file's, then the command
    line's), with the recipe's values filled in wherever no layer set a field."""
    cfg = TrainConfig()
    explicit: set[str] = set()
    for layer in layers:
        for key, value in layer.items():
            setattr(cfg, key, value)
            explicit.add(key)
    return apply_recipe(cfg, explicit)

"""`mediflow train --data ROOT --out model.pth`"""

from __future__ import annotations

import argparse
import logging

from mediflow.commands import _preprocessing_options as preprocessing_options
from mediflow.errors import MediFlowError
from mediflow.training.config import RECIPES, TrainConfig, config_path, read_config_file, resolve_config

log = logging.getLogger("mediflow.train")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("class weights must be positive")
    return values


def _source_quality(text: str) -> str:
    if text in ("auto", "none") or (text.isdigit() and 1 <= int(text) <= 100):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, none or a JPEG quality 1-100, got {text!r}")


class _ArchitectureNames:
    """argparse `choices` that reads the model registry (which imports torch) only when an --arch is
    checked: building the parser must not load torch, or `mediflow serve` on ONNX would carry its
    ~500 MB. (With a metavar, argparse does not list the choices while building the parser.)"""

    def _names(self) -> list[str]:
        from mediflow.models.registry import ARCHITECTURES

        return sorted(ARCHITECTURES)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` for options with a fixed default; options whose default comes from the
    recipe say so in their help (recipe_defaults) instead of a misleading `None`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if (action.default in (None, False, []) or action.default is argparse.SUPPRESS
                or "default" in (action.help or "")):
            return action.help or ""
        return super()._get_help_string(action)


def recipe_defaults(field: str) -> str:
    """'default: frozen 5, partial 12, ...': the value each recipe gives `field` (the base default
    where a recipe leaves it), for --help."""
    base = getattr(TrainConfig(), field)
    values = {name: RECIPES[name].get(field, base) for name in ("frozen", "partial", "probe", "finetune")}
    if len(set(map(str, values.values()))) == 1:
        return f"default: {base}"
    return "default by recipe: " + ", ".join(f"{name} {value}" for name, value in values.items())


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model on a class-folder dataset", formatter_class=_HelpFormatter,
                       description="Train on ROOT/train (or ROOT itself) with a patient-grouped validation split. "
                                   "Options given override the --config file's values; what neither sets takes "
                                   "the --recipe's values; the log names the recipe and prints the full "
                                   "configuration at the start. `--config bundled` is the bundled model's recipe. "
                                   "After every epoch the state to --resume from is written next to --out "
                                   "(model.pth -> model.resume.pth).")
    p.add_argument("--config", metavar="FILE|NAME",
                   help="a TOML file of training settings (TrainConfig fields), or the name of one shipped with "
                        "MediFlow: bundled (the bundled model's recipe; also recipes/bundled.toml)")
    p.add_argument("--data", help="dataset root with train/ (Kaggle layout) or class folders (required unless "
                                  "the --config file gives it)")
    p.add_argument("--out", help="checkpoint to write (default: model.pth)")
    p.add_argument("--arch", default="efficientnet_lite0", choices=_ArchitectureNames(), metavar="ARCH",
                   help="architecture from the model registry (also efficientnet_b0)")
    p.add_argument("--weights", default=None, help="'imagenet', a weights file, or 'none' (default: imagenet)")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="(default: frozen) partial (the bundled model's; `--config bundled` adds its other "
                        "settings): the last --unfreeze stages fine-tuned on cached activations of the frozen ones; "
                        "frozen: the "
                        "design's head-only recipe; probe: frozen backbone, L2 logistic-regression head on many "
                        "augmented views, framing and intensity normalised; finetune: the whole network")
    p.add_argument("--finetune", action="store_true", help="same as --recipe finetune")
    p.add_argument("--unfreeze", type=int, default=None,
                   help="partial/finetune: train only the last N backbone stages (default: partial 3, finetune "
                        "all stages)")
    p.add_argument("--epochs", type=int, help=recipe_defaults("epochs"))
    p.add_argument("--batch-size", type=int, help=recipe_defaults("batch_size"))
    p.add_argument("--lr", type=float, help="learning rate of the head (" + recipe_defaults("lr") + ")")
    p.add_argument("--backbone-lr-scale", type=float,
                   help="backbone learning rate / --lr (" + recipe_defaults("backbone_lr_scale") + ")")
    p.add_argument("--weight-decay", type=float, help=recipe_defaults("weight_decay"))
    p.add_argument("--warmup-epochs", type=float, help=recipe_defaults("warmup_epochs"))
    p.add_argument("--label-smoothing", type=float, help=recipe_defaults("label_smoothing"))
    preprocessing_options.add_arguments(p)
    for action in p._actions:  # shared options whose defaults this command's recipes set
        if action.dest in ("augment", "framing", "intensity"):
            action.help = f"{action.help or ''} ({recipe_defaults(action.dest)})".strip()
    p.add_argument("--probe-c", type=float,
                   help="probe recipe: inverse L2 strength C, smaller = stronger (" + recipe_defaults("probe_c") + ")")
    p.add_argument("--class-weights", type=_floats, help="e.g. 3,1 (in sorted class order); default: inverse frequency")
    p.add_argument("--feature-views", type=int,
                   help="cached recipes: augmented views cached per image (" + recipe_defaults("feature_views") + ")")
    p.add_argument("--val-fraction", type=float, help="grouped validation share of train (default: 0.2)")
    p.add_argument("--val-dir", help="use this class-folder dataset for validation instead of a split")
    p.add_argument("--extra-data", action="append", metavar="DIR",
                   help="more class folders added to training only (e.g. a `mediflow feedback export`)")
    p.add_argument("--min-sensitivity", type=float,
                   help="threshold rule: PNEUMONIA sensitivity floor on validation (default: 0.97)")
    p.add_argument("--select", choices=["best", "last"],
                   help="epoch kept: best validation AUC (frozen's default) or last (partial/finetune: the "
                        "cosine schedule ends converged, and AUCs of late epochs differ by noise); "
                        + recipe_defaults("select"))
    p.add_argument("--no-calibrate", action="store_true", help="skip temperature scaling")
    p.add_argument("--image-size", type=int, help="input side in pixels (default: 224)")
    p.add_argument("--source-jpeg-quality", type=_source_quality, metavar="auto|none|Q",
                   help="inputs of another size are resized and JPEG-encoded at Q like the training copies; "
                        "auto: detect it from the training images (" + recipe_defaults("source_jpeg_quality") + ")")
    p.add_argument("--seed", type=int, help="random seed of the split, augmentation and training (default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (cuda when available)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast where the hardware has it (" + recipe_defaults("bf16") + ")")
    p.add_argument("--workers", type=int, help="data-loading processes (default: 1)")
    p.add_argument("--skip-bad", action="store_true", help="skip corrupt/non-image files instead of stopping")
    p.add_argument("--resume", help="continue from this training state (OUT.resume.pth, written after every epoch: "
                                    "model, optimizer, scheduler, random state) or, weights only, a model checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--max-train-samples", type=int, help=argparse.SUPPRESS)
    return p


FIELDS = [
    "data", "out", "arch", "weights", "recipe", "unfreeze", "epochs", "batch_size", "lr", "backbone_lr_scale",
    "weight_decay", "warmup_epochs", "label_smoothing", "augment", "class_weights", "feature_views", "val_fraction",
    "val_dir", "extra_data", "min_sensitivity", "select", "image_size", "source_jpeg_quality", "framing",
    "intensity", "probe_c", "seed", "device", "bf16", "workers", "resume", "max_train_samples",
]


def command_line_values(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig fields this command line sets (options left out set nothing)."""
    values: dict[str, object] = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    if args.finetune:
        values["recipe"] = "finetune"
    for flag, key, value in (("skip_bad", "skip_bad", True), ("no_calibrate", "calibrate", False),
                             ("no_progress", "progress", False)):
        if getattr(args, flag):
            values[key] = value
    return values


def run(args: argparse.Namespace) -> int:
    from mediflow.training.train import train

    cfg = resolve_config(read_config_file(args.config) if args.config else {}, command_line_values(args))
    if args.config:
        log.info("settings from %s, then the command line's options", config_path(args.config))
    if not cfg.data:
        raise MediFlowError("--data is required (or `data` in the --config file)")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise MediFlowError("--epochs and --batch-size must be at least 1")
    if not 0 < cfg.val_fraction < 1:
        raise MediFlowError("--val-fraction must be between 0 and 1")
    train(cfg)
    return 0

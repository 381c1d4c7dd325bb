"""`mediflow train --data ROOT --out model.pth`"""

from __future__ import annotations

import argparse

from mediflow.commands import _preprocessing_options as preprocessing_options
from mediflow.errors import MediFlowError
from mediflow.training.config import RECIPES, TrainConfig, apply_recipe


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


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model on a class-folder dataset",
                       description="Train on ROOT/train (or ROOT itself) with a patient-grouped validation split.")
    p.add_argument("--data", required=True, help="dataset root with train/ (Kaggle layout) or class folders")
    p.add_argument("--out", default="model.pth", help="checkpoint to write (default: model.pth)")
    p.add_argument("--arch", default="efficientnet_lite0", choices=_ArchitectureNames(), metavar="ARCH",
                   help="architecture from the model registry (default efficientnet_lite0; also efficientnet_b0)")
    p.add_argument("--weights", default=None, help="'imagenet' (default), a weights file, or 'none'")
    p.add_argument("--recipe", default="frozen", choices=sorted(RECIPES),
                   help="probe (the bundled model's): frozen backbone, L2 logistic-regression head on many augmented "
                        "views, framing and intensity normalised; frozen: the design's head-only recipe; partial / "
                        "finetune: fine-tuning (fits the training films' framing, generalises worse)")
    p.add_argument("--finetune", action="store_true", help="same as --recipe finetune")
    p.add_argument("--unfreeze", type=int, default=None, help="finetune only the last N backbone stages")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--backbone-lr-scale", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    preprocessing_options.add_arguments(p)
    p.add_argument("--probe-c", type=float, help="probe recipe: inverse L2 strength C (smaller = stronger)")
    p.add_argument("--class-weights", type=_floats, help="e.g. 3,1 (in sorted class order); default: inverse frequency")
    p.add_argument("--feature-views", type=int, help="frozen recipe: augmented views cached per image (default 2)")
    p.add_argument("--val-fraction", type=float, help="grouped validation share of train (default 0.2)")
    p.add_argument("--val-dir", help="use this class-folder dataset for validation instead of a split")
    p.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                   help="more class folders added to training only (e.g. a `mediflow feedback export`)")
    p.add_argument("--min-sensitivity", type=float, help="threshold rule: PNEUMONIA sensitivity floor (default 0.97)")
    p.add_argument("--select", choices=["best", "last"],
                   help="epoch kept: best validation AUC (frozen's default) or last (partial/finetune: the "
                        "cosine schedule ends converged, and AUCs of late epochs differ by noise)")
    p.add_argument("--no-calibrate", action="store_true", help="skip temperature scaling")
    p.add_argument("--image-size", type=int)
    p.add_argument("--source-jpeg-quality", type=_source_quality, metavar="auto|none|Q",
                   help="inputs of another size are resized and JPEG-encoded at Q like the training copies; "
                        "auto (default): detect it from the training images")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")
    p.add_argument("--workers", type=int, help="data-loading processes (default 1)")
    p.add_argument("--skip-bad", action="store_true", help="skip corrupt/non-image files instead of stopping")
    p.add_argument("--resume", help="continue from this checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-train-samples", type=int, help=argparse.SUPPRESS)
    return p


FIELDS = [
    "arch", "weights", "recipe", "unfreeze", "epochs", "batch_size", "lr", "backbone_lr_scale", "weight_decay",
    "warmup_epochs", "label_smoothing", "augment", "class_weights", "feature_views", "val_fraction", "val_dir",
    "min_sensitivity", "select", "image_size", "source_jpeg_quality", "framing", "intensity", "probe_c", "seed", "device", "bf16", "workers", "resume", "max_train_samples",
]


def run(args: argparse.Namespace) -> int:
    from mediflow.training.train import train

    if args.finetune:
        args.recipe = "finetune"
    cfg = TrainConfig(data=args.data, out=args.out, extra_data=args.extra_data, skip_bad=args.skip_bad,
                      calibrate=not args.no_calibrate, progress=not args.no_progress)
    explicit = set()
    for f in FIELDS:
        v = getattr(args, f)
        if v is not None:
            setattr(cfg, f, v)
            explicit.add(f)
    apply_recipe(cfg, explicit)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise MediFlowError("--epochs and --batch-size must be at least 1")
    if not 0 < cfg.val_fraction < 1:
        raise MediFlowError("--val-fraction must be between 0 and 1")
    train(cfg)
    return 0

"""Training options shared by `mediflow train` and `mediflow federated`: augmentation, framing and
grey-level normalisation. The names are mediflow.preprocessing's (AugmentConfig.named, harmonize),
spelled out so that building the command line does not import numpy and PIL."""

from __future__ import annotations

import argparse

AUGMENT_PRESETS = ("design", "xray", "xray_robust", "acquisition", "acquisition_heavy")
FRAMING_MODES = ("squash", "trim")
INTENSITY_MODES = ("none", "equalize")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--augment, --framing, --intensity; each None when not given (the recipe's default applies)."""
    p.add_argument("--augment", choices=list(AUGMENT_PRESETS),
                   help="xray_robust = xray + random blur and JPEG re-encoding; acquisition = random framing, "
                        "rotation, gamma, contrast, blur and JPEG q30-95; acquisition_heavy = acquisition with "
                        "rotation to 15 degrees and JPEG q20-95 on 70%% of views (see preprocessing.AugmentConfig)")
    p.add_argument("--framing", choices=list(FRAMING_MODES),
                   help="trim: cut uniform borders off every input before resizing (training, evaluation, serving)")
    p.add_argument("--intensity", choices=list(INTENSITY_MODES),
                   help="equalize: histogram-equalise every input (training, evaluation, serving)")

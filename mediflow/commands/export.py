"""`mediflow export --model model.pth --onnx model.onnx [--int8 --data DIR]`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (optionally int8) for fast CPU serving",
                       description="Write a self-describing ONNX model (outputs logits, the last feature map and "
                                   "class activation maps; the checkpoint's metadata inside), checked against "
                                   "PyTorch. `mediflow serve` picks up MODEL.onnx / MODEL.int8.onnx next to MODEL.pth.")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--onnx", help="ONNX file to write (default: the checkpoint's path with .onnx)")
    p.add_argument("--int8", action="store_true",
                   help="also write an int8 model (ONNX.int8.onnx); it is served by default only if its calls agree "
                        "with fp32's on >= 99.5%% of validation + test_dev films and its AUC is within 0.002")
    p.add_argument("--data", help="--int8: the training dataset root (calibration images, the validation split "
                                  "and test_dev/ when present); default: the path stored in the checkpoint")
    p.add_argument("--calibration-images", type=int, default=200, help="--int8: training images to calibrate on")
    p.add_argument("--distill-steps", type=int, default=DEFAULT_DISTILL_STEPS,
                   help="--int8: batches of quantization-aware distillation on the training films before the final "
                        "quantization (about 5 s each on 2 CPU cores for EfficientNet-Lite0); 0: post-training "
                        "quantization only (default: %(default)s)")
    return p


# Three passes over the bundled model's 4,173 training films in batches of 32 (docs/performance.md).
DEFAULT_DISTILL_STEPS = 390
# For the up-front estimate: EfficientNet-Lite0, batches of 32, 2 CPU cores (docs/performance.md).
SECONDS_PER_DISTILL_STEP = 5.0


def int8_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".int8.onnx")


def run(args: argparse.Namespace) -> int:
    from mediflow.checkpoint import load_checkpoint
    from mediflow.errors import MediFlowError
    from mediflow.inference.bundled import default_model_path
    from mediflow.inference.onnx_export import export_checkpoint

    source = default_model_path(args.model)
    out = Path(args.onnx) if args.onnx else source.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise MediFlowError(f"--onnx {out}: the file name must end in .onnx")
    ckpt = load_checkpoint(source)
    data = args.data or (ckpt.get("train_config") or {}).get("data")
    if args.distill_steps < 0:
        raise MediFlowError(f"--distill-steps {args.distill_steps}: must be 0 or more")
    if args.int8 and not (data and Path(data).is_dir()):
        raise MediFlowError("--int8 needs the training dataset to calibrate and to measure the validation AUC "
                            f"change; pass --data DIR ({data or 'no path stored in the checkpoint'} not found)")
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    say(f"exporting {source.name} to ONNX ({out}) and checking it against PyTorch")
    diffs = export_checkpoint(ckpt, source, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); |onnx - torch| on random inputs (logits absolute, "
          "the others relative to their range): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    if args.int8:
        from mediflow.inference.quantize import int8_export

        q = int8_path(out)
        minutes = args.distill_steps * SECONDS_PER_DISTILL_STEP / 60
        say(f"writing {q}: quantization"
            + (f", then {args.distill_steps} batches of distillation (about "
               f"{SECONDS_PER_DISTILL_STEP:.0f} s each on 2 CPU cores: ~{minutes:.0f} min)"
               if args.distill_steps else "") +
            ", then measuring it against fp32. Interrupting leaves no partial int8 file; run the same command again.")
        refine = None
        if args.distill_steps:
            from mediflow.checkpoint import checkpoint_preprocessing
            from mediflow.decision import DecisionRule
            from mediflow.training.quantization_aware import int8_refiner

            refine = int8_refiner(checkpoint_preprocessing(ckpt), DecisionRule.from_checkpoint(ckpt).temperature,
                                  steps=args.distill_steps, progress=True)
        report = int8_export(ckpt, out, q, data, n_calibration=args.calibration_images, progress=True,
                             refine=refine, say=say)
        d = report.get("distillation")
        distilled = (f" (weights distilled through int8 for {d['steps']} batches: calibrated-logit MSE "
                     f"{d['logit_mse']['first']:.3f} -> {d['logit_mse']['last']:.3f})") if d else ""
        print(f"wrote {q} ({q.stat().st_size / 1e6:.1f} MB); int8 against fp32, both with the checkpoint's "
              f"calibration and operating point{distilled}; served int8 re-runs in fp32 the films within "
              f"{report['fallback_band']:.2f} calibrated logits of the operating point (the 99th percentile of "
              "int8's error on validation):")
        for name in ("validation", "test_dev"):
            if name not in report:
                continue
            r = report[name]
            note = "" if name != "validation" or r["same_files_as_training"] else ", NOT the checkpoint's own split"
            print(f"  {name} ({r['n']} films{note}): {r['fp32_fraction']:.1%} re-run in fp32; decisions agree on "
                  f"{r['decision_agreement']:.1%} (int8 alone {r['int8_alone_agreement']:.1%}); AUC "
                  f"{r['fp32']['auc']:.4f} -> {r['int8']['auc']:.4f}; sensitivity {r['fp32']['sensitivity']:.4f} -> "
                  f"{r['int8']['sensitivity']:.4f}; specificity {r['fp32']['specificity']:.4f} -> "
                  f"{r['int8']['specificity']:.4f}")
        print(f"  int8 {'IS' if report['accepted'] else 'is NOT'} served by default (rule: decisions agree on >= "
              f"{report['min_agreement']:.1%} of all these films ({report['decision_agreement']:.2%}) and "
              f"{report['auc_judged_on']} AUC within {report['max_auc_change']} ({report['auc_change']:+.4f}))")
    return 0

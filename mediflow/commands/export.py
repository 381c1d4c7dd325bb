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
                   help="also write an int8 model (ONNX.int8.onnx) and report its validation AUC change; it is "
                        "served by default only if AUC drops by less than 0.002")
    p.add_argument("--data", help="--int8: the training dataset (calibration images and the validation split); "
                                  "default: the path stored in the checkpoint")
    p.add_argument("--calibration-images", type=int, default=200, help="--int8: training images to calibrate on")
    return p


def _num(v: float | None) -> str:
    return "none" if v is None else f"{v:.4f}"


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
    if args.int8 and not (data and Path(data).is_dir()):
        raise MediFlowError("--int8 needs the training dataset to calibrate and to measure the validation AUC "
                            f"change; pass --data DIR ({data or 'no path stored in the checkpoint'} not found)")
    diffs = export_checkpoint(ckpt, source, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); |onnx - torch| on random inputs (logits absolute, "
          "the others relative to their range): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    if args.int8:
        from mediflow.inference.quantize import int8_export

        q = int8_path(out)
        report = int8_export(ckpt, out, q, data, n_calibration=args.calibration_images, progress=sys.stderr.isatty())
        v = report["validation"]
        print(f"wrote {q} ({q.stat().st_size / 1e6:.1f} MB); validation ({v['n']} images, patient-grouped split"
              f"{'' if v['same_files_as_training'] else ', NOT the files the checkpoint was validated on'}):")
        for name in ("fp32", "int8"):
            m = report[name]
            print(f"  {name}: AUC {m['auc']:.4f}  balanced acc {m['balanced_accuracy']:.4f}  "
                  f"sensitivity {m['sensitivity']:.4f}  specificity {m['specificity']:.4f}  "
                  f"(temperature {m['temperature']:.3f}, threshold {_num(m['threshold'])})")
        print(f"  AUC change {report['auc_change']:+.4f}; decisions agree on {report['decision_agreement']:.1%} "
              "(int8 temperature and threshold refitted on validation by the training rule)")
        print(f"  int8 {'IS' if report['accepted'] else 'is NOT'} served by default "
              "(rule: AUC drop < 0.002)")
    return 0

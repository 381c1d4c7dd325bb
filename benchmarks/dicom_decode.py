"""Decode time of one full-resolution chest film: JPEG vs DICOM (uncompressed, RLE, JPEG 2000).

Run: PYTHONPATH=. python benchmarks/dicom_decode.py [--size 2048] [--repeat 5]
Prints a table; ratios are against the JPEG decode of the same film in the same run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from mediflow.data.images import decode_image
from mediflow.evaluation.invariance import dicom_file_bytes, dx_dataset


def film(size: int) -> np.ndarray:
    """A smooth 12-bit film-like image (compresses like a real radiograph, unlike noise)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 600 + 400 * np.sin(6 * xx) * np.cos(4 * yy)
    for cx in (0.3, 0.7):
        img += 2200 * (((xx - cx) / 0.18) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1)
    img += np.random.default_rng(0).normal(0, 20, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def timed(data: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        decode_image(data)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    arr = film(args.size)
    buf = io.BytesIO()
    Image.fromarray((arr >> 4).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    cases = {"JPEG (8-bit, q90)": buf.getvalue(),
             "DICOM uncompressed 12-bit": dicom_file_bytes(dx_dataset(arr, bits_stored=12, window=(2048, 4096)))}
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, RLELossless

    for label, uid in (("DICOM RLE lossless", RLELossless), ("DICOM JPEG 2000 lossless", JPEG2000Lossless)):
        if get_encoder(uid).is_available:
            ds = dx_dataset(arr, bits_stored=12, window=(2048, 4096))
            ds.compress(uid)
            cases[label] = dicom_file_bytes(ds)
    base = None
    print(f"{args.size}x{args.size} film, median of {args.repeat} decodes to 8-bit RGB")
    print(f"{'input':28} {'bytes':>12} {'ms':>9} {'x JPEG':>7}")
    for label, data in cases.items():
        ms = timed(data, args.repeat)
        base = base or ms
        print(f"{label:28} {len(data):>12,} {ms:>9.1f} {ms / base:>7.2f}")


if __name__ == "__main__":
    main()

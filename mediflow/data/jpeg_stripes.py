"""Decode a restart-marked grayscale JPEG in horizontal stripes, one thread per stripe.

Many radiography exports write baseline JPEGs with a restart marker (RSTn) after every row of 8x8
blocks: half of the full-resolution films in ../shared/data/fullres_samples, and all the large ones.
At each marker the decoder resets its DC predictions and starts on a byte boundary (ITU-T T.81,
E.2.4 and F.2.1.3.1), so the scan can be cut at a marker into self-contained JPEG streams that share
the original's tables and differ only in their frame height. libjpeg-turbo's Huffman decoding is
serial and is most of a DCT-scaled decode, so stripes decoded at once on two cores take ~0.6x the
time (benchmarks/serving_benchmark.py; PIL releases the GIL while it decodes).

The result is the image one decoder gives, pixel for pixel: only single-component, 1x1-sampled,
Huffman-coded sequential JPEGs are cut, and there every output block comes from its own 8x8 block
alone (no chroma upsampling across a cut; the block smoothing that reads neighbours is progressive
only). Cuts fall after RST7, so each stripe's own markers start again at RST0 unrenumbered.
"""

from __future__ import annotations

import bisect
import io
import itertools
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

# Entropy-coded bytes per stripe below which a second thread gains too little to be worth waking.
# Restart-marked films drafted to 224 px on a quiet 2-core AVX-512 VM, one thread -> two: 51 kB
# 0.93 -> 0.93 ms, 121 kB 1.56 -> 1.40, 220 kB 2.57 -> 1.73, 431 kB 4.96 -> 3.21, 850 kB 7.69 -> 4.65.
# (With both cores busy elsewhere a stripe waits for one, and two threads are slower than one.)
MIN_STRIPE_BYTES = 64 * 1024

_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential
_NO_LENGTH = {0xD8, 0x01, *range(0xD0, 0xD8)}  # SOI, TEM, RSTn: markers without a length field
_RST7 = b"\xff\xd7"
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class StripeLayout:
    """Where a JPEG can be cut: `header` (SOI .. the SOS segment, frame height at `height_at`),
    the scan starting at `scan_start`, the frame's `width` x `height` pixels, and `rows_per_interval`
    rows of 8x8 blocks between restart markers."""

    header: bytes
    height_at: int
    scan_start: int
    width: int
    height: int
    rows_per_interval: int


def stripe_layout(data: bytes) -> StripeLayout | None:
    """The layout of a JPEG that can be decoded in stripes, or None: not a single-component 1x1
    sequential Huffman JPEG whose restart interval is a whole number of block rows, or headers that
    do not parse (the ordinary decoder then reports what is wrong)."""
    try:
        i, sof, restart = 2, None, 0
        while True:
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte before a marker
                i += 1
                continue
            if marker in _NO_LENGTH:
                i += 2
                continue
            (length,) = struct.unpack_from(">H", data, i + 2)
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                if marker not in _SEQUENTIAL_HUFFMAN or sof is not None:
                    return None
                sof = i
            elif marker == 0xDD:
                (restart,) = struct.unpack_from(">H", data, i + 4)
            elif marker == 0xDA:
                scan_start = i + 2 + length
                break
            elif marker == 0xD9:
                return None
            i += 2 + length
        if sof is None or not restart:
            return None
        precision, height, width, components = struct.unpack_from(">BHHB", data, sof + 4)
        sampling = data[sof + 11]
        blocks_per_row = (width + 7) // 8
        if precision != 8 or components != 1 or sampling != 0x11 or height == 0 or restart % blocks_per_row:
            return None
    except (IndexError, struct.error):
        return None
    return StripeLayout(header=data[:scan_start], height_at=sof + 5, scan_start=scan_start, width=width,
                        height=height, rows_per_interval=restart // blocks_per_row)


@cache
def _executor(workers: int) -> ThreadPoolExecutor:
    # Started on the first striped decode, kept for the process: a thread per upload would cost
    # more than the stripe it decodes.
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mediflow-jpeg")


def decode_in_stripes(data: bytes, size: tuple[int, int], threads: int) -> Image.Image | None:
    """`data` (a JPEG) decoded in up to `threads` stripes at once, as an "L" image of `size`: the
    full frame's size, or its DCT-scaled size (1/2, 1/4 or 1/8, rounded up; what `Image.draft`
    chose). None when it cannot be cut (see `stripe_layout`), is too small to gain, or `size` is not
    such a scale: the caller then decodes it whole. Raises OSError (as PIL does) for a stripe that
    does not decode."""
    layout = stripe_layout(data) if threads > 1 else None
    if layout is None:
        return None
    scale = next((s for s in (1, 2, 4, 8) if size == (-(-layout.width // s), -(-layout.height // s))), None)
    if scale is None:
        return None
    cuts = _cuts(data, layout, min(threads, (len(data) - layout.scan_start) // MIN_STRIPE_BYTES))
    # Every stripe needs a side of at least `scale` pixels for draft to choose that scale (the top
    # ones have 64 rows or more; the last may be a few rows of a film whose scan is mostly above).
    while cuts and layout.height - cuts[-1][1] < scale:
        cuts.pop()
    if not cuts or layout.width < scale:
        return None
    # Stripe i runs from just past the RST7 that ends stripe i-1 to the RST7 that ends it, closed by
    # an EOI; the last is the rest of the file as it is (a truncated one fails as it would whole).
    starts = [layout.scan_start] + [at + 2 for at, _ in cuts]
    ends = [at for at, _ in cuts] + [len(data)]
    rows = [0] + [row for _, row in cuts] + [layout.height]
    view = memoryview(data)
    stripes = [_stripe(layout, view[a:b], b"" if b == len(data) else _EOI, bottom - top, scale)
               for a, b, top, bottom in zip(starts, ends, rows, rows[1:])]
    later = [_executor(len(stripes) - 1).submit(_load, s) for s in stripes[1:]]
    pixels = [_load(stripes[0])] + [f.result() for f in later]
    return Image.fromarray(np.concatenate(pixels))


def _cuts(data: bytes, layout: StripeLayout, stripes: int) -> list[tuple[int, int]]:
    """(offset of an RST7 marker, first pixel row after it) for each cut between `stripes` stripes of
    about equal compressed size; fewer when the scan has too few markers."""
    cuts: list[tuple[int, int]] = []
    scan = counted = layout.scan_start
    octets = np.frombuffer(data, dtype=np.uint8)
    sevens = 0
    for k in range(1, stripes):
        at = data.find(_RST7, max(counted, scan + k * (len(data) - scan) // stripes))
        if at < 0:
            break
        # Which RST7 this is: count the markers before it. In entropy-coded data a 0xFF byte is
        # always followed by 0x00 or a marker's code (T.81 B.1.1.5), so the pair is a marker. (One
        # past the scan's last RST7, in bytes after the EOI, gives a row past the frame: no cut.)
        sevens += 1 + _count_rst7(octets, counted, at)
        counted = at + 2
        row = 8 * layout.rows_per_interval * 8 * sevens  # 8 restart intervals per RST0..RST7 cycle
        if row >= layout.height:
            break
        cuts.append((at, row))
    return cuts


_CHUNK = 64 * 1024


def _count_rst7(octets: np.ndarray, start: int, end: int) -> int:
    # In pieces: numpy is ~10x faster than bytes.count here, and temporaries this small come from
    # the heap, not from fresh pages that fault in on a first touch each call.
    count = 0
    for i in range(start, end - 1, _CHUNK):
        piece = octets[i:min(i + _CHUNK + 1, end)]
        count += int(np.count_nonzero((piece[:-1] == 0xFF) & (piece[1:] == 0xD7)))
    return count


class _Segments(io.RawIOBase):
    """Byte strings read as one seekable stream without joining them: a stripe's ~0.5 MB of scan
    data is not copied (each copy of a fresh buffer faults its pages in, ~0.3 ms per copy)."""

    def __init__(self, *parts: bytes | memoryview):
        self._parts = [memoryview(p).cast("B") for p in parts]
        self._starts = list(itertools.accumulate((len(p) for p in self._parts), initial=0))
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self._starts[-1]:
            k = bisect.bisect_right(self._starts, self._pos) - 1
            part, offset = self._parts[k], self._pos - self._starts[k]
            n = min(len(out) - done, len(part) - offset)
            out[done:done + n] = part[offset:offset + n]
            done += n
            self._pos += n
        return done


def _stripe(layout: StripeLayout, body: memoryview, end: bytes, rows: int, scale: int) -> Image.Image:
    header = bytearray(layout.header)
    struct.pack_into(">H", header, layout.height_at, rows)
    image = Image.open(io.BufferedReader(_Segments(header, body, end)))
    if scale > 1:
        # A request of exactly 1/scale of each side makes draft choose that scale (it takes the
        # largest of 8, 4, 2, 1 not above side // requested).
        image.draft("L", (layout.width // scale, rows // scale))
    expected = (-(-layout.width // scale), -(-rows // scale))
    if image.size != expected:
        raise OSError(f"stripe decodes to {image.size}, expected {expected}")
    return image


def _load(image: Image.Image) -> np.ndarray:
    image.load()
    return np.asarray(image)

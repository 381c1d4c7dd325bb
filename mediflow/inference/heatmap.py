"""Heatmaps -> pictures: a colour overlay PNG (for the API and the page) and a blended overlay (CLI).

Maps arrive scaled to [0, 1] at any resolution (7x7 CAM from the ONNX graph, input-sized Grad-CAM
from pytorch-grad-cam) and are upsampled bilinearly here. The model sees the image squashed to a
square, a linear map, so stretching the square heatmap over the original image is exact.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image

# matplotlib's "jet" (its segment data), built here so that serving heatmaps needs no matplotlib
# (the core install has none); the test suite checks the table against matplotlib's own.
JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
# The overlay's own transparency: strong activations opaque, weak ones faint, so the film stays
# readable under the page's opacity control.
MIN_ALPHA = 0.25
# The API's overlay side. The map comes from a 7x7 feature map, so 64 px (9 per cell) hold all its
# detail; the browser stretches it smoothly over the film. A 224 px overlay took ~7 ms to colour
# and encode (58 kB) where 64 px takes ~0.3 ms (7 kB).
OVERLAY_SIZE = 64


def _segment_table(points: tuple[tuple[float, float], ...], n: int) -> np.ndarray:
    """(n,) values linear between `points` (x, y), in matplotlib's own arithmetic (scaled to the table's
    indices first), so that rounding agrees with it to the last bit."""
    x = np.array([p[0] for p in points]) * (n - 1)
    y = np.array([p[1] for p in points])
    at = (n - 1) * np.linspace(0.0, 1.0, n)
    ind = np.searchsorted(x, at)[1:-1]
    frac = (at[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    return np.concatenate([[y[0]], frac * (y[ind] - y[ind - 1]) + y[ind - 1], [y[-1]]])


@lru_cache(maxsize=1)
def jet_lut() -> np.ndarray:
    """(256, 3) uint8: the jet colour of each grey level, as matplotlib.colormaps["jet"] gives it for
    np.linspace(0, 1, 256) (its 256-entry table indexed by floor(x * 256))."""
    n = 256
    table = np.stack([_segment_table(JET_SEGMENTS[c], n) for c in ("red", "green", "blue")], axis=1)
    index = np.minimum((np.linspace(0.0, 1.0, n) * n).astype(int), n - 1)
    return (table[index] * 255).round().astype(np.uint8)


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) for `size` = (W, H), bilinear, clipped to [0, 1]."""
    m = np.asarray(heatmap, dtype=np.float32)
    if (m.shape[1], m.shape[0]) != size:
        m = np.asarray(Image.fromarray(m).resize(size, Image.Resampling.BILINEAR))
    return np.clip(m, 0.0, 1.0)


def colorize(heatmap: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """An RGBA overlay: the colormap, with alpha rising with activation."""
    m = upsample(heatmap, size)
    idx = (m * 255).round().astype(np.uint8)
    rgba = np.empty(m.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = jet_lut()[idx]
    rgba[..., 3] = ((MIN_ALPHA + (1 - MIN_ALPHA) * m) * 255).round().astype(np.uint8)
    return Image.fromarray(rgba)


def png_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    # Level 1: the map is smooth, so stronger compression gains little and costs milliseconds.
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay_data_url(heatmap: np.ndarray, size: int = OVERLAY_SIZE) -> str:
    """The API's `heatmap`: a size x size RGBA PNG meant to be stretched over the uploaded image."""
    return png_data_url(colorize(heatmap, (size, size)))


def blend(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.45) -> Image.Image:
    """The image with the heatmap laid over it, at the image's own size (for `predict --heatmap`)."""
    base = image.convert("RGBA")
    over = colorize(heatmap, base.size)
    alpha = (np.asarray(over)[..., 3].astype(np.float32) * opacity).round().astype(np.uint8)
    over.putalpha(Image.fromarray(alpha))
    return Image.alpha_composite(base, over).convert("RGB")

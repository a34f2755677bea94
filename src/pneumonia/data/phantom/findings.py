"""What the phantom draws besides the anatomy: pneumonia opacities and their boxes, a nodule's place, devices."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pneumonia.data.phantom.anatomy import Pose, support
from pneumonia.data.phantom.exact_math import exp_neg, smooth_noise


@dataclass(frozen=True)
class Box:
    """An opacity's bounding box in pixels of the ``size`` image, origin top-left."""

    x: float
    y: float
    width: float
    height: float


def sample_pixel(rng: np.random.Generator, weights: np.ndarray, n: int) -> tuple[float, float]:
    """A pixel drawn with probability proportional to ``weights``; its centre as image fractions (v, u)."""
    # Weights in integers (2**-20 steps, none: uniform), so the cumulative sum is exact.
    counts = np.rint(weights.ravel() * 2**20).astype(np.int64)
    cumulative = np.cumsum(counts if counts.any() else np.ones_like(counts))
    row, col = divmod(int(np.searchsorted(cumulative, rng.integers(cumulative[-1]), side="right")), n)
    return (row + 0.5) / n, (col + 0.5) / n


def opacity_sides(rng: np.random.Generator, count: int) -> list[int]:
    """Which lung (-1 viewer's left, +1 viewer's right) each of ``count`` opacities lies in.

    Two opacities are usually one per lung, as in RSNA.
    """
    if count == 0:
        return []
    if count == 2 and rng.random() < 0.85:
        return [int(s) for s in rng.permutation([-1, 1])]
    return [int(s) for s in rng.choice([-1, 1], size=count)]


def opacity(
    rng: np.random.Generator,
    lung: np.ndarray,
    b: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    band: tuple[int, int],
    n: int,
) -> np.ndarray:
    """One opacity's shape, peak about 1, on the ``n`` x ``n`` anatomy grid; confined to ``lung``.

    ``b`` is the body coordinate down, ``u`` and ``v`` the image fractions across and down
    (a row and a column, or full grids).

    ``band`` = (k, m): the k-th of m opacities in the same lung takes the k-th of m
    horizontal bands of the lung, so they do not pile up.
    """
    k, m = band
    top, bottom = 0.3 + 0.45 * k / m, 0.3 + 0.45 * (k + 1) / m  # mid and lower zones, in body b
    cy, cx = sample_pixel(rng, lung * ((b > top) & (b < bottom)), n)
    # Nominal extents (fractions of the side), chosen so that the boxes, clipped to the lung,
    # come out like RSNA's (mean 21 % x 33 % of the side); stacked opacities in one lung are shorter.
    half_w, half_h = rng.uniform(0.2, 0.38) / 2, rng.uniform(0.26, 0.56) / 2 / math.sqrt(m)
    r2 = ((u - cx) / half_w) ** 2 + ((v - cy) / half_h) ** 2
    envelope = exp_neg(1.2 * r2 * np.sqrt(r2))  # flat-topped, 0.3 at the nominal half-width
    # The texture matters only where the envelope and the lung are not 0: its wide blur is costly.
    window = support((envelope > 0) & (lung > 0))
    texture = smooth_noise(rng, n, 0.025 * n, window)
    cloud = np.zeros_like(lung)
    cloud[window] = envelope[window] * np.clip(0.65 + 0.45 * texture, 0, 1.2) * lung[window]
    return cloud


def bounding_box(cloud: np.ndarray, size: int) -> Box:
    """Box around where ``cloud`` exceeds a quarter of its peak, in pixels of the ``size`` image."""
    rows, cols = np.nonzero(cloud > cloud.max() / 4)
    scale = size / cloud.shape[0]
    x0, x1 = math.floor(cols.min() * scale), math.ceil((cols.max() + 1) * scale)
    y0, y1 = math.floor(rows.min() * scale), math.ceil((rows.max() + 1) * scale)
    return Box(x=float(x0), y=float(y0), width=float(x1 - x0), height=float(y1 - y0))


def draw_devices(rng: np.random.Generator, pose: Pose, size: int) -> np.ndarray:
    """Tubes, lines and ECG leads: thin bright lines drawn at full resolution, uint8.

    255 stands for :data:`~pneumonia.data.phantom.film.DEVICE_ATTENUATION`.
    """
    overlay = Image.new("L", (size, size))
    draw = ImageDraw.Draw(overlay)
    line = max(1, round(size * 0.004))

    def path(points):
        return [tuple(c * size for c in pose.to_image(a, b)) for a, b in points]

    kinds = rng.choice(["tube", "line", "leads"], size=int(rng.integers(1, 4)), replace=False)
    if "tube" in kinds:  # endotracheal tube ending above the carina, nasogastric tube into the stomach
        x = 0.5 + rng.uniform(-0.01, 0.01)
        draw.line(path([(x, 0.0), (x, rng.uniform(0.24, 0.3))]), fill=200, width=2 * line)
        if rng.random() < 0.5:
            gastric = [(x - 0.01, 0.0), (x - 0.005, 0.5), (x + 0.02, 0.78), (x + 0.1, 0.84)]
            draw.line(path(gastric), fill=170, width=line, joint="curve")
    if "line" in kinds:  # central venous line from the shoulder into the superior vena cava
        s = rng.choice([-1, 1])
        venous = [(0.5 + s * 0.33, 0.13), (0.5 + s * 0.18, 0.2), (0.5 + s * 0.05, 0.26), (0.5 + s * 0.02, 0.36)]
        draw.line(path(venous), fill=180, width=line, joint="curve")
    if "leads" in kinds:  # ECG electrodes with their wires running off the film
        for _ in range(int(rng.integers(2, 5))):
            a, b = 0.5 + rng.uniform(-0.35, 0.35), rng.uniform(0.15, 0.75)
            x, y = path([(a, b)])[0]
            r = 0.012 * size
            draw.ellipse([x - r, y - r, x + r, y + r], fill=230)
            wire = [(a, b)]
            for _ in range(3):
                a, b = a + rng.uniform(-0.15, 0.15), b - rng.uniform(0.1, 0.3)
                wire.append((a, b))
            draw.line(path(wire), fill=160, width=line, joint="curve")
    return np.asarray(overlay, dtype=np.uint8)

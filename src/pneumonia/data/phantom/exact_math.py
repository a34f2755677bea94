"""Exactly rounded stand-ins for exp, tanh, cos and sin, and the blurs and textures built on them.

Exactly rounded arithmetic only (+ - * / sqrt, comparisons, rounding): numpy's
exp, tanh, cos, pow and hypot loops, and libm's, may differ in the last bit from
one CPU's SIMD path to another's, and such a bit sometimes flips a grey level.
These stand-ins have the shapes of the functions they replace, not their digits.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage


def soft(x: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 0 (x <= -1.5 ``width``) to 1 (x >= 1.5 ``width``): soft-edged masks.

    A cubic smoothstep, as steep at 0 as ``0.5 * (1 + tanh(x / width))``.
    """
    t = np.clip(x * (1 / (1.5 * width)), -1, 1)
    step = t * t
    step *= -0.25
    step += 0.75
    step *= t
    step += 0.5
    return step


def exp_neg(x):
    """``(1 - x/16)**16``, zero beyond 16: close to exp(-x) for x >= 0 (0.36 at 1, 0.01 at 4). Arrays or floats."""
    # Both bounds: with one, numpy clips by np.maximum, three times as slow against a number.
    y = np.clip(1 - x * (1 / 16), 0, np.inf)
    for _ in range(4):
        y *= y
    return y


@functools.lru_cache(maxsize=16)  # a pose's angle serves every window of its image
def cos_sin(angle: float) -> tuple[float, float]:
    """cos and sin of ``angle`` (radians, |angle| <= 0.5) by their Taylor series, to double precision."""
    x2 = angle * angle
    cos, sin, term_c, term_s = 1.0, angle, 1.0, angle
    for k in range(1, 10):
        term_c = -term_c * x2 / ((2 * k - 1) * (2 * k))
        term_s = -term_s * x2 / ((2 * k) * (2 * k + 1))
        cos, sin = cos + term_c, sin + term_s
    return cos, sin


@functools.lru_cache(maxsize=16)  # the textures' widths depend on the size alone
def _kernel(sigma: float) -> np.ndarray:
    """A Gaussian-like 1-D kernel of ``sigma`` pixels, 4 sigma each side, summing to 1: :func:`exp_neg` of x**2/2.

    Read-only (it is shared).
    """
    radius = max(1, int(4 * sigma + 0.5))
    x = np.arange(-radius, radius + 1) / sigma
    weights = exp_neg(0.5 * x * x)
    weights /= math.fsum(weights)
    weights.flags.writeable = False
    return weights


def blur(image: np.ndarray, sigma: float, window: tuple[slice, slice] | None = None) -> np.ndarray:
    """Blur by :func:`_kernel` along both axes, edges reflected; with ``window`` (rows, columns), there only.

    A window's values are those of the whole image blurred, bit for bit: each output
    sums the inputs within the kernel's radius, in the same order, so the window is
    blurred with that margin around it (or the image's own edge) and then cut out.
    Not scipy's gaussian_filter, whose kernel comes from numpy's exp; ``correlate1d`` is plain C.
    """
    weights = _kernel(sigma)
    if window is not None:
        reach = len(weights) // 2
        grown = tuple(slice(max(0, s.start - reach), min(n, s.stop + reach)) for s, n in zip(window, image.shape))
        image = image[grown]
        inner_rows, inner_columns = (slice(s.start - g.start, s.stop - g.start) for s, g in zip(window, grown))
        image = ndimage.correlate1d(image, weights, axis=0, mode="reflect")[inner_rows]
        return ndimage.correlate1d(image, weights, axis=1, mode="reflect")[:, inner_columns]
    image = ndimage.correlate1d(image, weights, axis=0, mode="reflect")
    return ndimage.correlate1d(image, weights, axis=1, mode="reflect")


def smooth_noise(
    rng: np.random.Generator, n: int, sigma: float, window: tuple[slice, slice] | None = None
) -> np.ndarray:
    """Smooth random texture on an ``n`` x ``n`` grid, mean 0, s.d. about 1: uniform noise blurred by ``sigma`` pixels.

    Uniform draws, not Gaussian ones (numpy's normal sampler calls libm's exp): once
    blurred they are as Gaussian. Scaled by the s.d. the blur leaves, sqrt(1/12) * sum(w**2).
    With ``window`` (rows, columns), the texture there only; the whole grid is drawn all the same.
    """
    kept = math.fsum(_kernel(sigma) ** 2) * math.sqrt(1 / 12)
    return blur(rng.random((n, n), dtype=np.float32) - 0.5, sigma, window) * (1 / kept)

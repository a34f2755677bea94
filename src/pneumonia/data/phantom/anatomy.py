"""The chest on the anatomy grid, in body coordinates: pose and build, soft tissue, lungs, heart, bones, vessels.

Every feature is a soft mask or an attenuation (0 = air, about 1 = dense) on the
``n`` x ``n`` grid; one that is 0 outside a box of body coordinates is drawn on
that box's window of the grid alone (:meth:`Body.window`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pneumonia.data.phantom.exact_math import cos_sin, exp_neg, smooth_noise, soft


def support(mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns that hold every nonzero pixel of ``mask`` (empty slices when it has none)."""
    spans = []
    for axis in (1, 0):
        kept = np.flatnonzero(mask.any(axis=axis))
        spans.append(slice(int(kept[0]), int(kept[-1]) + 1) if len(kept) else slice(0, 0))
    return tuple(spans)


@dataclass(frozen=True)
class Pose:
    """Where the body lies on the image: shift (fractions of the side), scale, rotation (radians)."""

    dx: float
    dy: float
    scale: float
    angle: float

    def to_body(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image fractions (u across, v down: arrays that broadcast, a row and a column) -> body coordinates (a, b)."""
        x, y = (u - 0.5 - self.dx) / self.scale, (v - 0.5 - self.dy) / self.scale
        c, s = cos_sin(self.angle)
        return 0.5 + c * x + s * y, 0.5 - s * x + c * y

    def to_image(self, a: float, b: float) -> tuple[float, float]:
        """Body coordinates (a, b) -> image fractions (u, v); the inverse of :meth:`to_body`."""
        x, y = a - 0.5, b - 0.5
        c, s = cos_sin(self.angle)
        return 0.5 + self.dx + self.scale * (c * x - s * y), 0.5 + self.dy + self.scale * (s * x + c * y)


@dataclass(frozen=True)
class Body:
    """Body coordinates of the anatomy grid, and the patient's build."""

    d: np.ndarray  # across from the midline, fraction of the side (+ = viewer's right)
    b: np.ndarray  # down from the top, fraction of the side
    width: float  # habitus: scales everything across
    inspiration: float  # shifts the diaphragm and ribs down (+) or up (-), fraction of the side
    pose: Pose  # where the grid's body coordinates come from

    def window(self, d: tuple[float, float], b: tuple[float, float]) -> tuple[slice, slice]:
        """The grid's rows and columns that hold every point with body coordinates in ``d`` x ``b``, 2 pixels spare.

        A feature that is 0 outside such a box is drawn on this window alone: the same values, less work.
        """
        n = self.b.shape[0]
        corners = [self.pose.to_image(0.5 + x, y) for x in d for y in b]
        spans = [(min(c[i] for c in corners), max(c[i] for c in corners)) for i in (1, 0)]  # rows, columns
        return tuple(slice(min(n, max(0, math.floor(lo * n) - 2)), min(n, max(0, math.ceil(hi * n) + 2))) for lo, hi in spans)

    def __getitem__(self, window: tuple[slice, slice]) -> Body:
        return Body(self.d[window], self.b[window], self.width, self.inspiration, self.pose)  # replace() is slower


def soft_tissue(body: Body) -> tuple[np.ndarray, np.ndarray]:
    """Neck, shoulders and chest: (soft mask of the inside of the body, its attenuation).

    The attenuation grows towards the midline, where the body is thicker.
    """
    d, b = body.d, body.b
    half_width = (0.43 - 0.07 * ((b - 0.45) / 0.5) ** 2) * body.width
    shoulder_top = 0.06 + 1.3 * np.clip(np.abs(d) - 0.08 * body.width, 0, np.inf) ** 2  # both bounds: see exp_neg
    chest = np.minimum(half_width - np.abs(d), b - shoulder_top)
    neck = np.clip(0.085 * body.width - np.abs(d), -np.inf, 1.0)
    inside = soft(np.maximum(chest, neck), 0.006)
    depth = np.sqrt(np.clip(1 - (d / half_width) ** 2, 0, 1))
    return inside, inside * (0.3 + 0.3 * depth)


def lung_fields(body: Body, effusion: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The two lung fields (viewer's left, viewer's right) as soft masks in [0, 1].

    Each is an egg-shaped super-ellipse, wider at the base, cut by its diaphragm
    dome. ``effusion`` (-1 or +1, 0 for none) fills that lung's base with fluid.
    """
    lungs = []
    for side in (-1, 1):  # -1: viewer's left, the patient's right
        centre, cy, ry = side * 0.215 * body.width, 0.57, 0.41
        # 0 where |x| ** 2.5 or |y| ** 2.25 reaches 1.09: beyond 1.04 rx (at most 0.165 width) or 1.04 ry.
        field = body.window((centre - 0.19 * body.width, centre + 0.19 * body.width), (0.12, 1.02))
        d, b = body[field].d, body[field].b
        rx = 0.15 * body.width * (0.8 + 0.3 * np.clip((b - 0.16) / 0.6, 0, 1))
        across = (d - centre) / rx
        x, y = np.abs(across), np.abs((b - cy) / ry)
        shape = x * x * np.sqrt(x) + y * y * np.sqrt(np.sqrt(y))  # |x| ** 2.5 + |y| ** 2.25
        dome_base = 0.78 + body.inspiration + (0.0 if side > 0 else -0.02)  # the right dome sits higher
        dome = dome_base - 0.075 * (1 - np.clip(across, -1, 1) ** 2)
        lung = soft(1 - shape, 0.06) * soft(dome - b, 0.006)
        if side == effusion:
            # A meniscus climbing laterally: the costophrenic angle is blunted.
            level = dome_base - rng.uniform(0.05, 0.15) - 0.06 * np.clip(side * across, -1, 1)
            lung = lung * (1 - 0.9 * soft(b - level, 0.012))
        lungs.append(np.zeros_like(body.b))
        lungs[-1][field] = lung
    return lungs


def heart(body: Body, scale: float) -> np.ndarray:
    """The heart as a soft mask: an ellipse sitting on the diaphragm, apex tilted to the patient's left."""
    centre = (0.04 * body.width, 0.68 + body.inspiration)
    reach = 1.1 * max(0.16 * body.width, 0.13) * scale  # the mask is 0 beyond 1.09 radii
    window = body.window((centre[0] - reach, centre[0] + reach), (centre[1] - reach, centre[1] + reach))
    part = body[window]
    x, y = part.d - centre[0], part.b - centre[1]
    cos, sin = cos_sin(math.radians(20))
    ex = (x * cos + y * sin) / (0.16 * body.width * scale)
    ey = (-x * sin + y * cos) / (0.13 * scale)
    heart = np.zeros_like(body.b)
    heart[window] = soft(1 - (ex**2 + ey**2), 0.12)
    return heart


def aortic_knob(body: Body) -> np.ndarray:
    """A disc 0.032 across, at (0.045 * width, 0.33); 0 beyond 0.041 of its centre."""
    return soft(0.032 - np.sqrt((body.d - 0.045 * body.width) ** 2 + (body.b - 0.33) ** 2), 0.006)


def bones(body: Body, inside: np.ndarray, rib_amp: float, ap: bool) -> np.ndarray:
    """Spine with vertebrae, ribs, clavicles (and scapulae on AP films); minus the tracheal air.

    Each is drawn only on the window of the grid that holds it (all are 0 outside).
    """
    att = np.zeros_like(body.b)
    w = body.width
    spine = body.window((-0.035 * w - 0.01, 0.035 * w + 0.01), (0.04, 2.0))
    d, b = body[spine].d, body[spine].b
    period = b / 0.052
    period -= np.round(period)  # -0.5 to 0.5 over each vertebra: 1 - 8 period**2 is a cosine's shape
    vertebrae = 0.85 + 0.15 * soft(1.6 - 8 * period**2, 0.3)
    att[spine] += 0.06 * soft(0.035 * w - np.abs(d), 0.006) * vertebrae * soft(b - 0.08, 0.02)
    # Posterior ribs leave the spine level, then curve down laterally; ten, evenly spaced.
    ribs = body.window((-0.39 * w, 0.39 * w), (body.inspiration + 0.05, body.inspiration + 0.92))
    d, b = body[ribs].d, body[ribs].b
    lateral = np.abs(d) / w
    ribcage = soft(lateral - 0.04, 0.01) * soft(0.37 - lateral, 0.01) * inside[ribs]
    phase = (b - body.inspiration - 0.15 - 1.2 * np.clip(lateral - 0.05, 0, np.inf) ** 2) / 0.056
    nearest = np.round(phase)
    posterior = exp_neg(((phase - nearest) * 0.056 / 0.011) ** 2) * (nearest >= 0) * (nearest <= 9)
    # Anterior ribs run from the side down towards the sternum; fainter (cartilage).
    phase = (b - body.inspiration - 0.2 - 0.5 * (0.37 - lateral)) / 0.075
    nearest = np.round(phase)
    anterior = exp_neg(((phase - nearest) * 0.075 / 0.013) ** 2) * (nearest >= 0) * (nearest <= 5)
    att[ribs] += rib_amp * ribcage * (posterior + 0.35 * anterior * soft(lateral - 0.12, 0.02))
    clavicles = body.window((-0.34 * w, 0.34 * w), (0.06, 0.25))
    d, b = body[clavicles].d, body[clavicles].b
    lateral = np.abs(d) / w
    clavicle = 0.19 - 0.22 * (lateral - 0.035) + 0.5 * (lateral - 0.035) * (lateral - 0.3)
    along_clavicle = soft(lateral - 0.035, 0.005) * soft(0.32 - lateral, 0.01)
    att[clavicles] += 0.09 * exp_neg(((b - clavicle) / 0.012) ** 2) * along_clavicle
    if ap:  # on AP films the scapulae are not rotated out of the lung fields
        for s in (-1, 1):
            scapula = body.window((s * 0.36 * w - 0.085, s * 0.36 * w + 0.085), (0.13, 0.51))
            d, b = body[scapula].d, body[scapula].b
            shape = np.sqrt((np.abs(d) / w - 0.36) ** 2 + ((b - 0.32) / 2.5) ** 2)
            att[scapula] += 0.04 * soft(0.06 - shape, 0.01) * inside[scapula]
    # The trachea: a dark air column down the midline to the carina.
    trachea = body.window((-0.021, 0.021), (-1.0, 0.356))
    d, b = body[trachea].d, body[trachea].b
    att[trachea] -= 0.06 * soft(0.014 - np.abs(d), 0.004) * soft(0.34 - b, 0.01) * inside[trachea]
    return att


def add_vessel_markings(att: np.ndarray, rng: np.random.Generator, body: Body, lung: np.ndarray, n: int) -> None:
    """Add vessel markings to ``att``: fine texture, densest around the hila; where the lung is (0 elsewhere).

    ``lung`` is the lungs' soft mask as seen past the heart; ``n`` the grid's side.
    """
    field = support(lung)
    markings = smooth_noise(rng, n, 1.2 * n / 256, field)
    att[field] += lung[field] * (0.015 * markings * (1 + 2 * exp_neg(np.abs(body.d[field]) / 0.12)))
    for s in (-1, 1):
        centre = s * 0.085 * body.width
        hilum = body.window((centre - 0.141, centre + 0.141), (0.219, 0.701))
        part = body[hilum]
        att[hilum] += 0.06 * lung[hilum] * exp_neg(((part.d - centre) / 0.035) ** 2 + ((part.b - 0.46) / 0.06) ** 2)


def add_breasts(att: np.ndarray, body: Body, inside: np.ndarray) -> None:
    """Add breast shadows over the lung bases to ``att``; ``inside`` is the body's soft mask."""
    for s in (-1, 1):
        breast = body.window((s * 0.25 * body.width - 0.21, s * 0.25 * body.width + 0.21), (0.58, 0.86))
        part = body[breast]
        shape = np.sqrt(((part.d - s * 0.25 * body.width) / 0.17) ** 2 + ((part.b - 0.72) / 0.11) ** 2)
        att[breast] += 0.05 * soft(1 - shape, 0.15) * inside[breast]

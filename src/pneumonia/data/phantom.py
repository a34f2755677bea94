"""Phantom chest X-rays in the layout of Kaggle's RSNA Pneumonia Detection Challenge.

The pipeline runs offline on this dataset exactly as it would on the real one:

    raw_dir/stage_2_train_images/<patientId>.dcm   8-bit JPEG Baseline DICOMs, like RSNA's
    raw_dir/stage_2_train_labels.csv               patientId,x,y,width,height,Target
    raw_dir/stage_2_detailed_class_info.csv        patientId,class

Everything follows from ``seed``: patient i's attributes and image come from
their own random stream, derived from ``(seed, i)``, so the files are
byte-identical whatever the number of worker processes.

Bit-stable across machines: every file (DICOMs and both CSVs) is byte-identical
on any x86-64 CPU for the same seed, size and library versions (numpy, scipy,
Pillow with its libjpeg-turbo, pydicom). The images use exactly rounded
arithmetic only (+ - * / sqrt, integer work at full size), never numpy's or
libm's exp, tanh, cos or pow, whose last bit depends on the CPU's SIMD path;
tests/test_phantom.py compares the files written under numpy's best SIMD path
and under its baseline.

Coordinates: boxes are in pixels of the ``size`` x ``size`` image, origin at the
top-left corner, x to the right (columns), y down (rows), like RSNA's. The
anatomy is described in *body coordinates*: ``a`` across (0.5 = midline,
larger = viewer's right = patient's left), ``b`` down from the top of the image,
both as fractions of the image side; a per-image affine transform (shift,
scale, rotation) maps them onto the image.

Difficulty is one knob, :data:`OPACITY_CONTRAST`.
"""

from __future__ import annotations

import ctypes
import functools
import math
import multiprocessing
import os
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from scipy import ndimage

from pneumonia.core.atomic import atomic_dir, atomic_path

OPACITY_CONTRAST = 0.35
"""How bright a pneumonia opacity is at its core: the fraction of the lung's
darkness it fills in (0 = invisible, 1 = as bright as that spot would be
without air in the lung). Each opacity varies around it by a factor 0.7-1.3. The difficulty knob.

With the pipeline's default params (1500 patients, 128 x 128, the reference recipe:
Adam 1e-4, heavy augmentation, 8 epochs on 1200, validated on 300; one run each):
0.20 -> val AUROC 0.75, 0.35 -> 0.93. The reference recipe learns slowly, so the
default sits where that recipe lands inside the 0.85-0.98 the pipeline aims for.
(With AdamW 1e-3 one-cycle and no augmentation the same data is far easier:
0.18 -> 0.88, 0.20 -> 0.94, 0.25 -> 0.97.)"""

# Class names, exactly as in stage_2_detailed_class_info.csv.
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"
LUNG_OPACITY = "Lung Opacity"

# Target fractions, from the 26,684 patients of RSNA's stage 2 training set.
POSITIVE_FRACTION = 0.225
NOT_NORMAL_SHARE_OF_NEGATIVES = 44 / 77  # negatives split 44 : 33, Not Normal : Normal
BOX_COUNT_WEIGHTS = (0.43, 0.54, 0.02, 0.002)  # 1, 2, 3, 4 boxes; renormalised when drawn
PA_FRACTION = 0.54
MALE_FRACTION = 0.57
PIXEL_SPACING_MM = (0.14, 0.19)

# Findings of "No Lung Opacity / Not Normal" patients: none of them is an opacity,
# and several are bright, so brightness alone does not tell the classes apart.
NOT_NORMAL_FINDINGS = ("cardiomegaly", "effusion", "nodule", "devices", "haze")
NOT_NORMAL_FINDING_WEIGHTS = (0.25, 0.2, 0.15, 0.3, 0.1)
POSITIVE_DEVICE_FRACTION = 0.3  # opacity patients also carry tubes and leads sometimes

# How much the air in the lungs darkens them, in attenuation units (soft tissue is 0.3-0.6).
LUNG_DARKNESS = 0.38

# Anatomy is synthesised at this resolution (pixels), then upscaled: speed.
ANATOMY_SIZE = 256

# The attenuation of the brightest device pixel (leads and tubes are drawn at 160-230 of 255).
DEVICE_ATTENUATION = 0.35

# The grain is a random byte (-128 to 127, uniform): this s.d., about 73.9 steps.
GRAIN_SD = math.sqrt((256**2 - 1) / 12)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


@dataclass(frozen=True)
class Patient:
    """One phantom patient: what the label files and the DICOM header say, and how to draw the image."""

    patient_id: str  # UUID-style, 8-4-4-4-12 lowercase hex
    class_name: str  # NORMAL, NOT_NORMAL or LUNG_OPACITY
    opacities: int  # number of boxes: 1-4 for LUNG_OPACITY, else 0
    findings: tuple[str, ...]  # from NOT_NORMAL_FINDINGS (plus "devices" for some positives)
    view: str  # "PA" or "AP"
    sex: str  # "M" or "F"
    age: int  # years
    pixel_spacing: float  # mm per pixel at the written size
    image_seed: int  # seeds the image of this patient alone


@dataclass(frozen=True)
class Box:
    """An opacity's bounding box in pixels of the ``size`` image, origin top-left."""

    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Rendering:
    """A phantom radiograph: ``pixels`` is a uint8 (size, size) array, MONOCHROME2 (bright = dense)."""

    pixels: np.ndarray
    boxes: tuple[Box, ...]


# --------------------------------------------------------------------------- patients


def draw_patients(n: int, seed: int) -> list[Patient]:
    """Draw ``n`` patients' classes, box counts, findings and demographics; no images.

    Patient ``i`` depends only on ``(seed, i)``, so the first ``n`` of a larger
    draw are the same patients.
    """
    return [_draw_patient(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))) for i in range(n)]


def _draw_patient(rng: np.random.Generator) -> Patient:
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    # The class is drawn independently of view, sex and age: no shortcut through them.
    u = rng.random()
    box_weights = np.array(BOX_COUNT_WEIGHTS) / sum(BOX_COUNT_WEIGHTS)
    if u < POSITIVE_FRACTION:
        class_name = LUNG_OPACITY
        opacities = 1 + int(rng.choice(len(box_weights), p=box_weights))
        findings = ("devices",) if rng.random() < POSITIVE_DEVICE_FRACTION else ()
    elif u < POSITIVE_FRACTION + (1 - POSITIVE_FRACTION) * NOT_NORMAL_SHARE_OF_NEGATIVES:
        class_name = NOT_NORMAL
        opacities = 0
        count = 1 + int(rng.random() < 0.35)
        weights = np.array(NOT_NORMAL_FINDING_WEIGHTS) / sum(NOT_NORMAL_FINDING_WEIGHTS)
        picked = rng.choice(len(NOT_NORMAL_FINDINGS), size=count, replace=False, p=weights)
        findings = tuple(NOT_NORMAL_FINDINGS[k] for k in sorted(picked))
    else:
        class_name = NORMAL
        opacities = 0
        findings = ()
    return Patient(
        patient_id=patient_id,
        class_name=class_name,
        opacities=opacities,
        findings=findings,
        view="PA" if rng.random() < PA_FRACTION else "AP",
        sex="M" if rng.random() < MALE_FRACTION else "F",
        # Twelve uniforms make a normal deviate (Irwin-Hall) from exactly rounded sums; numpy's normal calls libm's exp.
        age=int(np.clip(round(48 + 16 * (math.fsum(rng.random(12)) - 6)), 18, 90)),
        pixel_spacing=round(float(rng.uniform(*PIXEL_SPACING_MM)), 3),
        image_seed=int(rng.integers(2**63)),
    )


# --------------------------------------------------------------------------- images


# Exactly rounded arithmetic only (+ - * / sqrt, comparisons, rounding): numpy's
# exp, tanh, cos, pow and hypot loops, and libm's, may differ in the last bit from
# one CPU's SIMD path to another's, and such a bit sometimes flips a grey level.
# These stand-ins have the shapes of the functions they replace, not their digits.


def _soft(x: np.ndarray, width: float) -> np.ndarray:
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


def _exp_neg(x):
    """``(1 - x/16)**16``, zero beyond 16: close to exp(-x) for x >= 0 (0.36 at 1, 0.01 at 4). Arrays or floats."""
    # Both bounds: with one, numpy clips by np.maximum, three times as slow against a number.
    y = np.clip(1 - x * (1 / 16), 0, np.inf)
    for _ in range(4):
        y *= y
    return y


@functools.lru_cache(maxsize=16)  # a pose's angle serves every window of its image
def _cos_sin(angle: float) -> tuple[float, float]:
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
    """A Gaussian-like 1-D kernel of ``sigma`` pixels, 4 sigma each side, summing to 1: :func:`_exp_neg` of x**2/2.

    Read-only (it is shared).
    """
    radius = max(1, int(4 * sigma + 0.5))
    x = np.arange(-radius, radius + 1) / sigma
    weights = _exp_neg(0.5 * x * x)
    weights /= math.fsum(weights)
    weights.flags.writeable = False
    return weights


def _blur(image: np.ndarray, sigma: float, window: tuple[slice, slice] | None = None) -> np.ndarray:
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


def _smooth_noise(
    rng: np.random.Generator, n: int, sigma: float, window: tuple[slice, slice] | None = None
) -> np.ndarray:
    """Smooth random texture on an ``n`` x ``n`` grid, mean 0, s.d. about 1: uniform noise blurred by ``sigma`` pixels.

    Uniform draws, not Gaussian ones (numpy's normal sampler calls libm's exp): once
    blurred they are as Gaussian. Scaled by the s.d. the blur leaves, sqrt(1/12) * sum(w**2).
    With ``window`` (rows, columns), the texture there only; the whole grid is drawn all the same.
    """
    kept = math.fsum(_kernel(sigma) ** 2) * math.sqrt(1 / 12)
    return _blur(rng.random((n, n), dtype=np.float32) - 0.5, sigma, window) * (1 / kept)


def _support(mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns that hold every nonzero pixel of ``mask`` (empty slices when it has none)."""
    spans = []
    for axis in (1, 0):
        kept = np.flatnonzero(mask.any(axis=axis))
        spans.append(slice(int(kept[0]), int(kept[-1]) + 1) if len(kept) else slice(0, 0))
    return tuple(spans)


@dataclass(frozen=True)
class _Pose:
    """Where the body lies on the image: shift (fractions of the side), scale, rotation (radians)."""

    dx: float
    dy: float
    scale: float
    angle: float

    def to_body(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image fractions (u across, v down: arrays that broadcast, a row and a column) -> body coordinates (a, b)."""
        x, y = (u - 0.5 - self.dx) / self.scale, (v - 0.5 - self.dy) / self.scale
        c, s = _cos_sin(self.angle)
        return 0.5 + c * x + s * y, 0.5 - s * x + c * y

    def to_image(self, a: float, b: float) -> tuple[float, float]:
        """Body coordinates (a, b) -> image fractions (u, v); the inverse of :meth:`to_body`."""
        x, y = a - 0.5, b - 0.5
        c, s = _cos_sin(self.angle)
        return 0.5 + self.dx + self.scale * (c * x - s * y), 0.5 + self.dy + self.scale * (s * x + c * y)


def render(
    patient: Patient, size: int, opacity_contrast: float = OPACITY_CONTRAST, lung_darkness: float = LUNG_DARKNESS
) -> Rendering:
    """Draw ``patient``'s radiograph at ``size`` x ``size`` pixels, with its opacity boxes.

    Deterministic in ``patient.image_seed``; ``opacity_contrast`` changes only how
    bright the opacities are (0 draws the same image without them), not where;
    ``lung_darkness`` 0 draws a chest without air in its lungs (an image unlike any
    training image, for the out-of-distribution guard's unlike set).
    The image is built as an attenuation map (0 = air, about 1 = dense) on the
    anatomy grid, then enlarged, grained and exposed at full size in integers.
    """
    rng = np.random.default_rng(patient.image_seed)
    n = min(size, ANATOMY_SIZE)
    ap = patient.view == "AP"
    pose = _Pose(
        dx=rng.uniform(-0.03, 0.03),
        dy=rng.uniform(-0.03, 0.03),
        scale=rng.uniform(0.93, 1.05),
        angle=math.radians(rng.uniform(-3, 3)),
    )
    centres = (np.arange(n, dtype=np.float32) + 0.5) / n
    # Image fractions of each anatomy pixel: u across (a row), v down (a column). Arithmetic on
    # them broadcasts to the grid, each pixel's value computed as from full arrays, at less cost.
    u, v = centres[None, :], centres[:, None]
    a, b = pose.to_body(u, v)
    body = _Body(
        d=a - 0.5,
        b=b,
        width=rng.uniform(0.9, 1.08),  # habitus
        inspiration=rng.uniform(-0.03, 0.03) + (0.025 if ap else 0.0),  # AP films: supine, shallower breath
        pose=pose,
    )
    heart_scale = rng.uniform(0.92, 1.08) * (1.12 if ap else 1.0)  # AP magnifies the heart
    if "cardiomegaly" in patient.findings:
        heart_scale *= rng.uniform(1.3, 1.45)

    inside, tissue = _soft_tissue(body)
    lungs = _lungs(body, effusion=int(rng.choice([-1, 1])) if "effusion" in patient.findings else 0, rng=rng)
    # Where the heart or aortic knob lies in front of the lung, the lung hardly shows.
    shadow = _heart(body, heart_scale)
    knob = body.window((0.045 * body.width - 0.042, 0.045 * body.width + 0.042), (0.288, 0.372))
    shadow[knob] = np.maximum(shadow[knob], _aortic_knob(body[knob]))
    see_through = 1 - 0.9 * shadow
    lung = np.maximum(*lungs) * see_through
    att = 0.03 + tissue - lung_darkness * lung

    # Vessel markings: fine texture, densest around the hila; drawn where the lung is (0 elsewhere).
    field = _support(lung)
    markings = _smooth_noise(rng, n, 1.2 * n / 256, field)
    att[field] += lung[field] * (0.015 * markings * (1 + 2 * _exp_neg(np.abs(body.d[field]) / 0.12)))
    for s in (-1, 1):
        centre = s * 0.085 * body.width
        hilum = body.window((centre - 0.141, centre + 0.141), (0.219, 0.701))
        part = body[hilum]
        att[hilum] += 0.06 * lung[hilum] * _exp_neg(((part.d - centre) / 0.035) ** 2 + ((part.b - 0.46) / 0.06) ** 2)
    att += _bones(body, inside, rib_amp=rng.uniform(0.03, 0.055), ap=ap)
    if patient.sex == "F":  # breast shadows over the lung bases
        for s in (-1, 1):
            breast = body.window((s * 0.25 * body.width - 0.21, s * 0.25 * body.width + 0.21), (0.58, 0.86))
            part = body[breast]
            shape = np.sqrt(((part.d - s * 0.25 * body.width) / 0.17) ** 2 + ((part.b - 0.72) / 0.11) ** 2)
            att[breast] += 0.05 * _soft(1 - shape, 0.15) * inside[breast]
    if "nodule" in patient.findings:
        cy, cx = _sample_pixel(rng, lung * (b > 0.25), n)
        att += 0.5 * lung_darkness * _soft(rng.uniform(0.012, 0.025) - np.sqrt((u - cx) ** 2 + (v - cy) ** 2), 0.003)

    # Pneumonia: soft, cloudy opacities in the mid and lower zones, filling in the lung's darkness.
    boxes = []
    sides = _opacity_sides(rng, patient.opacities)
    for k, side in enumerate(sides):
        same_side = [i for i, s in enumerate(sides) if s == side]
        band = same_side.index(k), len(same_side)
        cloud = _opacity(rng, lungs[0 if side < 0 else 1] * see_through, b, u, v, band, n)
        att += opacity_contrast * lung_darkness * rng.uniform(0.7, 1.3) * cloud
        boxes.append(_bounding_box(cloud, size))

    # Film: AP portables are blurrier; exposure, contrast and noise vary per image.
    att = _blur(att, rng.uniform(0.9, 1.4) * (1.4 if ap else 1.0) * n / 256)
    gain = rng.uniform(1.15, 1.4)
    offset = rng.uniform(-0.08, 0.02)
    midtone = rng.uniform(0.435, 0.574)  # the grey that 0.5 becomes: a gamma of 0.8-1.2
    if "haze" in patient.findings:  # overexposed, hazy: brighter and flatter
        gain, offset = gain * 0.8, offset + 0.12
    noise = rng.uniform(0.006, 0.014)
    # At full size, integers: attenuation in steps of noise / GRAIN_SD, so the grain
    # is added as drawn, and the film's response is a table of grey levels.
    steps = GRAIN_SD / noise  # per attenuation unit
    first, film = _film(gain, offset, midtone, steps)
    levels = np.rint(att * steps).astype(np.int32) - first
    devices = None
    if "devices" in patient.findings:
        device_steps = np.rint(np.arange(256) * (DEVICE_ATTENUATION / 255 * steps)).astype(np.int32)
        devices = _devices(rng, pose, size), device_steps
    raw = rng.bit_generator.random_raw(-(-size * size // 8)).astype("<u8", copy=False)
    grain = raw.view(np.int8)[: size * size].reshape(size, size)
    return Rendering(pixels=_develop(levels, size, film, grain, devices), boxes=tuple(boxes))


def _film(gain: float, offset: float, midtone: float, steps: float) -> tuple[int, np.ndarray]:
    """The film's response: (first, table), table[i] the grey level (uint8) of attenuation (first + i) / steps.

    ``gain * attenuation + offset``, clipped to [0, 1], then bent so that 0.5 becomes
    ``midtone`` (Schlick's bias curve, a rational stand-in for a gamma); below the
    table is black, above it white.
    """
    first = math.floor(-offset / gain * steps)
    x = np.clip(gain * (np.arange(first, math.ceil((1 - offset) / gain * steps) + 1) / steps) + offset, 0, 1)
    return first, np.rint(255 * (x / ((1 / midtone - 2) * (1 - x) + 1))).astype(np.uint8)


def _develop(
    levels: np.ndarray, size: int, film: np.ndarray, grain: np.ndarray, devices: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """The exposed film, uint8 ``size`` x ``size``: ``film[enlarged levels + devices + grain]``, clipped to the table.

    ``levels`` (int32, n x n) is enlarged by :func:`_enlarge`; ``grain`` is int8,
    ``size`` x ``size``; ``devices`` is None or (overlay, steps): the overlay
    (uint8, ``size`` x ``size``) and the attenuation steps (int32) of each of its
    256 values. A band of rows at a time, so that the temporaries stay in the
    CPU's cache.
    """
    # Rather than clip each index (a branch the grain makes unpredictable: the lookup took half as
    # long again), extend the table over every index the pixels can reach, black below and white above.
    # Enlarging commutes with adding a whole number, so the levels are shifted to the table's start.
    low = int(levels.min()) - 128
    high = int(levels.max()) + 127 + (int(devices[1].max()) if devices is not None else 0)
    below, above = max(0, -low), max(0, high + 1 - len(film))
    table = np.concatenate([np.full(below, film[0]), film, np.full(above, film[-1])])
    pixels = np.empty((size, size), np.uint8)
    for rows, band in _enlarge(levels + below, size):
        if devices is not None:
            overlay, steps = devices
            band += steps.take(overlay[rows])
        band += grain[rows]
        np.take(table, band, out=pixels[rows])
    return pixels


def _enlarge(levels: np.ndarray, size: int, band: int = 128):
    """Yield (rows, values) of ``levels`` (int32, n x n) enlarged to ``size`` x ``size``, ``band`` rows at a time.

    Linear interpolation in integers: pixel centres aligned and edges clamped, as
    Pillow's BILINEAR enlarges; weights in 1/256ths, across first, each pass
    rounded half up. A band at a time, so that the caller's work on it stays in
    the CPU's cache. ``values`` may be a buffer that the next band overwrites:
    use it before asking for the next.
    """
    n = levels.shape[0]
    twice = (2 * np.arange(size) + 1) * n - size  # each output centre in source pixels, times 2 * size
    left = twice // (2 * size) + 1  # in the source padded by one pixel each side
    weight = (((twice - (left - 1) * 2 * size) * 256 + size) // (2 * size)).astype(np.int32)  # of the right one
    padded = np.pad(levels, 1, mode="edge")
    if size % n == 0:
        yield from _enlarge_whole(padded, size, left, weight, band)
        return
    for top in range(0, size, band):
        rows = slice(top, min(top + band, size))
        lines = padded[left[rows][0] : left[rows][-1] + 2]  # the band's source rows
        lines = lines[:, left] * 256 + 128 + (lines[:, left + 1] - lines[:, left]) * weight
        lines >>= 8
        lines *= 256
        lines += 128  # the next pass's rounding
        pairs = left[rows] - left[rows][0]
        values = ((lines[pairs + 1] - lines[pairs]) >> 8) * weight[rows, None] + lines[pairs]
        values >>= 8
        yield rows, values


def _enlarge_whole(padded: np.ndarray, size: int, left: np.ndarray, weight: np.ndarray, band: int):
    """:func:`_enlarge` when ``size`` is a whole multiple k of n, without gathers.

    The outputs then fall in runs of k, one run per pair of neighbouring source
    pixels, the p-th output of every run at the same weight (:func:`_runs`).
    ``padded`` is the source with its edge pixels repeated; ``left`` and
    ``weight`` are each output's left source pixel in ``padded`` and the weight
    of the right one, in 1/256ths. Every source row is enlarged across at once
    (a quarter of the work at 1024 from 256), then down a band at a time.
    """
    n = padded.shape[0] - 2
    k = size // n
    shared = int(np.argmax(left != left[0]))  # the first run's outputs inside the image
    phases = weight[shared : shared + k]
    start = left[0] * k + k - shared  # output j is number j + start of the runs laid end to end
    across = np.empty((n + 2, (n + 1) * k), np.int32)
    _runs(padded[:, :-1], padded[:, 1:], phases, across, axis=1)
    lines = across[:, start : start + size]  # the image's columns
    lines >>= 8
    down = np.empty(((band // k + 2) * k, size), np.int32)
    for top in range(0, size, band):
        rows = slice(top, min(top + band, size))
        first = (top + start) // k  # the band's first source pair is (first, first + 1), in padded rows
        pairs = (rows.stop - 1 + start) // k + 1 - first
        _runs(lines[first : first + pairs], lines[first + 1 : first + pairs + 1], phases, down[: pairs * k], axis=0)
        values = down[top + start - first * k :][: rows.stop - top]
        values >>= 8
        yield rows, values


def _runs(low: np.ndarray, high: np.ndarray, phases: np.ndarray, out: np.ndarray, axis: int) -> None:
    """Interpolate k = len(phases) values between each pair of neighbours ``low``, ``high`` (int32), times 256.

    Value p of pair i, at index i * k + p of ``out`` along ``axis`` (0 or 1), is
    ``(high - low) * phases[p] + low * 256 + 128``: weights in 1/256ths, plus
    half a step so that a shift right by 8 rounds half up. Built up one value
    from the last, adding (high - low) times the difference of their weights,
    exact in integers: at 1024 from 256 the weights (32, 96, 160, 224) differ
    by one step, so each value after the first costs one addition.
    """
    difference = high - low
    k = len(phases)
    value = out[0::k] if axis == 0 else out[:, 0::k]
    np.multiply(difference, phases[0], out=value)
    value += low * 256 + 128
    increments = {}  # (high - low) times each difference of neighbouring weights
    for p in range(1, k):
        step = int(phases[p] - phases[p - 1])
        if step not in increments:
            increments[step] = difference * step
        after = out[p::k] if axis == 0 else out[:, p::k]
        np.add(value, increments[step], out=after)
        value = after


@dataclass(frozen=True)
class _Body:
    """Body coordinates of the anatomy grid, and the patient's build."""

    d: np.ndarray  # across from the midline, fraction of the side (+ = viewer's right)
    b: np.ndarray  # down from the top, fraction of the side
    width: float  # habitus: scales everything across
    inspiration: float  # shifts the diaphragm and ribs down (+) or up (-), fraction of the side
    pose: _Pose  # where the grid's body coordinates come from

    def window(self, d: tuple[float, float], b: tuple[float, float]) -> tuple[slice, slice]:
        """The grid's rows and columns that hold every point with body coordinates in ``d`` x ``b``, 2 pixels spare.

        A feature that is 0 outside such a box is drawn on this window alone: the same values, less work.
        """
        n = self.b.shape[0]
        corners = [self.pose.to_image(0.5 + x, y) for x in d for y in b]
        spans = [(min(c[i] for c in corners), max(c[i] for c in corners)) for i in (1, 0)]  # rows, columns
        return tuple(slice(min(n, max(0, math.floor(lo * n) - 2)), min(n, max(0, math.ceil(hi * n) + 2))) for lo, hi in spans)

    def __getitem__(self, window: tuple[slice, slice]) -> _Body:
        return _Body(self.d[window], self.b[window], self.width, self.inspiration, self.pose)  # replace() is slower


def _soft_tissue(body: _Body) -> tuple[np.ndarray, np.ndarray]:
    """Neck, shoulders and chest: (soft mask of the inside of the body, its attenuation).

    The attenuation grows towards the midline, where the body is thicker.
    """
    d, b = body.d, body.b
    half_width = (0.43 - 0.07 * ((b - 0.45) / 0.5) ** 2) * body.width
    shoulder_top = 0.06 + 1.3 * np.clip(np.abs(d) - 0.08 * body.width, 0, np.inf) ** 2  # both bounds: see _exp_neg
    chest = np.minimum(half_width - np.abs(d), b - shoulder_top)
    neck = np.clip(0.085 * body.width - np.abs(d), -np.inf, 1.0)
    inside = _soft(np.maximum(chest, neck), 0.006)
    depth = np.sqrt(np.clip(1 - (d / half_width) ** 2, 0, 1))
    return inside, inside * (0.3 + 0.3 * depth)


def _lungs(body: _Body, effusion: int, rng: np.random.Generator) -> list[np.ndarray]:
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
        lung = _soft(1 - shape, 0.06) * _soft(dome - b, 0.006)
        if side == effusion:
            # A meniscus climbing laterally: the costophrenic angle is blunted.
            level = dome_base - rng.uniform(0.05, 0.15) - 0.06 * np.clip(side * across, -1, 1)
            lung = lung * (1 - 0.9 * _soft(b - level, 0.012))
        lungs.append(np.zeros_like(body.b))
        lungs[-1][field] = lung
    return lungs


def _heart(body: _Body, scale: float) -> np.ndarray:
    """The heart as a soft mask: an ellipse sitting on the diaphragm, apex tilted to the patient's left."""
    centre = (0.04 * body.width, 0.68 + body.inspiration)
    reach = 1.1 * max(0.16 * body.width, 0.13) * scale  # the mask is 0 beyond 1.09 radii
    window = body.window((centre[0] - reach, centre[0] + reach), (centre[1] - reach, centre[1] + reach))
    part = body[window]
    x, y = part.d - centre[0], part.b - centre[1]
    cos, sin = _cos_sin(math.radians(20))
    ex = (x * cos + y * sin) / (0.16 * body.width * scale)
    ey = (-x * sin + y * cos) / (0.13 * scale)
    heart = np.zeros_like(body.b)
    heart[window] = _soft(1 - (ex**2 + ey**2), 0.12)
    return heart


def _aortic_knob(body: _Body) -> np.ndarray:
    """A disc 0.032 across, at (0.045 * width, 0.33); 0 beyond 0.041 of its centre."""
    return _soft(0.032 - np.sqrt((body.d - 0.045 * body.width) ** 2 + (body.b - 0.33) ** 2), 0.006)


def _bones(body: _Body, inside: np.ndarray, rib_amp: float, ap: bool) -> np.ndarray:
    """Spine with vertebrae, ribs, clavicles (and scapulae on AP films); minus the tracheal air.

    Each is drawn only on the window of the grid that holds it (all are 0 outside).
    """
    att = np.zeros_like(body.b)
    w = body.width
    spine = body.window((-0.035 * w - 0.01, 0.035 * w + 0.01), (0.04, 2.0))
    d, b = body[spine].d, body[spine].b
    period = b / 0.052
    period -= np.round(period)  # -0.5 to 0.5 over each vertebra: 1 - 8 period**2 is a cosine's shape
    vertebrae = 0.85 + 0.15 * _soft(1.6 - 8 * period**2, 0.3)
    att[spine] += 0.06 * _soft(0.035 * w - np.abs(d), 0.006) * vertebrae * _soft(b - 0.08, 0.02)
    # Posterior ribs leave the spine level, then curve down laterally; ten, evenly spaced.
    ribs = body.window((-0.39 * w, 0.39 * w), (body.inspiration + 0.05, body.inspiration + 0.92))
    d, b = body[ribs].d, body[ribs].b
    lateral = np.abs(d) / w
    ribcage = _soft(lateral - 0.04, 0.01) * _soft(0.37 - lateral, 0.01) * inside[ribs]
    phase = (b - body.inspiration - 0.15 - 1.2 * np.clip(lateral - 0.05, 0, np.inf) ** 2) / 0.056
    nearest = np.round(phase)
    posterior = _exp_neg(((phase - nearest) * 0.056 / 0.011) ** 2) * (nearest >= 0) * (nearest <= 9)
    # Anterior ribs run from the side down towards the sternum; fainter (cartilage).
    phase = (b - body.inspiration - 0.2 - 0.5 * (0.37 - lateral)) / 0.075
    nearest = np.round(phase)
    anterior = _exp_neg(((phase - nearest) * 0.075 / 0.013) ** 2) * (nearest >= 0) * (nearest <= 5)
    att[ribs] += rib_amp * ribcage * (posterior + 0.35 * anterior * _soft(lateral - 0.12, 0.02))
    clavicles = body.window((-0.34 * w, 0.34 * w), (0.06, 0.25))
    d, b = body[clavicles].d, body[clavicles].b
    lateral = np.abs(d) / w
    clavicle = 0.19 - 0.22 * (lateral - 0.035) + 0.5 * (lateral - 0.035) * (lateral - 0.3)
    along_clavicle = _soft(lateral - 0.035, 0.005) * _soft(0.32 - lateral, 0.01)
    att[clavicles] += 0.09 * _exp_neg(((b - clavicle) / 0.012) ** 2) * along_clavicle
    if ap:  # on AP films the scapulae are not rotated out of the lung fields
        for s in (-1, 1):
            scapula = body.window((s * 0.36 * w - 0.085, s * 0.36 * w + 0.085), (0.13, 0.51))
            d, b = body[scapula].d, body[scapula].b
            shape = np.sqrt((np.abs(d) / w - 0.36) ** 2 + ((b - 0.32) / 2.5) ** 2)
            att[scapula] += 0.04 * _soft(0.06 - shape, 0.01) * inside[scapula]
    # The trachea: a dark air column down the midline to the carina.
    trachea = body.window((-0.021, 0.021), (-1.0, 0.356))
    d, b = body[trachea].d, body[trachea].b
    att[trachea] -= 0.06 * _soft(0.014 - np.abs(d), 0.004) * _soft(0.34 - b, 0.01) * inside[trachea]
    return att


def _sample_pixel(rng: np.random.Generator, weights: np.ndarray, n: int) -> tuple[float, float]:
    """A pixel drawn with probability proportional to ``weights``; its centre as image fractions (v, u)."""
    # Weights in integers (2**-20 steps, none: uniform), so the cumulative sum is exact.
    counts = np.rint(weights.ravel() * 2**20).astype(np.int64)
    cumulative = np.cumsum(counts if counts.any() else np.ones_like(counts))
    row, col = divmod(int(np.searchsorted(cumulative, rng.integers(cumulative[-1]), side="right")), n)
    return (row + 0.5) / n, (col + 0.5) / n


def _opacity_sides(rng: np.random.Generator, count: int) -> list[int]:
    """Which lung (-1 viewer's left, +1 viewer's right) each of ``count`` opacities lies in.

    Two opacities are usually one per lung, as in RSNA.
    """
    if count == 0:
        return []
    if count == 2 and rng.random() < 0.85:
        return [int(s) for s in rng.permutation([-1, 1])]
    return [int(s) for s in rng.choice([-1, 1], size=count)]


def _opacity(
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
    cy, cx = _sample_pixel(rng, lung * ((b > top) & (b < bottom)), n)
    # Nominal extents (fractions of the side), chosen so that the boxes, clipped to the lung,
    # come out like RSNA's (mean 21 % x 33 % of the side); stacked opacities in one lung are shorter.
    half_w, half_h = rng.uniform(0.2, 0.38) / 2, rng.uniform(0.26, 0.56) / 2 / math.sqrt(m)
    r2 = ((u - cx) / half_w) ** 2 + ((v - cy) / half_h) ** 2
    envelope = _exp_neg(1.2 * r2 * np.sqrt(r2))  # flat-topped, 0.3 at the nominal half-width
    # The texture matters only where the envelope and the lung are not 0: its wide blur is costly.
    window = _support((envelope > 0) & (lung > 0))
    texture = _smooth_noise(rng, n, 0.025 * n, window)
    cloud = np.zeros_like(lung)
    cloud[window] = envelope[window] * np.clip(0.65 + 0.45 * texture, 0, 1.2) * lung[window]
    return cloud


def _bounding_box(cloud: np.ndarray, size: int) -> Box:
    """Box around where ``cloud`` exceeds a quarter of its peak, in pixels of the ``size`` image."""
    rows, cols = np.nonzero(cloud > cloud.max() / 4)
    scale = size / cloud.shape[0]
    x0, x1 = math.floor(cols.min() * scale), math.ceil((cols.max() + 1) * scale)
    y0, y1 = math.floor(rows.min() * scale), math.ceil((rows.max() + 1) * scale)
    return Box(x=float(x0), y=float(y0), width=float(x1 - x0), height=float(y1 - y0))


def _devices(rng: np.random.Generator, pose: _Pose, size: int) -> np.ndarray:
    """Tubes, lines and ECG leads: thin bright lines drawn at full resolution, uint8 (255: DEVICE_ATTENUATION)."""
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


# --------------------------------------------------------------------------- DICOM


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    sex: str = "M",
    age: int = 50,
    view: str = "PA",
    pixel_spacing: float = 0.143,
    jpeg: bool = True,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
) -> None:
    """Write one single-frame greyscale CR DICOM, with RSNA's attributes.

    ``pixels``: 2-D uint8 (``bits_stored`` <= 8) or uint16 (``bits_stored`` > 8).
    ``jpeg=True`` writes JPEG Baseline (quality 90, 8-bit only), like RSNA;
    ``jpeg=False`` writes uncompressed Explicit VR Little Endian.
    ``pixel_spacing`` is in mm per pixel. PatientAge is written as RSNA does, a
    plain number of years ("51"), not the standard "051Y". Every UID is derived
    from ``patient_id``, and the study date is RSNA's placeholder 19010101, so
    the same arguments always give the same bytes.

    The elements are encoded here (:func:`_element`) rather than through a
    pydicom Dataset, which took as long as the JPEG itself; the bytes are
    pydicom's, file meta included (tests/test_phantom.py compares them).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"{path}: pixels must be a 2-D greyscale array, got shape {pixels.shape}")
    want = np.uint8 if bits_stored <= 8 else np.uint16
    if pixels.dtype != want:
        raise ValueError(f"{path}: bits_stored={bits_stored} needs {np.dtype(want).name} pixels, got {pixels.dtype}")
    if bits_stored < 8 * pixels.itemsize and int(pixels.max(initial=0)) >= 2**bits_stored:  # else it cannot
        raise ValueError(f"{path}: pixel values reach {pixels.max()}, beyond bits_stored={bits_stored}")
    if jpeg and bits_stored != 8:
        raise ValueError(f"{path}: JPEG Baseline holds 8-bit pixels only; pass jpeg=False for bits_stored={bits_stored}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=[patient_id, kind])

    instance = uid("instance")
    if jpeg:
        buffer = BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        syntax = JPEGBaseline8Bit
        pixel_data = _element(0x7FE00010, "OB", encapsulate([buffer.getvalue()]), fragments=True)
    else:
        native = np.ascontiguousarray(pixels, dtype="<u2" if bits_stored > 8 else np.uint8).tobytes()
        syntax, pixel_data = ExplicitVRLittleEndian, _element(0x7FE00010, "OW" if bits_stored > 8 else "OB", native)
    meta = b"".join(
        _element(tag, vr, value)
        for tag, vr, value in (
            (0x00020001, "OB", b"\0\1"),  # FileMetaInformationVersion
            (0x00020002, "UI", CR_IMAGE_STORAGE),  # MediaStorageSOPClassUID
            (0x00020003, "UI", instance),  # MediaStorageSOPInstanceUID
            (0x00020010, "UI", syntax),  # TransferSyntaxUID
            (0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID),  # ImplementationClassUID
            (0x00020013, "SH", f"PYDICOM {'.'.join(pydicom.__version_info__)}"),  # ImplementationVersionName
        )
    )
    spacing = f"{pixel_spacing:.6g}"
    attributes = [
        (0x00080005, "CS", "ISO_IR 100"),  # SpecificCharacterSet
        (0x00080016, "UI", CR_IMAGE_STORAGE),  # SOPClassUID
        (0x00080018, "UI", instance),  # SOPInstanceUID
        (0x00080020, "DA", "19010101"),  # StudyDate
        (0x00080030, "TM", "000000.00"),  # StudyTime
        (0x00080050, "SH", ""),  # AccessionNumber
        (0x00080060, "CS", "CR"),  # Modality
        (0x00080064, "CS", "WSD"),  # ConversionType
        (0x00080090, "PN", ""),  # ReferringPhysicianName
        (0x0008103E, "LO", f"view: {view}"),  # SeriesDescription
        (0x00100010, "PN", patient_id),  # PatientName
        (0x00100020, "LO", patient_id),  # PatientID
        (0x00100030, "DA", ""),  # PatientBirthDate
        (0x00100040, "CS", sex),  # PatientSex
        (0x00101010, "AS", str(age)),  # PatientAge, RSNA's "51" rather than the standard "051Y"
        (0x00180015, "CS", "CHEST"),  # BodyPartExamined
        (0x00185101, "CS", view),  # ViewPosition
        (0x0020000D, "UI", uid("study")),  # StudyInstanceUID
        (0x0020000E, "UI", uid("series")),  # SeriesInstanceUID
        (0x00200010, "SH", ""),  # StudyID
        (0x00200011, "IS", "1"),  # SeriesNumber
        (0x00200013, "IS", "1"),  # InstanceNumber
        (0x00200020, "CS", ""),  # PatientOrientation
        (0x00280002, "US", 1),  # SamplesPerPixel
        (0x00280004, "CS", photometric),  # PhotometricInterpretation
        (0x00280010, "US", pixels.shape[0]),  # Rows
        (0x00280011, "US", pixels.shape[1]),  # Columns
        (0x00280030, "DS", f"{spacing}\\{spacing}"),  # PixelSpacing, row and column
        (0x00280100, "US", 8 if bits_stored <= 8 else 16),  # BitsAllocated
        (0x00280101, "US", bits_stored),  # BitsStored
        (0x00280102, "US", bits_stored - 1),  # HighBit
        (0x00280103, "US", 0),  # PixelRepresentation
    ]
    if jpeg:
        attributes += [(0x00282110, "CS", "01"), (0x00282114, "CS", "ISO_10918_1")]  # LossyImageCompression(Method)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")  # preamble and prefix
        out.write(_element(0x00020000, "UL", len(meta)) + meta)  # the file meta group, after its length
        out.write(b"".join(_element(tag, vr, value) for tag, vr, value in attributes))
        out.write(pixel_data)


# Value representations whose length takes 4 bytes (after 2 reserved) in explicit VR little endian.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})


def _element(tag: int, vr: str, value: str | int | bytes, fragments: bool = False) -> bytes:
    """One data element in explicit VR little endian, as pydicom writes it.

    Text is encoded in ISO 8859-1 (the SpecificCharacterSet written) and padded
    to an even length, UIDs with a NUL, other text with a space; US and UL
    values are integers, OB and OW ones bytes (padded with a NUL). With
    ``fragments``, ``value`` is encapsulated pixel data, written with an
    undefined length and closed by a sequence delimiter.
    """
    if vr in ("US", "UL"):
        value = value.to_bytes(2 if vr == "US" else 4, "little")
    elif isinstance(value, str):
        value = value.encode("latin-1")
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "OW") else b" "
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + vr.encode()
    if fragments:
        return head + b"\0\0\xff\xff\xff\xff" + value + b"\xfe\xff\xdd\xe0\0\0\0\0"
    if vr in _LONG_VRS:
        return head + b"\0\0" + len(value).to_bytes(4, "little") + value
    return head + len(value).to_bytes(2, "little") + value


# --------------------------------------------------------------------------- dataset


def generate(raw_dir: Path, patients: int, size: int = 1024, seed: int = 42, workers: int = 0) -> None:
    """Write raw_dir/stage_2_train_images/<patientId>.dcm, raw_dir/stage_2_train_labels.csv,
    raw_dir/stage_2_detailed_class_info.csv. workers=0 means one process per CPU core.

    ``raw_dir`` is replaced as a whole, atomically: a crash leaves the old one (or none).
    Box coordinates are pixels of the ``size`` x ``size`` images.
    """
    drawn = draw_patients(patients, seed)
    workers = workers or os.cpu_count() or 1
    with atomic_dir(raw_dir) as tmp:
        images = tmp / "stage_2_train_images"
        images.mkdir()
        write_one = functools.partial(_write_patient, size=size, images=images)
        if workers == 1 or patients < 2:
            boxes = list(map(write_one, drawn))
        else:
            with multiprocessing.Pool(workers, initializer=_keep_freed_memory) as pool:
                boxes = pool.map(write_one, drawn, chunksize=max(1, patients // (workers * 8)))
        labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]
        for patient, patient_boxes in zip(drawn, boxes):
            if not patient_boxes:
                labels.append(f"{patient.patient_id},,,,,0")
                classes.append(f"{patient.patient_id},{patient.class_name}")
            for box in patient_boxes:
                labels.append(f"{patient.patient_id},{box.x},{box.y},{box.width},{box.height},1")
                classes.append(f"{patient.patient_id},{patient.class_name}")
        (tmp / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n", newline="\n")
        (tmp / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n", newline="\n")


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep the memory this process frees, rather than give it back to the kernel at once.

    Each image allocates and frees arrays of hundreds of kilobytes. Left to itself,
    glibc hands much of that memory back and faults it in again, page by page, at
    the next allocation: a thousand or more page faults per 1024-pixel image, a
    tenth of its time. Fixed thresholds keep arrays under 16 MiB on the heap and
    up to 64 MiB of it free. Called in the worker processes only, which exit when
    done; nothing where the C library has no mallopt.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, 16 << 20)  # both set: setting one alone makes things worse (no adaptive thresholds)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)


# mallopt's parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _write_patient(patient: Patient, size: int, images: Path) -> tuple[Box, ...]:
    """Render and write one patient's DICOM (runs in a worker); return its boxes."""
    rendering = render(patient, size)
    write_dicom(
        images / f"{patient.patient_id}.dcm",
        rendering.pixels,
        patient_id=patient.patient_id,
        sex=patient.sex,
        age=patient.age,
        view=patient.view,
        pixel_spacing=patient.pixel_spacing,
    )
    return rendering.boxes


def preview(path: Path, count: int = 8, size: int = 512, seed: int = 0) -> None:
    """Save a PNG grid of ``count`` phantom images (4 per row), boxes in red, class on top: for tuning by eye.

    Shows the three classes in turn, so a sheet always has positives to look at.
    """
    patients = draw_patients(40 * count, seed)
    by_class = [[p for p in patients if p.class_name == c] for c in (LUNG_OPACITY, NOT_NORMAL, NORMAL)]
    shown = [by_class[i % 3][i // 3] for i in range(count)]
    columns = min(count, 4)
    sheet = Image.new("RGB", (columns * size, math.ceil(count / columns) * size))
    for i, patient in enumerate(shown):
        rendering = render(patient, size)
        tile = Image.fromarray(rendering.pixels).convert("RGB")
        draw = ImageDraw.Draw(tile)
        for box in rendering.boxes:
            draw.rectangle([box.x, box.y, box.x + box.width, box.y + box.height], outline=(255, 0, 0), width=2)
        draw.text((4, 4), f"{patient.class_name} | {patient.view} | {', '.join(patient.findings)}", fill=(255, 255, 0))
        sheet.paste(tile, ((i % columns) * size, (i // columns) * size))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def radiographs_without_lungs(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` phantom chests drawn without air in the lungs (``n x size x size`` uint8): images no training
    image resembles, for the out-of-distribution guard's unlike set."""
    return np.stack([render(p, size, lung_darkness=0.0).pixels for p in draw_patients(n, seed)])

"""The film: attenuation on the anatomy grid to a uint8 radiograph, enlarged, grained and exposed in integers."""

from __future__ import annotations

import math

import numpy as np

from pneumonia.data.phantom.anatomy import Pose
from pneumonia.data.phantom.exact_math import blur
from pneumonia.data.phantom.findings import draw_devices
from pneumonia.data.phantom.patients import Patient

# The attenuation of the brightest device pixel (leads and tubes are drawn at 160-230 of 255).
DEVICE_ATTENUATION = 0.35

# The grain is a random byte (-128 to 127, uniform): this s.d., about 73.9 steps.
GRAIN_SD = math.sqrt((256**2 - 1) / 12)


def expose(att: np.ndarray, rng: np.random.Generator, patient: Patient, pose: Pose, size: int) -> np.ndarray:
    """The radiograph of attenuation ``att`` (the anatomy grid, n x n): uint8 ``size`` x ``size``, MONOCHROME2.

    AP portables are blurrier; exposure, contrast and noise vary per image; a
    patient with devices gets them drawn at full size (:func:`draw_devices`). The
    draws from ``rng`` continue :func:`~pneumonia.data.phantom.render.render`'s.
    """
    ap = patient.view == "AP"
    n = att.shape[0]
    att = blur(att, rng.uniform(0.9, 1.4) * (1.4 if ap else 1.0) * n / 256)
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
        devices = draw_devices(rng, pose, size), device_steps
    raw = rng.bit_generator.random_raw(-(-size * size // 8)).astype("<u8", copy=False)
    grain = raw.view(np.int8)[: size * size].reshape(size, size)
    return _develop(levels, size, film, grain, devices)


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

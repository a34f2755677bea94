"""Overlay PNGs: an X-ray with its class activation map as a heat overlay, predicted and ground-truth boxes.

The heat colours run black-red-yellow-white with opacity rising with the map's
value, so the cold parts of the map leave the anatomy visible. Predicted boxes
are cyan, ground-truth boxes green.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumonia.core.atomic import atomic_path

PREDICTED_COLOUR = (0, 210, 255)
TRUTH_COLOUR = (60, 255, 60)
MAX_OPACITY = 0.55  # of the heat overlay where the map peaks
OVERLAY_ROLES = ("tp", "fp", "fn")  # true positive, false positive, miss


def overlay_file(role: str, rank: int) -> str:
    """An evaluation overlay's file name, by role and rank (``tp_01.png``), never by patient: stable across runs."""
    return f"{role}_{rank:02d}.png"

# "hot"-like colormap: (position in [0, 1], RGB); linear in between.
_HEAT_STOPS = ((0.0, (0, 0, 0)), (0.4, (230, 0, 0)), (0.75, (255, 210, 0)), (1.0, (255, 255, 230)))


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 RGB, shape ``values.shape + (3,)``."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    positions = [p for p, _ in _HEAT_STOPS]
    channels = [np.interp(values, positions, [c[k] for _, c in _HEAT_STOPS]) for k in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    predicted_boxes: Sequence[Sequence[float]],
    gt_boxes: Sequence[Sequence[float]] | None,
    probability: float | None,
    path: str | Path,
    title: str = "",
    display_size: int = 512,
    box_scores: Sequence[float] | None = None,
    notes: Sequence[str] = (),
) -> None:
    """Write ``path`` (PNG, ``display_size`` pixels wide): ``image`` with ``cam`` as heat and the boxes.

    ``image``: uint8 (H, W) greyscale. ``cam``: (H, W), any non-negative scale; it is
    divided by its maximum. Boxes: (x, y, width, height) in pixels of ``image``;
    ``gt_boxes=None`` (no ground truth known, as in predict) also drops it from the legend.
    ``probability`` (None: not scored) and ``title`` are written in the top-left corner, each of ``notes``
    on a line below them, each predicted box's score from ``box_scores`` at its corner, a legend at the bottom.
    """
    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape:
        raise ValueError(f"cam shape {cam.shape} differs from image shape {image.shape}")
    height, width = image.shape
    scale = display_size / width
    size = (display_size, max(1, round(height * scale)))

    canvas = _heat_canvas(image, cam).resize(size, Image.BILINEAR)

    draw = ImageDraw.Draw(canvas)
    line = max(2, display_size // 256)
    for boxes, colour in ((gt_boxes or (), TRUTH_COLOUR), (predicted_boxes, PREDICTED_COLOUR)):
        for x, y, w, h in boxes:
            draw.rectangle([x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=colour, width=line)

    font = _font(max(10, display_size // 32))
    small = _font(max(9, display_size // 40))
    for (x, y, w, h), score in zip(predicted_boxes, box_scores or ()):
        _label(draw, (round(x * scale) + line + 2, round((y + h) * scale) - line - 2 - display_size // 40),
               f"{score:.2f}", PREDICTED_COLOUR, small)
    head = "not scored" if probability is None else f"p(pneumonia) = {probability:.3f}"
    _label(draw, (6, 6), head + (f"   {title}" if title else ""), (255, 255, 255), font)
    top = draw.textbbox((6, 6), head, font=font)[3] + 8
    for note in notes:
        _label(draw, (6, top), note, (255, 230, 120), small)
        top = draw.textbbox((6, top), note, font=small)[3] + 7
    legend = [("predicted", PREDICTED_COLOUR)] + ([("ground truth", TRUTH_COLOUR)] if gt_boxes is not None else [])
    _legend(draw, legend, size[1] - 6, line, font)

    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _heat_canvas(image: np.ndarray, cam: np.ndarray) -> Image.Image:
    """The greyscale image with the map, divided by its maximum, blended over it as heat (at the image's size)."""
    peak = float(cam.max(initial=0.0))
    heat = cam / peak if peak > 0 else np.zeros_like(cam)
    alpha = (MAX_OPACITY * heat)[..., None]
    grey = np.repeat(image.astype(np.float32)[..., None], 3, axis=-1)
    blended = (1 - alpha) * grey + alpha * heat_colours(heat).astype(np.float32)
    return Image.fromarray(blended.round().astype(np.uint8))


def _legend(draw: ImageDraw.ImageDraw, entries: list[tuple[str, tuple]], bottom: int, line: int, font) -> None:
    """A box outline and a name per entry, left to right along the bottom edge."""
    x = 6
    for name, colour in entries:
        text_box = draw.textbbox((0, 0), name, font=font)
        text_height = text_box[3] - text_box[1]
        top = bottom - text_height - 6
        draw.rectangle([x - 3, top - 3, x + 24 + 6 + text_box[2] + 3, bottom], fill=(0, 0, 0))
        draw.rectangle([x, top + 1, x + 24, bottom - 4], outline=colour, width=line)
        draw.text((x + 30, top - text_box[1]), name, fill=colour, font=font)
        x += 24 + 6 + text_box[2] + 16


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, colour, font) -> None:
    """Text on a black background, readable over any part of the image."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle([left - 3, top - 3, right + 3, bottom + 3], fill=(0, 0, 0))
    draw.text(xy, text, fill=colour, font=font)

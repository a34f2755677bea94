"""Image grids for `dvc plots show`: converted samples and augmented training inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pneumonia.core.atomic import atomic_path

TILE = 192  # pixels per thumbnail: small arrays are upscaled so the boxes stay readable
CAPTION = 14


def save_grid(
    path: str | Path,
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    boxes: Sequence[Sequence[tuple[float, float, float, float]]] | None = None,
    columns: int = 4,
) -> None:
    """Write a PNG grid of greyscale ``images`` (uint8, or float scaled to their own range).

    ``boxes[i]`` are (x, y, width, height) in pixels of ``images[i]``; they are drawn in red.
    """
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * TILE, rows * (TILE + CAPTION)), "black")
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        left, top = (i % columns) * TILE, (i // columns) * (TILE + CAPTION)
        tile = Image.fromarray(_to_uint8(image)).resize((TILE, TILE), Image.BILINEAR)
        canvas.paste(tile.convert("RGB"), (left, top + CAPTION))
        draw.text((left + 2, top), captions[i], fill="white")
        scale = TILE / image.shape[1]
        for x, y, w, h in (boxes[i] if boxes else ()):
            x0, y0 = left + x * scale, top + CAPTION + y * scale
            draw.rectangle([x0, y0, x0 + w * scale, y0 + h * scale], outline="red", width=2)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    low, high = float(image.min()), float(image.max())
    return np.uint8(np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255)

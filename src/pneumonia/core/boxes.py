"""Boxes between the ORIGINAL image's pixels (the RSNA labels, the DICOM's rows x columns) and an array's.

The one place where a box is scaled: the converted arrays, the overlays, the detector's targets and its
decoded boxes all go through these. ``(x, y, width, height)`` is the RSNA labels' form; the detector
works in ``(x0, y0, x1, y1)`` corners (torchvision's ``xyxy``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

XYWH = tuple[float, float, float, float]


def to_array_pixels(box: Sequence[float], rows: int, columns: int, size: int) -> XYWH:
    """One (x, y, width, height) box from pixels of a ``rows x columns`` image to those of a ``size`` square."""
    sx, sy = size / columns, size / rows
    x, y, w, h = box
    return (x * sx, y * sy, w * sx, h * sy)


def boxes_to_input(boxes: Sequence[Sequence[float]], rows: int, columns: int, image_size: int) -> np.ndarray:
    """(x, y, width, height) boxes in ORIGINAL pixels -> ``B x 4`` (x0, y0, x1, y1) in input pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = image_size / columns, image_size / rows
    return np.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 0] + b[:, 2]) * sx, (b[:, 1] + b[:, 3]) * sy], axis=1)


def boxes_to_original(boxes: np.ndarray, rows: int, columns: int, image_size: int) -> np.ndarray:
    """``B x 4`` (x0, y0, x1, y1) in input pixels -> ``B x 4`` (x, y, width, height) in ORIGINAL pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = columns / image_size, rows / image_size
    return np.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 2] - b[:, 0]) * sx, (b[:, 3] - b[:, 1]) * sy], axis=1)

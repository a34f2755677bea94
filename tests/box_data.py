"""Tiny detection data for tests: noisy images with bright rectangles and their manifest rows."""

import numpy as np

from pneumonia.data.manifest import ManifestRow


def square_rows(images: np.ndarray, boxes_per_image, split: str, original: int) -> list[ManifestRow]:
    """Manifest rows of square ``original``-pixel images with ``boxes_per_image`` (original pixels, xywh)."""
    return [
        ManifestRow(patient_id=f"{split}{i:03d}", split=split, row=i, label=int(bool(boxes)),
                    boxes=tuple(tuple(map(float, b)) for b in boxes), detailed_class="", view="PA", sex="F", age=50,
                    rows=original, columns=original, pixel_spacing_mm=0.5 if i % 2 else None)
        for i, boxes in enumerate(boxes_per_image)
    ]


def rectangles(n: int, size: int, original: int, rng) -> tuple[np.ndarray, list]:
    """Dark noisy images; two thirds carry one bright rectangle (its box in original pixels), a third none."""
    images = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
    boxes = []
    for i in range(n):
        if i % 3 == 2:
            boxes.append([])
            continue
        w, h = rng.integers(10, 24, size=2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        images[i, y : y + h, x : x + w] = 220
        scale = original / size
        boxes.append([(x * scale, y * scale, w * scale, h * scale)])
    return images, boxes

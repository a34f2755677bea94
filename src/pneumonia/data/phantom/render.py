"""One phantom patient's radiograph: :func:`render` draws the chest, its opacities and the film."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pneumonia.data.phantom.anatomy import (
    Body, Pose, add_breasts, add_vessel_markings, aortic_knob, bones, heart, lung_fields, soft_tissue,
)
from pneumonia.data.phantom.exact_math import soft
from pneumonia.data.phantom.film import expose
from pneumonia.data.phantom.findings import Box, bounding_box, opacity, opacity_sides, sample_pixel
from pneumonia.data.phantom.patients import Patient

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

# How much the air in the lungs darkens them, in attenuation units (soft tissue is 0.3-0.6).
LUNG_DARKNESS = 0.38

# Anatomy is synthesised at this resolution (pixels), then upscaled: speed.
ANATOMY_SIZE = 256


@dataclass(frozen=True)
class Rendering:
    """A phantom radiograph: ``pixels`` is a uint8 (size, size) array, MONOCHROME2 (bright = dense)."""

    pixels: np.ndarray
    boxes: tuple[Box, ...]


def render(
    patient: Patient, size: int, opacity_contrast: float = OPACITY_CONTRAST, lung_darkness: float = LUNG_DARKNESS
) -> Rendering:
    """Draw ``patient``'s radiograph at ``size`` x ``size`` pixels, with its opacity boxes.

    Deterministic in ``patient.image_seed``; ``opacity_contrast`` changes only how
    bright the opacities are (0 draws the same image without them), not where;
    ``lung_darkness`` 0 draws a chest without air in its lungs (an image unlike any
    training image, for the out-of-distribution guard's unlike set).
    The image is built as an attenuation map (0 = air, about 1 = dense) on the
    anatomy grid, then enlarged, grained and exposed at full size in integers
    (:func:`~pneumonia.data.phantom.film.expose`). One random stream serves the
    whole image, drawn from in a fixed order: the pose, the build, the chest, the
    opacities, then the film.
    """
    rng = np.random.default_rng(patient.image_seed)
    n = min(size, ANATOMY_SIZE)
    ap = patient.view == "AP"
    pose = Pose(
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
    body = Body(
        d=a - 0.5,
        b=b,
        width=rng.uniform(0.9, 1.08),  # habitus
        inspiration=rng.uniform(-0.03, 0.03) + (0.025 if ap else 0.0),  # AP films: supine, shallower breath
        pose=pose,
    )
    att, lungs, see_through = _chest(rng, patient, body, u, v, lung_darkness)

    # Pneumonia: soft, cloudy opacities in the mid and lower zones, filling in the lung's darkness.
    boxes = []
    sides = opacity_sides(rng, patient.opacities)
    for k, side in enumerate(sides):
        same_side = [i for i, s in enumerate(sides) if s == side]
        band = same_side.index(k), len(same_side)
        cloud = opacity(rng, lungs[0 if side < 0 else 1] * see_through, b, u, v, band, n)
        att += opacity_contrast * lung_darkness * rng.uniform(0.7, 1.3) * cloud
        boxes.append(bounding_box(cloud, size))
    return Rendering(pixels=expose(att, rng, patient, pose, size), boxes=tuple(boxes))


def _chest(
    rng: np.random.Generator, patient: Patient, body: Body, u: np.ndarray, v: np.ndarray, lung_darkness: float
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """The chest without its opacities: (attenuation, the two lung fields, how much of them the heart leaves seen).

    On the anatomy grid; ``u`` and ``v`` are its image fractions (a row and a column).
    Soft tissue, lungs (an effusion's fluid among them), heart and aortic knob,
    vessel markings, bones, breasts and a nodule, as the patient has them.
    """
    n = body.b.shape[0]
    ap = patient.view == "AP"
    heart_scale = rng.uniform(0.92, 1.08) * (1.12 if ap else 1.0)  # AP magnifies the heart
    if "cardiomegaly" in patient.findings:
        heart_scale *= rng.uniform(1.3, 1.45)

    inside, tissue = soft_tissue(body)
    lungs = lung_fields(body, effusion=int(rng.choice([-1, 1])) if "effusion" in patient.findings else 0, rng=rng)
    # Where the heart or aortic knob lies in front of the lung, the lung hardly shows.
    shadow = heart(body, heart_scale)
    knob = body.window((0.045 * body.width - 0.042, 0.045 * body.width + 0.042), (0.288, 0.372))
    shadow[knob] = np.maximum(shadow[knob], aortic_knob(body[knob]))
    see_through = 1 - 0.9 * shadow
    lung = np.maximum(*lungs) * see_through
    att = 0.03 + tissue - lung_darkness * lung

    add_vessel_markings(att, rng, body, lung, n)
    att += bones(body, inside, rib_amp=rng.uniform(0.03, 0.055), ap=ap)
    if patient.sex == "F":
        add_breasts(att, body, inside)
    if "nodule" in patient.findings:
        cy, cx = sample_pixel(rng, lung * (body.b > 0.25), n)
        att += 0.5 * lung_darkness * soft(rng.uniform(0.012, 0.025) - np.sqrt((u - cx) ** 2 + (v - cy) ** 2), 0.003)
    return att, lungs, see_through

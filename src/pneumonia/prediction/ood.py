"""The out-of-distribution guard: how unlike the training images an image is, and when to refuse it.

Two checks, either refusing. Score: the Mahalanobis distance (Lee et al., NeurIPS 2018) of the image's pooled
feature vector, the classifier's last feature map averaged over its cells (the
vector its head weighs; ``K`` = 512 for ResNet18), from the train split's mean,
under the train split's covariance shrunk by Ledoit and Wolf (scikit-learn's
``LedoitWolf``: a few thousand images cannot estimate K x K entries unaided).
Chosen by measurement against the energy score and the classifier's own
confidence, which cannot tell a radiograph from a photograph the network scores
at p = 1.00 (see the README). The threshold is the ``quantile`` of val's
distances, so about ``1 - quantile`` of images like the training data are
refused. Beside it, an orientation and polarity check on the same features
(:func:`fit_guard` with ``turned_features``): on real radiographs the distance let
most inverted and turned chests through, whose pooled last-layer features are
still "a chest" (benchmarks/real_data.json). All of it, the mean and precision
matrix and the check's weights, travels in the predictor's model file.

The unlike set (:func:`unlike_images`) is what the evaluate stage reports the
catch rate on: made offline from what the installed packages ship and from the
val images themselves (see each kind in :data:`UNLIKE_KINDS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

DISTANCE_UNITS = "Mahalanobis distance of the classifier's pooled features from the train split's"

UNLIKE_KINDS = {
    "dicom_other_modality": "pydicom's bundled CT, MR, NM and ultrasound images (as if written as CR files)",
    "photograph": "natural photographs and scans shipped with scikit-image (skimage.data)",
    "noise": "uniform and Gaussian noise",
    "blank": "blank fields: black, mid-grey, white",
    "inverted": "val chest images, grey levels inverted",
    "rotated": "val chest images rotated by 90 degrees",
    "cropped": "one corner (a quarter of the side) of val chest images, enlarged to the whole image",
    "no_lungs": "phantom chests drawn without lungs (synthetic source only)",
}


@dataclass(frozen=True)
class OodGuard:
    """Mean (K), precision (K x K) of the train features; ``threshold`` on the distance, chosen on val.

    With ``upright`` (K weights) an orientation and polarity check runs beside the distance: the score
    ``features . upright + upright_bias`` (a logistic regression's, its standardisation folded in) of an upright
    chest in its normal polarity is high; an image scoring below ``upright_threshold`` is refused too. Model files
    from before the check have none (``upright`` None): the distance alone decides, as it did.
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    upright: np.ndarray | None = None
    upright_bias: float = 0.0
    upright_threshold: float = -np.inf

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of N x K pooled features."""
        centred = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nk,kl,nl->n", centred, self.precision, centred), 0.0))

    def upright_score(self, features: np.ndarray) -> np.ndarray:
        """The orientation check's score (N,): high for an upright chest in normal polarity; +inf without the check."""
        if self.upright is None:
            return np.full(len(features), np.inf)
        return np.asarray(features, np.float64) @ self.upright + self.upright_bias

    def unlike(self, features: np.ndarray) -> np.ndarray:
        return (self.distance(features) > self.threshold) | (self.upright_score(features) < self.upright_threshold)

    def why(self, distance: float, upright: float) -> str:
        """The one line a refused image's row carries: the check(s) it failed."""
        reasons = [reason(distance, self.threshold)] if distance > self.threshold else []
        if upright < self.upright_threshold:
            reasons.append(f"not an upright chest in normal polarity: orientation score {upright:.1f} < "
                           f"{self.upright_threshold:.1f} (turned, mirrored upside down or inverted grey levels?)")
        return "; ".join(reasons)


def fit_guard(train_features: np.ndarray, val_features: np.ndarray, quantile: float,
              turned_features: np.ndarray | None = None) -> OodGuard:
    """Gaussian fitted on train (Ledoit-Wolf shrinkage), threshold at val's ``quantile`` of distances.

    ``turned_features``: features of train images inverted or turned by 90, 180 or 270 degrees
    (:func:`turned_copies`); with them the orientation check is fitted too (train as it is against them), and
    each check refuses half of val's ``1 - quantile`` share, so that together they refuse about that share.
    """
    from sklearn.covariance import LedoitWolf

    check = turned_features is not None
    share = (1 - quantile) / 2 if check else 1 - quantile
    fit = LedoitWolf().fit(np.asarray(train_features, np.float64))
    draft = OodGuard(fit.location_, fit.precision_, np.inf, quantile)
    threshold = float(np.quantile(draft.distance(val_features), 1 - share))
    if not check:
        return OodGuard(fit.location_, fit.precision_, threshold, quantile)
    weights, bias = upright_regression(np.asarray(train_features, np.float64), np.asarray(turned_features, np.float64))
    upright = float(np.quantile(np.asarray(val_features, np.float64) @ weights + bias, share))
    return OodGuard(fit.location_, fit.precision_, threshold, quantile, weights, bias, upright)


def upright_regression(upright: np.ndarray, turned: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression (scikit-learn's, on standardised features, L2 with C = 0.1)
    telling ``upright`` from ``turned`` features, folded into one linear map of the raw features.

    The rotation task Hendrycks et al. (NeurIPS 2019) use to detect unlike inputs, here as a linear probe of the
    classifier's own features: chosen on real radiographs, where the distance alone let most inverted and turned
    chests through (benchmarks/real_data.json).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([upright, turned])
    y = np.r_[np.ones(len(upright)), np.zeros(len(turned))]
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(x), y)
    weights = model.coef_[0] / scaler.scale_
    return weights, float(model.intercept_[0] - weights @ scaler.mean_)


def turned_copies(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` (at most all) seeded picks of ``images`` (N x S x S uint8), each inverted or turned by 90, 180 or
    270 degrees, a quarter each: what a MONOCHROME1 file shown without its inversion or a film scanned sideways
    looks like."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(images), min(count, len(images)), replace=False)
    turns = (lambda x: 255 - x, lambda x: np.rot90(x, 1), lambda x: np.rot90(x, 2), lambda x: np.rot90(x, 3))
    return np.stack([np.ascontiguousarray(turns[i % 4](np.asarray(images[index]))) for i, index in enumerate(picked)])


def reason(distance: float, threshold: float) -> str:
    """The distance's line for a refused image."""
    return f"unlike the training images: distance {distance:.1f} > {threshold:.1f}"


# --------------------------------------------------------------------------- the unlike set

_PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "JPEG2000.dcm", "examples_overlay.dcm",
                  "JPGExtended.dcm", "examples_palette.dcm", "examples_rgb_color.dcm")
_PHOTOGRAPHS = ("camera", "astronaut", "coffee", "chelsea", "coins", "moon", "page", "text", "horse",
                "hubble_deep_field", "rocket", "brick", "grass", "gravel", "cell", "retina", "logo", "clock")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    low, high = values.min(), values.max()
    return np.zeros(values.shape, np.uint8) if high <= low else np.round(255 * (values - low) / (high - low)).astype(np.uint8)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 grey -> size x size, Pillow's antialiased bilinear, as the DICOM reader resizes."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))


def grey(pixels: np.ndarray) -> np.ndarray:
    """A greyscale version of an RGB(A) or greyscale array (ITU-R 601 luma, as Pillow's "L")."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return pixels


def other_modality_images(size: int) -> Iterator[tuple[str, np.ndarray]]:
    """pydicom's bundled test images of other modalities at ``size``: greyscale files rendered by the reader
    predict uses (their own window, else the stored range); colour ultrasound made grey first."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    from pneumonia.data.dicom.read import read_dicom
    from pneumonia.core.errors import DicomReadError

    for name in _PYDICOM_FILES:
        path = get_testdata_file(name)
        if path is None:
            continue
        try:
            image, info = read_dicom(path, size)
            yield f"{info.modality} {name}", image
            continue
        except DicomReadError:  # colour or multi-frame: not a greyscale image the reader takes
            pass
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
        if ds.get("NumberOfFrames", 1) > 1:
            pixels = pixels[0]
        yield f"{ds.get('Modality', '?')} {name}", _resized(_to_uint8(grey(pixels)), size)


def photographs() -> Iterator[tuple[str, np.ndarray]]:
    """scikit-image's bundled photographs, greyscale (none is downloaded: the files ship in the wheel)."""
    from skimage import data

    folder = Path(os.path.dirname(data.__file__))
    for name in _PHOTOGRAPHS:
        found = sorted(folder.glob(f"{name}.*"))
        if found:
            yield name, _to_uint8(grey(np.asarray(Image.open(found[0]))))


def unlike_images(size: int, chest_images: np.ndarray, seed: int, no_lungs: np.ndarray | None = None
                  ) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, name, size x size uint8)`` images unlike chest radiographs, made offline and deterministically.

    ``chest_images``: N x S x S uint8 val images (any S; eight are used) for the inverted, rotated and cropped
    kinds; ``no_lungs``: phantom chests without lungs, when the data are the phantom.
    """
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, np.ndarray]] = []
    out += [("dicom_other_modality", name, image) for name, image in other_modality_images(size)]
    out += [("photograph", name, _resized(image, size)) for name, image in photographs()]
    for i in range(2):
        out.append(("noise", f"uniform {i}", rng.integers(0, 256, (size, size), dtype=np.uint8)))
        out.append(("noise", f"gaussian {i}",
                    np.clip(np.round(rng.normal(128, 40, (size, size))), 0, 255).astype(np.uint8)))
    out += [("blank", f"value {v}", np.full((size, size), v, np.uint8)) for v in (0, 128, 255)]
    chests = [np.asarray(image) for image in chest_images[:8]]
    for i, image in enumerate(chests):
        side = image.shape[0]
        out.append(("inverted", f"val {i}", _resized(255 - image, size)))
        out.append(("rotated", f"val {i}", _resized(np.rot90(image).copy(), size)))
        corner = image[: side // 4, : side // 4] if i % 2 == 0 else image[-(side // 4):, -(side // 4):]
        out.append(("cropped", f"val {i}", _resized(corner.copy(), size)))
    if no_lungs is not None:
        out += [("no_lungs", f"phantom {i}", _resized(np.asarray(image), size)) for i, image in enumerate(no_lungs)]
    return out


def catch_rates(kinds: list[str], flagged: np.ndarray, what: dict[str, str] = UNLIKE_KINDS) -> dict:
    """The fraction of the unlike set flagged, overall and per kind (``what`` describes each kind)."""
    flagged = np.asarray(flagged, bool)
    per_kind = {}
    for kind in dict.fromkeys(kinds):
        mask = np.array([k == kind for k in kinds])
        per_kind[kind] = {"n": int(mask.sum()), "caught": int(flagged[mask].sum()),
                          "rate": float(flagged[mask].mean()), "what": what[kind]}
    return {"n": len(kinds), "caught": int(flagged.sum()), "rate": float(flagged.mean()) if len(kinds) else None,
            "by_kind": per_kind}

"""The recipe and the out-of-distribution guard measured on real radiographs (the Kermany set), not on the phantom.

    python benchmarks/real_data.py                          # the default recipe, about 20 minutes on 2 cores
    python benchmarks/real_data.py --name cosine16 -S train.max_epochs=16 -S train.lr_schedule=cosine
    python benchmarks/real_data.py --data /elsewhere/chest_xray_kermany_224

Not part of ``make test``. Reads ``../shared/data/chest_xray_kermany_224`` (5,840 paediatric chest X-rays,
NORMAL / PNEUMONIA, the published train/test split by patient, CC BY 4.0) through the pipeline's own stages as
a user's class folders would enter (``download.source: folder``): the collection's test split is kept, val is
carved out of its train split by ``split.train_size`` with a patient's images kept together
(``download.patient_pattern``), then ``dicom_to_npy``, ``compute_stats`` and ``train`` with params.yaml's
settings and the ``-S`` overrides. The set has no boxes, so the answer is the classifier's: its probability
(the temperature fitted on val), the label threshold at ``evaluate.target_sensitivity`` on val.

Measured on the published test split, which chose nothing: AUROC, sensitivity and specificity at the val-chosen
threshold (bootstrap 95 % intervals), ECE and Brier; the guard (:mod:`pneumonia.prediction.ood`, fitted on train,
threshold at val's ``decide.ood_quantile``): the share of real test images it refuses, and the share it catches
of an unlike set built from real images (each test image at most once per kind: inverted, rotated 90°, 180°
and 270°, one corner cropped and enlarged) plus the project's offline unlike set (other modalities,
photographs, noise, blank fields). Beside the product's guard (the last layer's pooled features) a candidate is
measured on the same images: Mahalanobis distances of every ResNet stage's pooled features (Lee et al. 2018),
each standardised on val, combined by their maximum. Wall and CPU seconds per step (CPU includes the
conversion's worker processes). Writes ``benchmarks/real_data.json`` (one entry per ``--name``); ``make readme``
turns it into the table in docs/real-data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pneumonia.classification import train  # noqa: E402
from pneumonia.classification.classifier import load_classifier  # noqa: E402
from pneumonia.classification.data import batches, standardize  # noqa: E402
from pneumonia.core.params import parse_params  # noqa: E402
from pneumonia.data import compute_stats, dicom_to_npy, download  # noqa: E402
from pneumonia.data.manifest import read_manifest, split_labels  # noqa: E402
from pneumonia.evaluation.bootstrap import bootstrap_metrics  # noqa: E402
from pneumonia.evaluation.calibration import brier_score, expected_calibration_error, probability  # noqa: E402
from pneumonia.evaluation.metrics import ranking_metrics, threshold_metrics  # noqa: E402
from pneumonia.evaluation.operating_points import threshold_for_sensitivity  # noqa: E402
from pneumonia.prediction.ood import (  # noqa: E402
    catch_rates, fit_guard, turned_copies, unlike_images, upright_regression,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chest_xray_kermany_224"
OUT = Path(__file__).resolve().parent / "real_data.json"
# Kermany's file names: person1000_bacteria_2931 (a child with pneumonia), IM-0115-0001 and NORMAL2-IM-1427-0001
PATIENT_PATTERN = r"(person\d+|(?:NORMAL2-)?IM-\d+)"
SETTINGS = {  # how the collection enters; the recipe itself is params.yaml's unless -S says otherwise
    "download": {"source": "folder", "patient_pattern": PATIENT_PATTERN},
    # of the collection's train images (its test split is kept): about 1,000 val; stratified, since class folders
    # list one class after the other and a cut in file order would leave val one class
    "split": {"train_size": 0.8, "stratify": True},
}
PUBLISHED = {"source": "Kermany et al., Cell 2018: Inception v3, ImageNet weights, on this test split",
             "auroc": 0.968, "sensitivity": 0.932, "specificity": 0.901, "accuracy": 0.928}
DONE_WHEN = {"auroc": 0.975, "sensitivity": 0.932, "specificity": 0.901, "ece": 0.05, "test_refused": 0.02,
             "unlike_caught": 0.95, "per_chest_kind": 0.90}
UNLIKE_PER_KIND = 100  # real test images transformed per kind
CHEST_KINDS = {
    "inverted": ("test chest images, grey levels inverted (a MONOCHROME1 file shown without its inversion)",
                 lambda image, i: 255 - image),
    "rotated_90": ("test chest images turned 90° (a film scanned sideways)", lambda image, i: np.rot90(image, 1)),
    "rotated_180": ("test chest images upside down", lambda image, i: np.rot90(image, 2)),
    "rotated_270": ("test chest images turned 270°", lambda image, i: np.rot90(image, 3)),
    "cropped": ("one corner (a third of the side) of a test chest image, enlarged to the whole image",
                lambda image, i: _corner(image, i)),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")  # ResNet stages whose pooled features the candidate guard uses


def _corner(image: np.ndarray, i: int) -> np.ndarray:
    side = image.shape[0] // 3
    rows = slice(None, side) if i % 2 == 0 else slice(-side, None)
    columns = slice(None, side) if (i // 2) % 2 == 0 else slice(-side, None)
    return image[rows, columns]


class Clock:
    """Wall and CPU seconds per step; CPU counts this process's threads and its finished children."""

    def __init__(self):
        self.steps: dict[str, dict[str, float]] = {}

    @contextmanager
    def step(self, name: str):
        wall, cpu = time.perf_counter(), self._cpu()
        yield
        self.steps[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(self._cpu() - cpu, 1)}
        print(f"real_data: {name}: {self.steps[name]['wall_s']} s wall, {self.steps[name]['cpu_s']} s CPU", flush=True)

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _params(data: Path, overrides: list[str]):
    """params.yaml with the collection's settings and then ``overrides`` (``key=value``, the value read as YAML)."""
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings["download"].update(SETTINGS["download"], path=str(data))
    settings["split"].update(SETTINGS["split"])
    for item in overrides:
        key, _, value = item.partition("=")
        node = settings
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {})
        if leaf not in node:
            raise SystemExit(f"real_data: error: -S {key}: no such key in params.yaml")
        node[leaf] = yaml.safe_load(value)
    return parse_params(settings)


@torch.inference_mode()
def forward(model, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Raw logits (N,) and each ResNet stage's output averaged over its cells (N x C per stage), in one pass.

    ``layer4``'s is the product guard's feature vector (:func:`classifier_outputs`' pooled features: a ResNet's
    last stage ends in a ReLU, so nothing is applied after it).
    """
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.network.get_submodule(name).register_forward_hook(
        lambda m, i, out, name=name: captured.__setitem__(name, out.mean(dim=(2, 3)).float().cpu())) for name in STAGES]
    logits: list[torch.Tensor] = []
    found: dict[str, list[torch.Tensor]] = {name: [] for name in STAGES}
    try:
        device = next(model.network.parameters()).device
        for _, batch in batches(images, batch_size, device):
            logits.append(model.network(standardize(batch, model.mean, model.std)).squeeze(1).float().cpu())
            for name in STAGES:
                found[name].append(captured[name])
    finally:
        for hook in hooks:
            hook.remove()
    return (torch.cat(logits).numpy().astype(np.float64),
            {name: torch.cat(parts).numpy().astype(np.float64) for name, parts in found.items()})


class StageGuard:
    """Candidate: one Gaussian per stage (fit_guard's), distances standardised on val, their maximum."""

    def __init__(self, train: dict[str, np.ndarray], val: dict[str, np.ndarray], quantile: float):
        self.guards = {name: fit_guard(train[name], val[name], quantile) for name in STAGES}
        val_distances = {name: guard.distance(val[name]) for name, guard in self.guards.items()}
        self.centre = {name: float(d.mean()) for name, d in val_distances.items()}
        self.scale = {name: float(d.std()) for name, d in val_distances.items()}
        self.threshold = float(np.quantile(self.score(val), quantile))

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return np.max([(guard.distance(features[name]) - self.centre[name]) / self.scale[name]
                       for name, guard in self.guards.items()], axis=0)

    def unlike(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return self.score(features) > self.threshold


class OrientationCheck:
    """Candidate: the product's orientation check (:func:`upright_regression`) alone, on the given stages' pooled
    features, refused below val's ``1 - quantile`` share."""

    def __init__(self, layers: tuple[str, ...], upright: dict[str, np.ndarray], turned: dict[str, np.ndarray],
                 val: dict[str, np.ndarray], quantile: float):
        self.layers = layers
        self.weights, self.bias = upright_regression(self._x(upright), self._x(turned))
        self.threshold = float(np.quantile(self.score(val), 1 - quantile))

    def _x(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([features[name] for name in self.layers], axis=1)

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return self._x(features) @ self.weights + self.bias

    def unlike(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return self.score(features) < self.threshold


def unlike_set(test_images: np.ndarray, size: int, seed: int) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """The kinds and images (N x size x size uint8) of the unlike set, and what each kind is."""
    from pneumonia.data.dicom.read import resize_square
    from pneumonia.prediction.ood import UNLIKE_KINDS

    rng = np.random.default_rng(seed)
    kinds, images = [], []
    for kind, _, image in unlike_images(size, np.zeros((0, size, size), np.uint8), seed):
        kinds.append(kind)
        images.append(image)
    for kind, (_, transform) in CHEST_KINDS.items():
        for i, index in enumerate(rng.choice(len(test_images), UNLIKE_PER_KIND, replace=False)):
            kinds.append(kind)
            images.append(resize_square(np.ascontiguousarray(transform(np.asarray(test_images[index]), i)), size))
    what = {kind: UNLIKE_KINDS.get(kind) or CHEST_KINDS[kind][0] for kind in dict.fromkeys(kinds)}
    return kinds, np.stack(images), what


def measure(params, model_path: Path, processed: Path, seed: int) -> dict:
    model = load_classifier(model_path)
    manifest = read_manifest(processed)
    arrays = {split: np.load(processed / f"{split}.npy", mmap_mode="r") for split in ("train", "val", "test")}
    labels = {split: split_labels(manifest, split) for split in arrays}
    batch = params.evaluate.batch_size
    passes = {split: forward(model, arrays[split], batch) for split in arrays}
    features = {split: stage for split, (_, stage) in passes.items()}
    probs = {split: probability(logits, model.temperature) for split, (logits, _) in passes.items()}
    threshold = threshold_for_sensitivity(labels["val"], probs["val"], params.evaluate.target_sensitivity)
    test, val = labels["test"], labels["val"]
    at = threshold_metrics(test, probs["test"], threshold)
    intervals = bootstrap_metrics(test, probs["test"], {"chosen": threshold}, params.evaluate.bootstrap_resamples, seed)
    ranking = ranking_metrics(test, probs["test"])
    result = {
        "counts": {split: {"total": int(len(y)), "positive": int(y.sum())} for split, y in labels.items()},
        "temperature": model.temperature,
        "threshold": {"value": threshold, "chosen_on": "val",
                      "rule": f"the highest reaching sensitivity {params.evaluate.target_sensitivity} on val"},
        "val": {"auroc": ranking_metrics(val, probs["val"])["auroc"],
                "note": "val chose the epoch, the temperature and the threshold: optimistic"},
        "test": {
            "auroc": ranking["auroc"], "auroc_ci": [intervals["auroc"]["low"], intervals["auroc"]["high"]],
            "average_precision": ranking["average_precision"],
            "sensitivity": at["recall"], "sensitivity_ci": [intervals["chosen"]["sensitivity"]["low"],
                                                            intervals["chosen"]["sensitivity"]["high"]],
            "specificity": at["specificity"], "specificity_ci": [intervals["chosen"]["specificity"]["low"],
                                                                 intervals["chosen"]["specificity"]["high"]],
            "accuracy": at["accuracy"], "ece": expected_calibration_error(test, probs["test"]),
            "brier": brier_score(test, probs["test"]), "mean_probability": float(probs["test"].mean()),
            "prevalence": float(test.mean()),
        },
    }
    kinds, unlike, what = unlike_set(arrays["test"], model.image_size, seed)
    unlike_logits, unlike_stages = forward(model, unlike, batch)
    turned = forward(model, turned_copies(arrays["train"], params.decide.orientation_images, seed), batch)[1]
    q = params.decide.ood_quantile
    last = "layer4"
    guard = fit_guard(features["train"][last], features["val"][last], q)
    candidates = {
        "last_layer": ("the distance alone (the product's guard before the orientation check): Mahalanobis distance "
                       "of the last stage's pooled features", guard.unlike),
        "all_stages": ("Mahalanobis distance per stage (layer1-layer4), standardised on val, their maximum",
                       StageGuard(features["train"], features["val"], q).unlike),
    }
    for layers in (("layer4",), STAGES):
        check = OrientationCheck(layers, features["train"], turned, features["val"], q)
        name = "orientation_" + ("last_layer" if layers == ("layer4",) else "all_stages")
        candidates[name] = (f"orientation and polarity check alone: logistic regression on {', '.join(layers)} "
                            f"pooled features, {params.decide.orientation_images} train images against their inverted "
                            "and turned copies", check.unlike)
    # The two together, each at half the false-alarm share, so that val's refused share stays 1 - quantile.
    product = fit_guard(features["train"][last], features["val"][last], q, turned[last])
    candidates["product"] = ("the product's guard (decide.orientation_images > 0): the last-layer distance or the "
                             "orientation check on the same features, each at half the share",
                             lambda f: product.unlike(f[last]))
    half = 1 - (1 - q) / 2
    both_stages = StageGuard(features["train"], features["val"], half)
    both_stage_check = OrientationCheck(STAGES, features["train"], turned, features["val"], half)
    candidates["all_stages_and_orientation"] = (
        "the all-stage distance or the orientation check on all stages (each at half the share)",
        lambda f: both_stages.unlike(f) | both_stage_check.unlike(f))
    result["ood"] = {"quantile": q, "orientation_train_images": params.decide.orientation_images}
    for name, (description, unlike) in candidates.items():
        takes = (lambda f: unlike(f[last])) if name == "last_layer" else unlike
        result["ood"][name] = {"what": description, "test_refused": float(takes(features["test"]).mean()),
                               "val_refused": float(takes(features["val"]).mean()),
                               "unlike": catch_rates(kinds, takes(unlike_stages), what)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Kermany folder (default: %(default)s)")
    parser.add_argument("--name", default="default", help="this run's entry in the JSON (default: %(default)s)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml setting for this run, as dvc exp run -S takes it")
    parser.add_argument("--work", type=Path, help="keep the run's data and model here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--measure-only", action="store_true",
                        help="measure the model an earlier run kept in --work again (no data or training steps)")
    args = parser.parse_args(argv)
    if args.measure_only and not (args.work and (args.work / "classifier.safetensors").is_file()):
        raise SystemExit("real_data: error: --measure-only needs --work with an earlier run's classifier.safetensors")
    if not (args.data / "train").is_dir():
        print(f"real_data: {args.data}: not found (the real Kermany set lives in ../shared/data; give --data); "
              "nothing measured", file=sys.stderr)
        return 2
    params = _params(args.data.resolve(), args.overrides)
    if not params.train.arch.startswith("resnet"):
        raise SystemExit(f"real_data: error: train.arch {params.train.arch}: the stage-wise guard candidates read "
                         "ResNet stages (layer1-layer4); use a resnet")
    seed = params.base.seed
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="real-data-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        raw, processed = work / "raw", work / "processed"
        if args.measure_only:
            clock.steps = json.loads((work / "seconds.json").read_text())
        else:
            with clock.step("download"):
                print(download.run(params.download, seed=seed, raw_dir=raw).summary(), flush=True)
            with clock.step("dicom_to_npy"):
                print(dicom_to_npy.run(raw, processed, params.dicom_to_npy, params.split).summary(), flush=True)
            with clock.step("compute_stats"):
                compute_stats.run(processed, work / "dataset.json")
            with clock.step("train"):
                train.run(processed, work / "dataset.json", params.train, seed=params.base.training_seed,
                          model_path=work / "classifier.safetensors", live_dir=work / "dvclive",
                          windowing=params.dicom_to_npy.windowing)
            (work / "seconds.json").write_text(json.dumps(clock.steps))
        with clock.step("measure"):
            result = measure(params, work / "classifier.safetensors", processed, seed)
    result["seconds"] = clock.steps | {"total_wall_s": round(sum(s["wall_s"] for s in clock.steps.values()), 1)}
    result["settings"] = {"overrides": args.overrides, "image_size": params.dicom_to_npy.image_size,
                          "arch": params.train.arch, "init": params.train.init, "max_epochs": params.train.max_epochs,
                          "lr": params.train.lr, "lr_schedule": params.train.lr_schedule,
                          "augment": params.train.augment, "batch_size": params.train.batch_size}
    result["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                         "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                         "device": "cuda" if torch.cuda.is_available() else "cpu", "python": platform.python_version()}
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = existing.get("runs", {}) | {args.name: result}
    document = {"data": "Kermany et al. 2018, chest_xray_kermany_224 (CC BY 4.0): train 5,216, test 624",
                "published": PUBLISHED, "done_when": DONE_WHEN, "runs": runs}
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"real_data: wrote {args.out} ({args.name}): test AUROC {result['test']['auroc']:.3f}, sensitivity "
          f"{result['test']['sensitivity']:.3f}, specificity {result['test']['specificity']:.3f}, ECE "
          f"{result['test']['ece']:.3f}; guard refuses {result['ood']['last_layer']['test_refused']:.1%} of test, "
          f"catches {result['ood']['last_layer']['unlike']['rate']:.1%} (all stages: "
          f"{result['ood']['all_stages']['test_refused']:.1%}, {result['ood']['all_stages']['unlike']['rate']:.1%})")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())

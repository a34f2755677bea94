"""Typed, validated settings from params.yaml.

params.yaml is the one place a default lives: the dataclasses below declare
types and ranges but no values, and :func:`parse_params` requires every key, so a
deleted line is an error naming the key, never a silent fallback to a second
default that may disagree.

Every stage loads the whole file through :func:`load_params`, so a misspelled,
missing or out-of-range key anywhere fails before any work, naming the key. DVC
still tracks each stage's individual keys (see dvc.yaml), so an experiment
reruns only what it must.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pneumonia.core.architectures import ARCHITECTURES
from pneumonia.core.errors import ParamsError


@dataclass(frozen=True)
class BaseParams:
    seed: int  # seeds the phantom generator, the split's folds and the bootstrap draws
    train_seed: Union[int, None]  # seeds training of both networks; null = seed

    def __post_init__(self):
        _check(self.seed >= 0, "base.seed", "must be >= 0")
        _check(self.train_seed is None or self.train_seed >= 0, "base.train_seed", "must be >= 0 or null")

    @property
    def training_seed(self) -> int:
        """The seed of the networks' initialisation, batch order and augmentation."""
        return self.seed if self.train_seed is None else self.train_seed


@dataclass(frozen=True)
class PhantomParams:
    patients: int  # patients in the phantom dataset
    size: int  # DICOM rows and columns, as in RSNA

    def __post_init__(self):
        _check(self.patients >= 4, "download.phantom.patients", "must be >= 4")
        _check(64 <= self.size <= 4096, "download.phantom.size", "must be between 64 and 4096")


@dataclass(frozen=True)
class DownloadParams:
    source: Literal["synthetic", "kaggle", "local"]
    # source=local: a zip or folder in the RSNA layout. Always a path, because dvc.yaml
    # makes it the download stage's dependency (${download.path}): a change in the
    # user's data reruns the pipeline. The default, local_data/, is a committed folder.
    path: str
    competition: str
    phantom: PhantomParams

    def __post_init__(self):
        _check(
            self.source != "local" or bool(self.path),
            "download.path",
            "must name a zip or folder when download.source is local",
        )


@dataclass(frozen=True)
class SplitParams:
    # Patients in file order (labels deduplicated): the first train_size are train,
    # the last test_size are test, the rest val. An int is a count, a float in
    # (0, 1) a fraction of all patients. stratify: the rule applies within each
    # class separately, so every split keeps the overall positive fraction.
    train_size: Union[int, float]
    test_size: Union[int, float]
    stratify: bool

    def __post_init__(self):
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            if isinstance(value, float):
                _check(0 < value < 1, f"split.{key}", "a fraction must be in (0, 1)")
            else:
                _check(value >= (1 if key == "train_size" else 0), f"split.{key}", "is a count out of range")


@dataclass(frozen=True)
class DicomToNpyParams:
    image_size: int  # side of the square arrays the model sees (the reference: 224)
    workers: int  # conversion processes; 0 = one per CPU core
    grid_images: int  # images in the plots/images/samples.png grid
    on_error: Literal["fail", "skip"]  # skip: unreadable files go to failed.csv
    # auto: a file's own window (VOI LUT) when it declares one, else its stored range; none: always the stored range
    windowing: Literal["auto", "none"]

    def __post_init__(self):
        _check(16 <= self.image_size <= 1024, "dicom_to_npy.image_size", "must be between 16 and 1024")
        _check(self.workers >= 0, "dicom_to_npy.workers", "must be >= 0 (0 = all cores)")
        _check(self.grid_images >= 1, "dicom_to_npy.grid_images", "must be >= 1")


@dataclass(frozen=True)
class TrainParams:
    arch: str  # a name of pneumonia.core.architectures.ARCHITECTURES
    # scratch: random weights (the reference); imagenet: torchvision's ImageNet weights
    # (RGB conv1 summed to one channel, fresh head); anything else: a path to a state dict.
    init: str
    max_epochs: int
    limit_train_batches: Union[int, float]  # Lightning's: 1.0 = every batch, an int = that many per epoch
    optimizer: Literal["adam", "adamw"]
    lr: float
    weight_decay: float
    lr_schedule: Literal["constant", "cosine", "onecycle"]
    warmup_epochs: int  # linear warm-up from lr/100 (constant and cosine); onecycle warms up by itself
    early_stopping_patience: int  # epochs without a better val AUROC before stopping; 0 = never stop early
    batch_size: int
    num_workers: Union[int, str]  # or auto: half the cores (at most 8) when the augmentation runs on a GPU, else 0
    # where the augmentation runs: loader = per sample in the DataLoader (the reference), device = whole
    # batches on the model's device (kornia), auto = device on a GPU, loader on a CPU
    augment_on: Literal["auto", "loader", "device"]
    accelerator: str
    devices: Union[int, str]  # per node; DDP runs one process per device
    num_nodes: int
    strategy: str  # auto, ddp, ddp_spawn, fsdp, ...: passed to the Lightning Trainer
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "64-true", "bf16-true", "16-true"]
    pos_weight: float  # BCEWithLogitsLoss pos_weight
    # none: the reference; weighted_loss: pos_weight times the train split's
    # negative/positive ratio; oversample: positives drawn as often as negatives.
    class_balance: Literal["none", "weighted_loss", "oversample"]
    augment: bool  # the reference's RandomAffine + RandomResizedCrop on train
    temperature_scaling: bool  # fit a logit temperature on val; stored in the checkpoint
    grid_images: int  # augmented samples in plots/images/augmented.png

    def __post_init__(self):
        _check(self.arch in ARCHITECTURES, "train.arch", f"is {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        _check(bool(self.init), "train.init", "must be scratch, imagenet or a path to a state dict")
        _check(self.max_epochs >= 1, "train.max_epochs", "must be >= 1")
        _check(
            self.limit_train_batches >= 1 if isinstance(self.limit_train_batches, int)
            else 0 < self.limit_train_batches <= 1,
            "train.limit_train_batches", "must be a fraction in (0, 1] or a count >= 1",
        )
        _check(0 < self.lr < 1, "train.lr", "must be in (0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(
            self.weight_decay == 0 or self.optimizer == "adamw", "train.weight_decay",
            "needs train.optimizer adamw (Adam's L2 penalty is not decoupled weight decay)",
        )
        _check(0 <= self.warmup_epochs < self.max_epochs, "train.warmup_epochs", "must be in [0, max_epochs)")
        _check(
            self.warmup_epochs == 0 or self.lr_schedule != "onecycle", "train.warmup_epochs",
            "must be 0 with lr_schedule onecycle (it warms up by itself)",
        )
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0 (0 = off)")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.pos_weight > 0, "train.pos_weight", "must be > 0")
        _check(self.grid_images >= 1, "train.grid_images", "must be >= 1")
        _check_scaling("train", self.num_workers, self.devices, self.num_nodes)


@dataclass(frozen=True)
class EvaluateParams:
    thresholds: tuple[float, ...]  # 0.25 is the reference's second threshold
    batch_size: int
    target_sensitivity: float  # an operating point chosen on val to reach it
    bootstrap_resamples: int  # for the 95 % confidence intervals
    age_bands: tuple[int, ...]  # band edges in years: <40, 40-59, >=60

    def __post_init__(self):
        _check(len(self.thresholds) >= 1, "evaluate.thresholds", "must list at least one threshold")
        for t in self.thresholds:
            _check(0 < t < 1, "evaluate.thresholds", f"{t} is not in (0, 1)")
        _check(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        _check(0 < self.target_sensitivity < 1, "evaluate.target_sensitivity", "must be in (0, 1)")
        _check(self.bootstrap_resamples >= 10, "evaluate.bootstrap_resamples", "must be >= 10")
        _check(list(self.age_bands) == sorted(set(self.age_bands)), "evaluate.age_bands", "must be increasing")


@dataclass(frozen=True)
class LocalizeParams:
    cam_threshold: float  # a region is where the class activation map exceeds this fraction of its maximum
    min_area: float  # smallest box kept, as a fraction of the image area
    threshold: Union[float, None]  # classification threshold for boxes; null = the checkpoint's
    overlays: int  # overlay PNGs drawn (true positives, false positives, false negatives)
    batch_size: int

    def __post_init__(self):
        _check(0 < self.cam_threshold < 1, "localize.cam_threshold", "must be in (0, 1)")
        _check(0 <= self.min_area < 1, "localize.min_area", "must be in [0, 1)")
        _check(self.threshold is None or 0 < self.threshold < 1, "localize.threshold", "must be in (0, 1) or null")
        _check(self.overlays >= 0, "localize.overlays", "must be >= 0")
        _check(self.batch_size >= 1, "localize.batch_size", "must be >= 1")


@dataclass(frozen=True)
class DetectParams:
    arch: str  # the backbone: a name of pneumonia.core.architectures.ARCHITECTURES (train.arch's registry)
    init: str  # as train.init: scratch, imagenet (torchvision's weights, RGB stem summed) or a state dict's path
    neck: Literal["topdown", "fpn"]  # merge of the stride 8/16/32 features: the small top-down merge or torchvision's FPN
    width: int  # channels of the merged stride-8 features and of the heads
    image_size: int  # model input, pixels (the arrays are resized when they differ); a multiple of 32
    max_epochs: int
    lr: float  # AdamW, cosine-annealed to 0 over max_epochs
    weight_decay: float
    batch_size: int
    negative_ratio: float  # images without boxes drawn per image with boxes, each epoch
    num_workers: Union[int, str]  # or auto, as train.num_workers
    augment_on: Literal["auto", "loader", "device"]  # as train.augment_on; the boxes move with the images
    accelerator: str
    devices: Union[int, str]  # per node; DDP runs one process per device
    num_nodes: int
    strategy: str  # passed to the Lightning Trainer
    precision: Literal["32-true", "bf16-mixed", "16-mixed"]
    augment: bool  # box-aware affine + crop on train
    score_thresholds: tuple[float, ...]  # candidates for the image gate and the box threshold, chosen on val
    # the prevalence of pneumonia the gate and box thresholds are tuned for (val's images reweighted to it):
    # null = the train split's; "val" = val's own, unweighted
    threshold_prevalence: Union[float, str, None]
    nms_iou: float
    max_boxes: int  # per image, after NMS
    tta: Literal["none", "hflip"]  # test-time augmentation: hflip adds the mirrored image's boxes
    tta_merge_ious: tuple[float, ...]  # IoU candidates for merging the two sets (NMS and WBF), chosen on val

    def __post_init__(self):
        _check(self.arch in ARCHITECTURES, "detect.arch", f"is {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        _check(bool(self.init), "detect.init", "must be scratch, imagenet or a path to a state dict")
        _check(8 <= self.width <= 512, "detect.width", "must be between 8 and 512")
        _check(self.image_size >= 32 and self.image_size % 32 == 0, "detect.image_size", "must be a multiple of 32")
        _check(self.max_epochs >= 1, "detect.max_epochs", "must be >= 1")
        _check(0 < self.lr < 1, "detect.lr", "must be in (0, 1)")
        _check(0 <= self.weight_decay < 1, "detect.weight_decay", "must be in [0, 1)")
        _check(self.batch_size >= 1, "detect.batch_size", "must be >= 1")
        _check(self.negative_ratio >= 0, "detect.negative_ratio", "must be >= 0")
        _check_scaling("detect", self.num_workers, self.devices, self.num_nodes)
        _check(len(self.score_thresholds) >= 1, "detect.score_thresholds", "must list at least one threshold")
        for t in self.score_thresholds:
            _check(0 < t < 1, "detect.score_thresholds", f"{t} is not in (0, 1)")
        _check(
            self.threshold_prevalence in (None, "val")
            or (isinstance(self.threshold_prevalence, float) and 0 < self.threshold_prevalence < 1),
            "detect.threshold_prevalence", "must be null (the train split's), val, or a fraction in (0, 1)",
        )
        _check(0 < self.nms_iou <= 1, "detect.nms_iou", "must be in (0, 1]")
        _check(1 <= self.max_boxes <= 100, "detect.max_boxes", "must be between 1 and 100")
        _check(len(self.tta_merge_ious) >= 1, "detect.tta_merge_ious", "must list at least one IoU")
        for t in self.tta_merge_ious:
            _check(0 < t < 1, "detect.tta_merge_ious", f"{t} is not in (0, 1)")


@dataclass(frozen=True)
class EvaluateDetectionParams:
    overlays: int  # per role: true positives, false positives and misses on test
    bootstrap_resamples: int  # for the image-level AUROC intervals

    def __post_init__(self):
        _check(self.overlays >= 0, "evaluate_detection.overlays", "must be >= 0")
        _check(self.bootstrap_resamples >= 10, "evaluate_detection.bootstrap_resamples", "must be >= 10")


@dataclass(frozen=True)
class DecideParams:
    folds: int  # stratified folds of val for choosing the decision and its calibration by out-of-fold log loss
    ood_quantile: float  # the guard's threshold: this quantile of val's distances
    batch_size: int

    def __post_init__(self):
        _check(2 <= self.folds <= 20, "decide.folds", "must be between 2 and 20")
        _check(0.5 <= self.ood_quantile < 1, "decide.ood_quantile", "must be in [0.5, 1)")
        _check(self.batch_size >= 1, "decide.batch_size", "must be >= 1")


@dataclass(frozen=True)
class Params:
    base: BaseParams
    download: DownloadParams
    split: SplitParams
    dicom_to_npy: DicomToNpyParams
    train: TrainParams
    evaluate: EvaluateParams
    localize: LocalizeParams
    detect: DetectParams
    decide: DecideParams
    evaluate_detection: EvaluateDetectionParams


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: {key} {problem}")


def _check_scaling(section: str, num_workers: int | str, devices: int | str, num_nodes: int) -> None:
    """The loader and Trainer settings train and detect share."""
    _check(num_workers == "auto" or (isinstance(num_workers, int) and num_workers >= 0),
           f"{section}.num_workers", "must be 'auto' or an integer >= 0")
    _check(devices == "auto" or (isinstance(devices, int) and devices >= 1),
           f"{section}.devices", "must be 'auto' or an integer >= 1")
    _check(num_nodes >= 1, f"{section}.num_nodes", "must be >= 1")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``path``; raise :class:`ParamsError` naming the first bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root, where params.yaml lives") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    return parse_params(raw)


def parse_params(raw: Any) -> Params:
    """Build :class:`Params` from a parsed YAML mapping, validating every key."""
    return _build(Params, raw, prefix="")


def _build(cls, raw: Any, prefix: str):
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {where} must be a mapping of settings, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + str(unknown[0])
        raise ParamsError(f"params.yaml: unknown key {key}; valid keys here: {', '.join(sorted(names))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw]
    if missing:
        raise ParamsError(
            f"params.yaml: missing key {prefix}{missing[0]}; every setting lives in params.yaml "
            "(restore the line from git or the README's table)"
        )
    values = {name: _coerce(hints[name], raw[name], prefix + name) for name in names}
    return cls(**values)


def _coerce(hint, value: Any, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"params.yaml: {key} is {value!r}; choose one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ParamsError(f"params.yaml: {key} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, key) for v in value)
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        if value is None and type(None) in args:
            return None
        # bool is an int in Python; never let yes/no pass for a number
        for arg in args:
            if arg is type(None):
                continue
            if _is_instance(value, arg):
                return value
        names = " or ".join("null" if a is type(None) else a.__name__ for a in args)
        raise ParamsError(f"params.yaml: {key} must be {names}, got {value!r}")
    if hint is float and _is_instance(value, int):
        return float(value)
    if not _is_instance(value, hint):
        raise ParamsError(f"params.yaml: {key} must be {hint.__name__}, got {value!r}")
    return value


def _is_instance(value: Any, kind: type) -> bool:
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, kind)

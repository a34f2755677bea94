"""Typed, validated settings from params.yaml.

params.yaml is the one place a default lives: the pydantic models below declare
types and ranges but no values, so every key is required and a deleted line is
an error naming the key, never a silent fallback to a second default that may
disagree.

Every stage loads the whole file through :func:`load_params`, so a misspelled,
missing or out-of-range key anywhere fails before any work, in one line naming
the key (:func:`pneumonia.core.validation.first_problem` words pydantic's
error from the annotations). DVC still tracks each stage's individual keys (see
dvc.yaml), so an experiment reruns only what it must.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from annotated_types import Gt, Le
from pydantic import Field, ValidationError, model_validator

from pneumonia.core.architectures import NECKS, ArchitectureName
from pneumonia.core.errors import ParamsError
from pneumonia.core.validation import Count, Fraction, ListOf, Positive, Strict, first_problem, rule

# auto: half the cores (at most 8) when the augmentation runs on a GPU, else 0
Workers = Union[Count, Literal["auto"]]
Devices = Union[Positive, Literal["auto"]]  # per node; DDP runs one process per device
Init = Annotated[str, Field(min_length=1, description="scratch, imagenet or a path to a state dict")]


class BaseParams(Strict):
    seed: Count  # seeds the phantom generator, the split's folds and the bootstrap draws
    train_seed: Union[Count, None]  # seeds training of both networks; null = seed

    @property
    def training_seed(self) -> int:
        """The seed of the networks' initialisation, batch order and augmentation."""
        return self.seed if self.train_seed is None else self.train_seed


class PhantomParams(Strict):
    patients: int = Field(ge=4)  # patients in the phantom dataset
    size: int = Field(ge=64, le=4096)  # DICOM rows and columns, as in RSNA


class DownloadParams(Strict):
    source: Literal["synthetic", "kaggle", "local", "folder", "table"]
    # source=local: a zip or folder in the RSNA layout; folder: class folders; table: the folder
    # holding download.table. Always a path, because dvc.yaml makes it the download stage's
    # dependency (${download.path}): a change in the user's data reruns the pipeline. The default,
    # local_data/, is a committed folder.
    path: str
    competition: str
    # folder and table: each class folder name (or table label) and its label, 0 or 1
    classes: dict[Annotated[str, Field(min_length=1)], Literal[0, 1]] = Field(min_length=1)
    # folder and table without a patient column: a regular expression matched at the start of each file
    # name, whose first group (else the whole match) is the patient; null = each image is its own patient
    patient_pattern: Union[str, None]
    table: str  # source=table: the CSV inside download.path (image,label[,patient][,split][,x,y,width,height])
    phantom: PhantomParams

    @model_validator(mode="after")
    def _local_needs_a_path(self):
        if self.source in ("local", "folder", "table") and not self.path:
            raise rule("path", f"must name a zip or folder when download.source is {self.source}")
        if self.patient_pattern is not None:
            try:
                re.compile(self.patient_pattern)
            except re.error as exc:
                raise rule("patient_pattern", f"is not a regular expression ({exc})") from None
        return self


class SplitParams(Strict):
    # Patients in file order (labels deduplicated): the first train_size are train,
    # the last test_size are test, the rest val. An int is a count, a float in
    # (0, 1) a fraction of all patients. stratify: the rule applies within each
    # class separately, so every split keeps the overall positive fraction.
    train_size: Union[Positive, Fraction]
    test_size: Union[Count, Fraction]
    stratify: bool


class DicomToNpyParams(Strict):
    image_size: int = Field(ge=16, le=1024)  # side of the square arrays the model sees (the reference: 224)
    workers: Count  # conversion processes; 0 = one per CPU core
    grid_images: Positive  # images in the plots/images/samples.png grid
    on_error: Literal["fail", "skip"]  # skip: unreadable files go to failed.csv
    # auto: a file's own window (VOI LUT) when it declares one, else its stored range; none: always the stored range
    windowing: Literal["auto", "none"]


class TrainParams(Strict):
    arch: ArchitectureName
    # scratch: random weights (the reference); imagenet: torchvision's ImageNet weights
    # (RGB conv1 summed to one channel, fresh head); anything else: a path to a state dict.
    init: Init
    max_epochs: Positive
    limit_train_batches: Union[Positive, Annotated[float, Gt(0), Le(1)]]  # Lightning's: 1.0 = all, an int = that many
    optimizer: Literal["adam", "adamw"]
    lr: Fraction
    weight_decay: float = Field(ge=0)
    lr_schedule: Literal["constant", "cosine", "onecycle"]
    warmup_epochs: Count  # linear warm-up from lr/100 (constant and cosine); onecycle warms up by itself
    early_stopping_patience: Count  # epochs without a better val AUROC before stopping; 0 = never stop early
    batch_size: Positive
    num_workers: Workers
    # where the augmentation runs: loader = per sample in the DataLoader (the reference), device = whole
    # batches on the model's device (kornia), auto = device on a GPU, loader on a CPU
    augment_on: Literal["auto", "loader", "device"]
    accelerator: str
    devices: Devices
    num_nodes: Positive
    strategy: str  # auto, ddp, ddp_spawn, fsdp, ...: passed to the Lightning Trainer
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "64-true", "bf16-true", "16-true"]
    pos_weight: float = Field(gt=0)  # BCEWithLogitsLoss pos_weight
    # none: the reference; weighted_loss: pos_weight times the train split's
    # negative/positive ratio; oversample: positives drawn as often as negatives.
    class_balance: Literal["none", "weighted_loss", "oversample"]
    augment: bool  # the reference's RandomAffine + RandomResizedCrop on train
    temperature_scaling: bool  # fit a logit temperature on val; stored in the checkpoint
    grid_images: Positive  # augmented samples in plots/images/augmented.png

    @model_validator(mode="after")
    def _consistent(self):
        if self.weight_decay and self.optimizer != "adamw":
            raise rule("weight_decay", "needs train.optimizer adamw (Adam's L2 penalty is not decoupled weight decay)")
        if self.warmup_epochs >= self.max_epochs:
            raise rule("warmup_epochs", "must be in [0, max_epochs)")
        if self.warmup_epochs and self.lr_schedule == "onecycle":
            raise rule("warmup_epochs", "must be 0 with lr_schedule onecycle (it warms up by itself)")
        return self


class EvaluateParams(Strict):
    thresholds: ListOf(Fraction, least=1)  # 0.25 is the reference's second threshold
    batch_size: Positive
    target_sensitivity: Fraction  # an operating point chosen on val to reach it
    bootstrap_resamples: int = Field(ge=10)  # for the 95 % confidence intervals
    age_bands: ListOf(int)  # band edges in years: <40, 40-59, >=60

    @model_validator(mode="after")
    def _bands_increase(self):
        if list(self.age_bands) != sorted(set(self.age_bands)):
            raise rule("age_bands", "must be increasing")
        return self


class LocalizeParams(Strict):
    cam_threshold: Fraction  # a region is where the class activation map exceeds this fraction of its maximum
    min_area: float = Field(ge=0, lt=1)  # smallest box kept, as a fraction of the image area
    threshold: Union[Fraction, None]  # classification threshold for boxes; null = the checkpoint's
    overlays: Count  # overlay PNGs drawn (true positives, false positives, false negatives)
    batch_size: Positive


class DetectParams(Strict):
    arch: ArchitectureName  # the backbone: train.arch's registry
    init: Init  # as train.init: scratch, imagenet (torchvision's weights, RGB stem summed) or a state dict's path
    neck: Literal[NECKS]  # merge of the stride 8/16/32 features: the small top-down merge or torchvision's FPN
    width: int = Field(ge=8, le=512)  # channels of the merged stride-8 features and of the heads
    image_size: int = Field(ge=32, multiple_of=32)  # model input, pixels (the arrays are resized when they differ)
    max_epochs: Positive
    lr: Fraction  # AdamW, cosine-annealed to 0 over max_epochs
    weight_decay: float = Field(ge=0, lt=1)
    batch_size: Positive
    negative_ratio: float = Field(ge=0)  # images without boxes drawn per image with boxes, each epoch
    num_workers: Workers
    augment_on: Literal["auto", "loader", "device"]  # as train.augment_on; the boxes move with the images
    accelerator: str
    devices: Devices
    num_nodes: Positive
    strategy: str  # passed to the Lightning Trainer
    precision: Literal["32-true", "bf16-mixed", "16-mixed"]
    augment: bool  # box-aware affine + crop on train
    score_thresholds: ListOf(Fraction, least=1)  # candidates for the image gate and the box threshold, chosen on val
    # the prevalence of pneumonia the gate and box thresholds are tuned for (val's images reweighted to it):
    # null = the train split's; "val" = val's own, unweighted
    threshold_prevalence: Union[Fraction, Literal["val"], None]
    nms_iou: float = Field(gt=0, le=1)
    max_boxes: int = Field(ge=1, le=100)  # per image, after NMS
    tta: Literal["none", "hflip"]  # test-time augmentation: hflip adds the mirrored image's boxes
    tta_merge_ious: ListOf(Fraction, least=1)  # IoU candidates for merging the two sets (NMS and WBF), chosen on val


class EvaluateDetectionParams(Strict):
    overlays: Count  # per role: true positives, false positives and misses on test
    bootstrap_resamples: int = Field(ge=10)  # for the image-level AUROC intervals


class DecideParams(Strict):
    folds: int = Field(ge=2, le=20)  # stratified folds of val for choosing the decision and its calibration
    ood_quantile: float = Field(ge=0.5, lt=1)  # the guard's threshold: this quantile of val's distances
    # train images whose inverted and turned copies teach the guard's orientation check; 0 = no check
    orientation_images: Count
    batch_size: Positive


class Params(Strict):
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
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problem = first_problem(exc, Params)
    if problem.kind == "missing":
        raise ParamsError(f"params.yaml: missing key {problem.key}; every setting lives in params.yaml "
                          "(restore the line from git or the README's table)")
    if problem.kind == "unknown":
        raise ParamsError(f"params.yaml: unknown key {problem.key}; valid keys here: {problem.text}")
    raise ParamsError(f"params.yaml: {problem.key or 'params.yaml'} {problem.text}")

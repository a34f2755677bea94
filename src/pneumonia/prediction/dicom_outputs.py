"""`pneumonia predict --dicom-out DIR`: results a hospital viewer opens, written with highdicom.

For each scored image, two files in DIR, named after the input file as the overlays are
(``<stem>.sr.dcm``, ``<stem>.pr.dcm``; a stem met twice gets ``-2``, ``-3``):

* a Comprehensive SR holding a TID 1500 Measurement Report. One image-level group (TID 1501):
  the finding (pneumonia, SNOMED CT 233604007), the calibrated probability of pneumonia, the
  decision at the operating point chosen on val (pneumonia present or absent), and, with boxes,
  the area of their union; then one planar ROI group (TID 1410) per box: a lung opacity (DCM
  112001, in the lung), the box as a closed POLYLINE, its detector score and its area.
  Areas are in mm² where the image's pixel spacing is known, else in % of the image: the
  numbers of the CSV. Every group names the algorithm (TID 4019: ``pneumonia`` and the
  package's version); the image-level group adds as its parameters the model file's name and
  sha256, the operating point, the box threshold, what the model was trained on, and the
  caveats of this image (unlike the training images, areas from ImagerPixelSpacing);
* a Grayscale Softcopy Presentation State that draws the boxes (each with its score) and a
  one-line caption over the original image in any viewer, without a plugin.

Both reference the source image by its Study, Series and SOP Instance UIDs and join its study
(new series, "AI" numbers :data:`SR_SERIES_NUMBER` and :data:`PR_SERIES_NUMBER`; one series of
each per study and run). Coordinates are the DICOM image's own: (column, row) pixels of the
original image, (0, 0) the top-left corner of the top-left pixel, which is how predict's boxes
(x, y, width, height) are measured, so a box's corners are written as they are.

A model trained on the synthetic phantom says so wherever a person reads these files: the
series description, the algorithm's parameters, and the presentation state's caption,
description and layer.

Images that were not scored (unreadable, not a chest, unlike the training images) get neither
file: their CSV row says why. Each file is written atomically; a header the outputs cannot be
built from (no UIDs to reference) is reported for that file and the others are still written.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pneumonia import __version__
from pneumonia.core.atomic import atomic_path
from pneumonia.detection.detector import area_fraction
from pneumonia.core.errors import PneumoniaError
from pneumonia.reporting.overlay import PREDICTED_COLOUR
from pneumonia.prediction.predict import FilePrediction, area_mm2
from pneumonia.prediction.predictor import Predictor
from pneumonia.data.dicom.rendering import RenderingError, presentation_inverse

ALGORITHM_NAME = "pneumonia"
MANUFACTURER = "pneumonia (open-source project)"
NOT_CLINICAL = "synthetic-phantom model, not for clinical use"
SR_SUFFIX, PR_SUFFIX = ".sr.dcm", ".pr.dcm"
SR_SERIES_NUMBER, PR_SERIES_NUMBER = 9901, 9902  # high, so viewers list them after the acquired series

# pydicom's code dictionary has no SNOMED CT concept for pneumonia: 233604007 "Pneumonia (disorder)".
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
OPACITY = codes.DCM.Opacity  # CID 6104 "Abnormal Opacity Finding or Feature": RSNA's "Lung Opacity" boxes
LUNG = codes.SCT.Lung
PROBABILITY = codes.DCM.Probability
BOX_SCORE = codes.DCM.CertaintyOfFinding  # the detector's score of the box: a score, not a probability
AREA = codes.SCT.Area
PROCEDURE = codes.SCT.ChestImaging
# Type 2 attributes of the patient and study that highdicom copies from the source: present but empty
# is the standard's way of saying unknown, so an export that dropped them still gets its outputs.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
_REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class SourceHeaderError(Exception):
    """The source image's header cannot give an SR and a presentation state; the message says why and what to do."""


@dataclass(frozen=True)
class ModelIdentity:
    """What names the algorithm in every output: the package's version and the model file's hash."""

    file_name: str
    sha256: str
    threshold: float  # on the probability: the operating point chosen on val
    box_threshold: float  # on the detector's box score
    trained_on: str  # e.g. "the synthetic phantom (18 training images)"
    synthetic: bool

    @classmethod
    def of(cls, model_path: Path, predictor: Predictor) -> ModelIdentity:
        source = predictor.trained_on.get("source", "?")
        count = predictor.trained_on.get("patients", {}).get("train", "?")
        trained_on = f"the synthetic phantom ({count} training images)" if predictor.synthetic else (
            f"{source} data ({count} training images)")
        return cls(Path(model_path).name, file_sha256(model_path), predictor.decision.threshold,
                   predictor.box_threshold, trained_on, predictor.synthetic)

    @property
    def device_uid(self) -> str:
        """The observer device's UID: the same for every output of one model file."""
        return generate_uid(entropy_srcs=[ALGORITHM_NAME, __version__, self.sha256])


@dataclass
class OutputSeries:
    """One SR and one presentation-state series per study and run, with instance numbers counting up."""

    series: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def next(self, study_uid: str, kind: str) -> tuple[str, int]:
        key = (study_uid, kind)
        uid = self.series.setdefault(key, hd.UID())
        self.counts[key] = self.counts.get(key, 0) + 1
        return uid, self.counts[key]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Make ``path`` (and its parents) and check that a file can be written in it, before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PneumoniaError(
            f"--dicom-out {path}: cannot write there ({reason}); give a folder you can write to") from None
    return path


def write_dicom_outputs(
    out_dir: Path, named: Sequence[tuple[str, FilePrediction]], model: ModelIdentity,
) -> list[tuple[Path, str]]:
    """Write ``<name>.sr.dcm`` and ``<name>.pr.dcm`` for each scored prediction; return (file, why) for those
    whose header cannot give them. Raises :class:`PneumoniaError` when a file cannot be written."""
    out_dir = Path(out_dir)
    series = OutputSeries()
    skipped = []
    for name, prediction in named:
        if not prediction.scored:
            continue
        if prediction.info is not None and not prediction.info.has_header:
            skipped.append((prediction.file, "no DICOM SR or presentation state: a PNG or JPEG has no DICOM header "
                                             "for them to reference"))
            continue
        try:
            header = source_header(prediction.file)
            report, state = build_outputs(header, prediction, model, series)
        except SourceHeaderError as exc:
            skipped.append((prediction.file, f"no DICOM SR or presentation state: {exc}"))
            continue
        save_pair(report, out_dir / f"{name}{SR_SUFFIX}", state, out_dir / f"{name}{PR_SUFFIX}")
    return skipped


def save_pair(report: pydicom.Dataset, report_path: Path, state: pydicom.Dataset, state_path: Path) -> None:
    """Both files or neither: each is written under a temporary name and renamed once both are complete."""
    try:
        with atomic_path(report_path) as report_tmp, atomic_path(state_path) as state_tmp:
            report.save_as(report_tmp, enforce_file_format=True)
            state.save_as(state_tmp, enforce_file_format=True)
    except OSError as exc:
        raise PneumoniaError(
            f"{report_path.parent}: cannot write {report_path.name} and {state_path.name} "
            f"({exc.strerror or type(exc).__name__}); free space there or give another --dicom-out"
        ) from None


def source_header(path: Path) -> pydicom.Dataset:
    """The source image's header (no pixels), with empty Type 2 patient and study attributes where it lacks them.

    Raises :class:`SourceHeaderError` when it lacks a UID the outputs must reference.
    """
    try:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:  # no preamble and "DICM": the reader accepted it as a headerless image
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:
        raise SourceHeaderError(f"its header cannot be read again ({type(exc).__name__}); predict it again") from None
    missing = [keyword for keyword in _REFERENCED if not str(header.get(keyword, "") or "").strip()]
    if missing:
        raise SourceHeaderError(
            f"the file has no {', '.join(missing)}, which they must reference; export the image with its UIDs "
            "(a PACS or an anonymiser that replaces UIDs keeps them)"
        )
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    age = str(header.get("PatientAge", "") or "").strip()
    if age and not re.fullmatch(r"\d{3}[DWMY]", age):
        # RSNA's files give years as a bare number ("51"), as the reader reads them; copied as they are they would
        # make the outputs invalid DICOM (AS is "051Y"). An age that is not even that is left out (Type 3).
        if age.isdigit() and len(age) <= 3:
            header.PatientAge = f"{int(age):03d}Y"
        else:
            del header.PatientAge
    if "SamplesPerPixel" not in header:
        header.SamplesPerPixel = 1  # the reader only scores single-sample (greyscale) images
    return header


def build_outputs(
    header: pydicom.Dataset, prediction: FilePrediction, model: ModelIdentity, series: OutputSeries,
) -> tuple[hd.sr.ComprehensiveSR, hd.pr.GrayscaleSoftcopyPresentationState]:
    """The SR and the presentation state of one scored image; header values highdicom refuses raise
    :class:`SourceHeaderError`."""
    try:
        with warnings.catch_warnings():
            # highdicom warns about a one-part PatientName: the source's, copied as it is (RSNA's are UIDs).
            warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
            return (build_report(header, prediction, model, series),
                    build_presentation_state(header, prediction, model, series))
    except (ValueError, RenderingError) as exc:  # highdicom's and pydicom's word for a bad value
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceHeaderError(f"highdicom refuses a value of its header ({first}); correct the header") from None


def box_polyline(box: Sequence[float]) -> np.ndarray:
    """(x, y, width, height) in original pixels -> its closed outline, 5 x (column, row), the first point repeated."""
    x, y, w, h = (float(v) for v in box)
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=np.float64)


def area_measurement(fraction: float, mm2: float | None) -> hd.sr.Measurement:
    """An area in mm² where the spacing is known, else in % of the image."""
    if mm2 is not None:
        return hd.sr.Measurement(name=AREA, value=float(mm2), unit=codes.UCUM.SquareMillimeter)
    return hd.sr.Measurement(name=AREA, value=100 * float(fraction), unit=codes.UCUM.Percent)


def algorithm(model: ModelIdentity, prediction: FilePrediction) -> hd.sr.AlgorithmIdentification:
    """TID 4019 of the image-level group: the name, the version, and what a reader must know as its parameters."""
    parameters = [
        f"model file: {model.file_name}",
        f"model sha256: {model.sha256}",
        f"operating point: probability >= {model.threshold:.4f} is pneumonia (chosen on val)",
        f"boxes: detector score >= {model.box_threshold:.4f}, under a positive label only",
        f"trained on: {model.trained_on}",
    ]
    if model.synthetic:
        parameters.append(f"{NOT_CLINICAL}: a test of the software, not a diagnosis")
    if prediction.info.pixel_spacing_note:  # ImagerPixelSpacing used (magnified areas), or why mm² are unknown
        parameters.append(f"pixel spacing: {prediction.info.pixel_spacing_note}")
    if prediction.answer.unlike:
        parameters.append(f"{prediction.answer.why_unlike}; do not trust this result")
    return hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__, parameters=parameters)


def series_description(model: ModelIdentity) -> str:
    return f"pneumonia AI: {NOT_CLINICAL}" if model.synthetic else "pneumonia AI results (unverified)"


def build_report(
    header: pydicom.Dataset, prediction: FilePrediction, model: ModelIdentity, series: OutputSeries,
) -> hd.sr.ComprehensiveSR:
    """The TID 1500 Measurement Report of one scored image (see the module's docstring)."""
    answer, info = prediction.answer, prediction.info
    # The parameters once, in the image-level group; each box's group names the algorithm and its version.
    box_algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__)
    image_measurements = [hd.sr.Measurement(name=PROBABILITY, value=float(answer.probability),
                                            unit=codes.UCUM.NoUnits)]
    if prediction.area_fraction is not None:  # the union of the boxes: the CSV's area
        image_measurements.append(area_measurement(prediction.area_fraction, prediction.area_mm2))
    groups: list = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="pneumonia: whole image"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm(model, prediction),
        measurements=image_measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            PNEUMONIA, codes.SCT.Present if answer.positive else codes.SCT.Absent)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
    )]
    for number, (box, score) in enumerate(zip(answer.boxes, answer.confidences), start=1):
        fraction = area_fraction([box], info.rows, info.columns)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"opacity {number}"),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=box_polyline(box),
                source_image=hd.sr.SourceImageForRegion.from_source_image(header),
            ),
            finding_type=OPACITY,
            finding_sites=[hd.sr.FindingSite(LUNG)],
            algorithm_id=box_algorithm,
            measurements=[hd.sr.Measurement(name=BOX_SCORE, value=float(score), unit=codes.UCUM.NoUnits),
                          area_measurement(fraction, area_mm2(fraction, info))],
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid, name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER,
            model_name=model.file_name[:64], serial_number=model.sha256),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    series_uid, number = series.next(header.StudyInstanceUID, "SR")
    return hd.sr.ComprehensiveSR(
        evidence=[header], content=content[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=number, manufacturer=MANUFACTURER, is_complete=True,
        series_description=series_description(model),
    )


def caption(prediction: FilePrediction, model: ModelIdentity) -> str:
    """The presentation state's one line: the probability, the label and its threshold, the caveats."""
    answer = prediction.answer
    label = "pneumonia" if answer.positive else "no pneumonia"
    # The CSV's and the table's 4 decimals: at 3, a probability of 0.9998 would read 1.000.
    parts = [f"p(pneumonia) = {answer.probability:.4f}: {label} (threshold {model.threshold:.3f})",
             f"{len(answer.boxes)} box(es)" if answer.boxes else "no boxes"]
    if answer.unlike:
        parts.append("UNLIKE THE TRAINING IMAGES: do not trust this")
    if model.synthetic:
        parts.append(NOT_CLINICAL)
    return "; ".join(parts)


def build_presentation_state(
    header: pydicom.Dataset, prediction: FilePrediction, model: ModelIdentity, series: OutputSeries,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Boxes (closed polylines, their scores at the top-left corners) and the caption over the source image.

    The image's own window is kept (highdicom copies it); the Presentation LUT says INVERSE where the image
    is shown inverted (MONOCHROME1 or its own Presentation LUT Shape), since a presentation state's LUT
    replaces the image's photometric interpretation in the display pipeline.
    """
    answer = prediction.answer
    layer = hd.pr.GraphicLayer(
        layer_name="PNEUMONIA AI", order=1, display_color=hd.color.CIELabColor.from_rgb(*PREDICTED_COLOUR),
        description=("pneumonia AI: " + (NOT_CLINICAL if model.synthetic else "boxes and caption"))[:64],
    )
    boxes = [hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=box_polyline(box),
                                 units=hd.pr.AnnotationUnitsValues.PIXEL) for box in answer.boxes]
    # Each box's score at its top-left corner, written as the PNG overlays write it.
    texts = [hd.pr.TextObject(f"{score:.2f}", units=hd.pr.AnnotationUnitsValues.PIXEL,
                              anchor_point=(float(box[0]), float(box[1])), anchor_point_visible=False)
             for box, score in zip(answer.boxes, answer.confidences)]
    # DISPLAY units: the caption runs along the top of whatever part of the image is shown.
    texts.append(hd.pr.TextObject(caption(prediction, model), units=hd.pr.AnnotationUnitsValues.DISPLAY,
                                  bounding_box=(0.0, 0.0, 1.0, 0.05),
                                  text_justification=hd.pr.TextJustificationValues.LEFT))
    annotation = hd.pr.GraphicAnnotation(referenced_images=[header], graphic_layer=layer,
                                         graphic_objects=boxes or None, text_objects=texts)
    inverse = presentation_inverse(header, str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1")
    shape = hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
    series_uid, number = series.next(header.StudyInstanceUID, "PR")
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[header], series_instance_uid=series_uid, series_number=PR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=number, manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{ALGORITHM_NAME} {model.file_name}"[:64], software_versions=__version__,
        device_serial_number=model.sha256,  # the software "device" is the model file: its hash identifies it
        content_label="PNEUMONIA_AI",
        content_description=("pneumonia AI: " + (NOT_CLINICAL if model.synthetic else "boxes, probability"))[:64],
        graphic_annotations=[annotation], graphic_layers=[layer],
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=shape),
        series_description=series_description(model),
    )

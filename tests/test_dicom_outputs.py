"""`pneumonia predict --dicom-out`: the SR and the presentation state of each scored image, read back with pydicom and
highdicom and checked against the source image's UIDs and the CSV's numbers.

The predictor is an untrained classifier with the label threshold at 0 (every scored image positive, so every one has
boxes) and an untrained detector whose boxes all pass: the plumbing after the networks is what is tested here.
"""

import contextlib
import dataclasses
import csv
import hashlib
import io
import shutil
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage

import pneumonia.prediction
from pneumonia import __version__
from pneumonia.prediction import dicom_outputs
from pneumonia.data.phantom.dicom_writer import write_dicom
from pneumonia.data.phantom.patients import draw_patients
from pneumonia.data.phantom.render import render
from pneumonia.__main__ import main
from pneumonia.data.dicom.read import read_dicom
from pneumonia.prediction.dicom_outputs import NOT_CLINICAL, PNEUMONIA, ModelIdentity, build_outputs, source_header
from pneumonia.core.errors import PneumoniaError
from pneumonia.prediction.predict import FilePrediction, area_mm2
from pneumonia.prediction.predictor import ImageAnswer, load_predictor
from dicom_writer import film, write_test_dicom
from tiny_predictor import write_predictor, write_untrained_classifier

SPACING = 0.5  # mm, of the phantom image; the film has no PixelSpacing


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return write_untrained_classifier(tmp_path_factory.mktemp("model") / "classifier.safetensors")


@pytest.fixture(scope="module")
def model(classifier):
    return write_predictor(classifier.with_name("pneumonia.safetensors"), classifier, threshold=0.0)


@pytest.fixture(scope="module")
def predictor(model):
    return load_predictor(model)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Scored: a phantom JPEG with spacing (and its copy in a subfolder, the same stem), a 12-bit MONOCHROME1 film
    128 rows x 96 columns without spacing, a film without StudyInstanceUID; not scored: an abdomen, a broken file."""
    folder = tmp_path_factory.mktemp("scans")
    patient = next(p for p in draw_patients(10, seed=3) if p.opacities)
    write_dicom(folder / "a.dcm", render(patient, 128).pixels, patient_id=patient.patient_id,
                pixel_spacing=SPACING)
    (folder / "nested").mkdir()
    shutil.copy(folder / "a.dcm", folder / "nested" / "a.dcm")
    write_test_dicom(folder / "b.dcm", film(128, 12)[:, :96], bits_stored=12, photometric="MONOCHROME1",
                     pixel_spacing=None, patient_id="film")
    write_test_dicom(folder / "c.dcm", film(64, 8), body_part="ABDOMEN", patient_id="abdomen")
    no_study = write_test_dicom(folder / "d.dcm", film(64, 8, seed=1), patient_id="nostudy")
    ds = pydicom.dcmread(no_study)
    del ds.StudyInstanceUID
    ds.save_as(no_study)
    (folder / "broken.dcm").write_bytes(b"not a DICOM file")
    return folder


@pytest.fixture(scope="module")
def predicted(model, scans, tmp_path_factory):
    """One run of the command over the folder: its exit code, stderr, CSV rows by file and the output folder."""
    root = tmp_path_factory.mktemp("run")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["predict", str(scans), "--model", str(model), "--out", str(root / "p.csv"),
                     "--dicom-out", str(root / "dicom")])
    with open(root / "p.csv", newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    return code, err.getvalue(), rows, root / "dicom"


def test_an_sr_and_a_presentation_state_for_each_scored_image_and_nothing_else(predicted, scans):
    code, err, rows, out = predicted
    assert {r["status"] for f, r in rows.items() if f.endswith(("a.dcm", "b.dcm", "d.dcm"))} == {"scored"}
    assert (rows[str(scans / "c.dcm")]["status"], rows[str(scans / "broken.dcm")]["status"]) == ("not_chest",
                                                                                                 "unreadable")
    # d.dcm was scored but has no StudyInstanceUID to reference; nothing half-written is left (no .tmp files)
    assert sorted(p.name for p in out.iterdir()) == [
        "a-2.pr.dcm", "a-2.sr.dcm", "a.pr.dcm", "a.sr.dcm", "b.pr.dcm", "b.sr.dcm"]
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 3
    [missing_uid] = [line for line in lines if "d.dcm" in line]
    assert missing_uid == (
        f"pneumonia predict: {scans / 'd.dcm'}: no DICOM SR or presentation state: the file has no StudyInstanceUID, "
        "which they must reference; export the image with its UIDs (a PACS or an anonymiser that replaces UIDs "
        "keeps them)")


def outputs_of(out, name):
    """The SR read by highdicom and by pydicom, and the presentation state read by pydicom (highdicom has no reader)."""
    sr_path, pr_path = out / f"{name}.sr.dcm", out / f"{name}.pr.dcm"
    return hd.sr.srread(sr_path), pydicom.dcmread(sr_path), pydicom.dcmread(pr_path)


def csv_boxes(row):
    return [tuple(map(float, b.split())) for b in row["boxes"].split(";") if b]


def box_of(points):
    """(x, y, width, height) of a drawn outline, which must be the box's closed rectangle (the first point last)."""
    (x, y), (w, h) = points[0], points[2] - points[0]
    np.testing.assert_allclose(points, [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], atol=1e-4)
    return x, y, w, h


BOX_TOLERANCE = 0.051  # the CSV's 0.1 pixel, plus the float32 of DICOM's graphic data


@pytest.mark.parametrize("name, source", [("a", "a.dcm"), ("a-2", "nested/a.dcm"), ("b", "b.dcm")])
def test_the_sr_references_the_source_and_carries_the_csvs_numbers(predicted, scans, model, name, source):
    _, _, rows, out = predicted
    row, src = rows[str(scans / source)], pydicom.dcmread(scans / source)
    sr, raw, _ = outputs_of(out, name)
    assert raw.SOPClassUID == ComprehensiveSRStorage and isinstance(sr, hd.sr.ComprehensiveSR)
    assert (raw.StudyInstanceUID, raw.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert raw.SeriesInstanceUID != src.SeriesInstanceUID and raw.SOPInstanceUID != src.SOPInstanceUID
    [evidence] = raw.CurrentRequestedProcedureEvidenceSequence
    [series] = evidence.ReferencedSeriesSequence
    [instance] = series.ReferencedSOPSequence
    assert (evidence.StudyInstanceUID, series.SeriesInstanceUID, instance.ReferencedSOPInstanceUID,
            instance.ReferencedSOPClassUID) == (src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID,
                                                src.SOPClassUID)
    assert NOT_CLINICAL in raw.SeriesDescription
    assert (src.PatientAge, raw.PatientAge) == ("50", "050Y")  # RSNA's bare years, made a valid AS

    [image] = sr.content.get_image_measurement_groups()
    assert image.finding_type == PNEUMONIA
    [reference] = image.source_images
    assert (reference.referenced_sop_instance_uid, reference.referenced_sop_class_uid) == (src.SOPInstanceUID,
                                                                                          src.SOPClassUID)
    [probability] = image.get_measurements(name=codes.DCM.Probability)
    assert probability.value == pytest.approx(float(row["probability"]), abs=5e-5)
    [decision] = image.get_qualitative_evaluations()
    assert row["label"] == "1" and (decision.name, decision.value) == (PNEUMONIA, codes.SCT.Present)
    [union] = image.get_measurements(name=codes.SCT.Area)
    if row["area_mm2"]:
        assert union.unit == codes.UCUM.SquareMillimeter
        assert union.value == pytest.approx(float(row["area_mm2"]), abs=0.5)
    else:
        assert union.unit == codes.UCUM.Percent
        assert union.value == pytest.approx(float(row["area_percent"]), abs=0.005)
    texts = lambda concept: [i.value for i in hd.sr.utils.find_content_items(image[0], name=concept)]
    assert texts(codes.DCM.AlgorithmName) == ["pneumonia"] and texts(codes.DCM.AlgorithmVersion) == [__version__]
    parameters = texts(codes.DCM.AlgorithmParameters)
    assert f"model sha256: {hashlib.sha256(model.read_bytes()).hexdigest()}" in parameters
    assert any(NOT_CLINICAL in p for p in parameters)

    boxes, scores = csv_boxes(row), [float(c) for c in row["confidences"].split(";")]
    groups = sr.content.get_planar_roi_measurement_groups()
    assert boxes and len(groups) == len(boxes)
    for group, box, score in zip(groups, boxes, scores):
        assert (group.finding_type, [s.value for s in group.finding_sites]) == (codes.DCM.Opacity, [codes.SCT.Lung])
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert box_of(group.roi.value) == pytest.approx(box, abs=BOX_TOLERANCE)
        assert group.roi.value[:, 0].max() <= src.Columns and group.roi.value[:, 1].max() <= src.Rows
        region_source = hd.sr.SourceImageForRegion.from_dataset(group.roi.ContentSequence[0])
        assert region_source.referenced_sop_instance_uid == src.SOPInstanceUID
        [certainty] = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        assert certainty.value == pytest.approx(score, abs=5e-5)
        [area] = group.get_measurements(name=codes.SCT.Area)
        w, h = box[2:]
        error = 0.05 * (w + h) + 0.01  # from the CSV's rounding of the width and height
        if row["area_mm2"]:
            assert area.unit == codes.UCUM.SquareMillimeter
            assert area.value == pytest.approx(w * h * SPACING**2, abs=error * SPACING**2)
        else:
            pixels = src.Rows * src.Columns
            assert area.value == pytest.approx(100 * w * h / pixels, abs=100 * error / pixels)


@pytest.mark.parametrize("name, source, shape", [("a", "a.dcm", "IDENTITY"), ("b", "b.dcm", "INVERSE")])
def test_the_presentation_state_draws_the_csvs_boxes_and_caption_over_the_source(predicted, scans, name, source,
                                                                                  shape):
    _, _, rows, out = predicted
    row, src = rows[str(scans / source)], pydicom.dcmread(scans / source)
    _, _, state = outputs_of(out, name)
    assert state.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert (state.StudyInstanceUID, state.PatientID) == (src.StudyInstanceUID, src.PatientID)
    [series] = state.ReferencedSeriesSequence
    [image] = series.ReferencedImageSequence
    assert (series.SeriesInstanceUID, image.ReferencedSOPInstanceUID, image.ReferencedSOPClassUID) == (
        src.SeriesInstanceUID, src.SOPInstanceUID, src.SOPClassUID)
    assert state.PresentationLUTShape == shape  # MONOCHROME1 stays inverted under the presentation state
    [annotation] = state.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    boxes = csv_boxes(row)
    drawn = [np.asarray(o.GraphicData, float).reshape(-1, 2) for o in annotation.GraphicObjectSequence]
    assert [(o.GraphicType, o.GraphicAnnotationUnits) for o in annotation.GraphicObjectSequence] == [
        ("POLYLINE", "PIXEL")] * len(boxes)
    for points, box in zip(drawn, boxes, strict=True):
        assert box_of(points) == pytest.approx(box, abs=BOX_TOLERANCE)
    *scores, caption = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert scores == [f"{float(c):.2f}" for c in row["confidences"].split(";")]
    assert caption.startswith(f"p(pneumonia) = {row['probability']}: pneumonia (threshold 0.000)")
    assert caption.endswith(NOT_CLINICAL) and "\n" not in caption
    assert NOT_CLINICAL in state.ContentDescription


def test_images_unlike_the_training_images_get_none(classifier, scans, tmp_path, capsys):
    strict = write_predictor(tmp_path / "strict.safetensors", classifier, ood_threshold=0.0)
    out = tmp_path / "dicom"
    assert main(["predict", str(scans / "a.dcm"), "--model", str(strict), "--out", str(tmp_path / "p.csv"),
                 "--dicom-out", str(out)]) == 3
    assert "0 scored, 1 unlike training" in capsys.readouterr().out
    assert list(out.iterdir()) == []


def test_a_dicom_out_that_cannot_be_written_is_one_line_before_any_work(model, scans, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    csv_path = tmp_path / "p.csv"
    assert main(["predict", str(scans / "a.dcm"), "--model", str(model), "--out", str(csv_path),
                 "--dicom-out", str(blocker / "dicom")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pneumonia predict: error: --dicom-out {blocker / 'dicom'}: cannot write there (")
    assert err.rstrip().endswith("give a folder you can write to") and len(err.strip().splitlines()) == 1
    assert not csv_path.exists()


def test_without_highdicom_dicom_out_is_one_line_naming_it(scans, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # what an install without highdicom gives on import
    monkeypatch.delitem(sys.modules, "pneumonia.prediction.dicom_outputs")
    monkeypatch.delattr(pneumonia.prediction, "dicom_outputs")
    assert main(["predict", str(scans / "a.dcm"), "--model", str(tmp_path / "none.safetensors"),
                 "--dicom-out", str(tmp_path / "dicom")]) == 1
    assert capsys.readouterr().err == ("pneumonia predict: error: --dicom-out needs highdicom, which is not "
                                       "installed; pip install highdicom\n")


def hand_set(scans, model, predictor, *, positive, unlike=False, synthetic=True, spacing_note=""):
    """The SR and presentation state of a.dcm for a hand-set answer (no network run), as built."""
    info = dataclasses.replace(read_dicom(scans / "a.dcm", 32)[1], pixel_spacing_note=spacing_note)
    boxes = ((30.0, 40.0, 20.0, 10.0),) if positive else ()
    answer = ImageAnswer(distance=9.5, unlike=unlike, probability=0.8 if positive else 0.1, positive=positive,
                         boxes=boxes, confidences=(0.7,) if positive else (), classifier_probability=0.8,
                         detector_probability=0.6,
                         why_unlike="unlike the training images: distance 9.5 > 8.0" if unlike else "")
    fraction = 200 / (128 * 128) if positive else None
    prediction = FilePrediction(scans / "a.dcm", "p", "scored", answer, area_fraction=fraction,
                                area_mm2=None if fraction is None else area_mm2(fraction, info), info=info)
    identity = ModelIdentity.of(model, predictor)
    if not synthetic:
        identity = ModelIdentity(identity.file_name, identity.sha256, identity.threshold, identity.box_threshold,
                                 "local data (18 training images)", synthetic=False)
    return build_outputs(source_header(scans / "a.dcm"), prediction, identity, dicom_outputs.OutputSeries())


def read_back(folder, report, state):
    """Write the pair into ``folder`` and read it back: (the SR by highdicom, the presentation state by pydicom)."""
    dicom_outputs.save_pair(report, folder / "a.sr.dcm", state, folder / "a.pr.dcm")
    return hd.sr.srread(folder / "a.sr.dcm"), pydicom.dcmread(folder / "a.pr.dcm")


def test_a_negative_image_has_its_probability_and_absent_but_no_region(scans, model, predictor, tmp_path):
    report, state = read_back(tmp_path, *hand_set(scans, model, predictor, positive=False))
    [image] = report.content.get_image_measurement_groups()
    assert report.content.get_planar_roi_measurement_groups() == []
    assert image.get_measurements(name=codes.SCT.Area) == []
    assert image.get_measurements(name=codes.DCM.Probability)[0].value == pytest.approx(0.1)
    assert image.get_qualitative_evaluations()[0].value == codes.SCT.Absent
    [annotation] = state.GraphicAnnotationSequence
    assert "GraphicObjectSequence" not in annotation
    [caption] = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert caption.startswith("p(pneumonia) = 0.1000: no pneumonia (threshold 0.000); no boxes")


def test_an_unlike_image_and_a_magnified_spacing_are_stated_and_a_real_data_model_says_no_phantom(
        scans, model, predictor, tmp_path):
    note = "ImagerPixelSpacing used (at the detector plane, so areas include the X-ray magnification)"
    report, state = read_back(tmp_path, *hand_set(scans, model, predictor, positive=True, unlike=True, synthetic=False,
                                                  spacing_note=note))
    [image] = report.content.get_image_measurement_groups()
    parameters = [i.value for i in hd.sr.utils.find_content_items(image[0], name=codes.DCM.AlgorithmParameters)]
    assert "unlike the training images: distance 9.5 > 8.0; do not trust this result" in parameters
    assert f"pixel spacing: {note}" in parameters
    assert "trained on: local data (18 training images)" in parameters
    caption = state.GraphicAnnotationSequence[0].TextObjectSequence[-1].UnformattedTextValue
    assert caption == ("p(pneumonia) = 0.8000: pneumonia (threshold 0.000); 1 box(es); "
                       "UNLIKE THE TRAINING IMAGES: do not trust this")
    for dataset in (report, state):
        assert "phantom" not in str(dataset) and "clinical" not in str(dataset)
    [area] = report.content.get_planar_roi_measurement_groups()[0].get_measurements(name=codes.SCT.Area)
    assert area.value == pytest.approx(200 * SPACING**2)


def test_an_image_gets_both_files_or_neither(scans, model, predictor, tmp_path):
    report, state = hand_set(scans, model, predictor, positive=True)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    state.save_as = disk_full
    with pytest.raises(PneumoniaError, match=r"cannot write .* \(No space left on device\); free space there"):
        dicom_outputs.save_pair(report, tmp_path / "a.sr.dcm", state, tmp_path / "a.pr.dcm")
    assert list(tmp_path.iterdir()) == []

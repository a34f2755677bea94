"""The RSNA label files: parsing, deduplication and one-line errors naming file and row."""

from pathlib import Path

import pytest

from pneumonia.data import rsna
from pneumonia.core.errors import DatasetError

LABELS = """\
patientId,x,y,width,height,Target
p-neg,,,,,0
p-pos,264.0,152.0,213.0,379.0,1
p-pos,562.0,152.0,256.0,453.0,1
p-other,,,,,0
"""

CLASSES = """\
patientId,class
p-neg,Normal
p-pos,Lung Opacity
p-pos,Lung Opacity
p-other,No Lung Opacity / Not Normal
"""


def write(raw_dir: Path, labels: str = LABELS, classes: str | None = CLASSES, newline: str = "\n", bom: bool = False):
    raw_dir.mkdir(exist_ok=True)
    prefix = "\ufeff" if bom else ""
    (raw_dir / rsna.LABELS_CSV).write_text(prefix + labels, encoding="utf-8", newline=newline)
    if classes is not None:
        (raw_dir / rsna.CLASSES_CSV).write_text(prefix + classes, encoding="utf-8", newline=newline)
    return raw_dir


def error_of(raw_dir: Path) -> str:
    with pytest.raises(DatasetError) as info:
        rsna.read_patients(raw_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_files(tmp_path):
    patients = rsna.read_patients(write(tmp_path))
    assert patients == [
        rsna.Patient("p-neg", 0, (), "Normal"),
        rsna.Patient("p-pos", 1, ((264.0, 152.0, 213.0, 379.0), (562.0, 152.0, 256.0, 453.0)), "Lung Opacity"),
        rsna.Patient("p-other", 0, (), "No Lung Opacity / Not Normal"),
    ]


def test_class_file_optional(tmp_path):
    patients = rsna.read_patients(write(tmp_path, classes=None))
    assert [p.detailed_class for p in patients] == ["", "", ""]


def test_crlf_and_bom(tmp_path):
    expected = rsna.read_patients(write(tmp_path / "plain"))
    assert rsna.read_patients(write(tmp_path / "excel", newline="\r\n", bom=True)) == expected


def test_missing_column(tmp_path):
    labels = LABELS.replace(",Target", "").replace(",0\n", "\n").replace(",1\n", "\n")
    message = error_of(write(tmp_path, labels=labels))
    assert rsna.LABELS_CSV in message and "Target" in message


def test_missing_class_column(tmp_path):
    message = error_of(write(tmp_path, classes="patientId,kind\np-neg,Normal\n"))
    assert rsna.CLASSES_CSV in message and "class" in message


def test_non_numeric_coordinate_names_row(tmp_path):
    message = error_of(write(tmp_path, labels=LABELS.replace("562.0", "abc")))
    assert rsna.LABELS_CSV in message and "row 4" in message


def test_negative_row_with_coordinates(tmp_path):
    message = error_of(write(tmp_path, labels=LABELS.replace("p-neg,,,,,0", "p-neg,1,2,3,4,0")))
    assert "row 2" in message


def test_target_must_be_binary(tmp_path):
    message = error_of(write(tmp_path, labels=LABELS.replace("p-other,,,,,0", "p-other,,,,,2")))
    assert "row 5" in message and "Target" in message


def test_semicolon_file(tmp_path):
    message = error_of(write(tmp_path, labels=LABELS.replace(",", ";")))
    assert "semicolon" in message and "comma-separated" in message


def test_conflicting_target(tmp_path):
    labels = LABELS + "p-neg,10,10,20,20,1\n"
    message = error_of(write(tmp_path, labels=labels))
    assert "p-neg" in message and "row 6" in message


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "a\\b"])
def test_path_like_patient_id(tmp_path, bad_id):
    message = error_of(write(tmp_path, labels=LABELS.replace("p-other", bad_id)))
    assert bad_id in message or repr(bad_id) in message


def test_patient_missing_from_class_file(tmp_path):
    classes = "patientId,class\np-pos,Lung Opacity\n"
    message = error_of(write(tmp_path, classes=classes))
    assert "2 patient(s)" in message and "p-neg" in message and "p-other" in message


def test_dedup_keeps_first_appearance(tmp_path):
    labels = """\
patientId,x,y,width,height,Target
b,1,2,3,4,1
a,,,,,0
b,5,6,7,8,1
c,,,,,0
a,,,,,0
"""
    classes = "patientId,class\nc,Normal\na,Normal\nb,Lung Opacity\n"
    patients = rsna.read_patients(write(tmp_path, labels=labels, classes=classes))
    assert [p.patient_id for p in patients] == ["b", "a", "c"]
    assert patients[0].boxes == ((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0))


def test_missing_labels_file(tmp_path):
    message = error_of(tmp_path)
    assert rsna.LABELS_CSV in message


def test_shown_as_names_the_source(tmp_path):
    with pytest.raises(DatasetError, match=r"^archive\.zip/stage_2_train_labels\.csv row 3"):
        rsna.read_patients(write(tmp_path, labels=LABELS.replace("264.0", "x")), shown_as="archive.zip")

"""Any labelled collection in: PNG and JPEG pictures, class folders, CSV tables, splits kept by patient (issue 30).

Every image is written here (Pillow, pydicom); nothing reads the shared real data.
"""

import csv
import random

import numpy as np
import pytest
from PIL import Image

from pneumonia.core.errors import DatasetError, ImageReadError, ParamsError
from pneumonia.data import download, dicom_to_npy, rsna
from pneumonia.data.collection import SKIPPED_TXT
from pneumonia.data.images import MAX_COLOUR_SPREAD, read_image_sizes
from pneumonia.data.manifest import read_manifest
from pneumonia.data.phantom.dicom_writer import write_dicom
from pneumonia.data.split import assign_image_splits
from pneumonia.prediction.predict import NO_HEADER, find_images
from pneumonia.__main__ import main
from project_params import project_params
from tiny_predictor import write_predictor, write_untrained_classifier


def _chest(seed: int, side: int = 48) -> np.ndarray:
    """A smooth grey image with some structure: two dark 'lungs' on a bright body (uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    image = 0.8 - 0.5 * (np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) * 20) + np.exp(-((x - 0.7) ** 2 + (y - 0.5) ** 2) * 20))
    return np.clip(255 * (image + 0.05 * rng.standard_normal((side, side))), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- pictures


def test_png_8_and_16_bit_and_grey_jpeg_stored_as_rgb(tmp_path):
    grey = _chest(0)
    Image.fromarray(grey).save(tmp_path / "a.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "b.png")  # 16-bit, the same grey levels
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "c.jpg", quality=95)
    (a,), info = read_image_sizes(tmp_path / "a.png", (48,))
    (b,), _ = read_image_sizes(tmp_path / "b.png", (48,))
    (c,), _ = read_image_sizes(tmp_path / "c.jpg", (48,))
    np.testing.assert_array_equal(a, grey)
    np.testing.assert_array_equal(b, grey)
    assert np.abs(c.astype(int) - grey).mean() < 3  # JPEG's loss, no more
    assert (info.rows, info.columns, info.pixel_spacing_mm, info.has_header) == (48, 48, None, False)
    assert info.view == info.sex == info.modality == "" and info.age is None


def test_a_picture_is_resized_as_a_dicom_is_and_its_exif_orientation_applied(tmp_path):
    tall = np.zeros((60, 40), np.uint8)
    tall[:10] = 255  # a bright band at the top
    Image.fromarray(tall).save(tmp_path / "tall.png")
    (small,), info = read_image_sizes(tmp_path / "tall.png", (20,))
    assert small.shape == (20, 20) and (info.rows, info.columns) == (60, 40)
    assert small[0].mean() > 200 and small[-1].mean() < 10
    # The same pixels stored sideways with EXIF orientation 6 ("rotate 90° clockwise to show") read upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(tall, 1).copy()).save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    (upright,), turned = read_image_sizes(tmp_path / "sideways.jpg", (20,))
    assert (turned.rows, turned.columns) == (60, 40)
    assert upright[0].mean() > 200 and upright[-1].mean() < 20


@pytest.mark.parametrize("name, make, reason", [
    ("photo.jpg", lambda p: Image.fromarray(np.dstack([_chest(1), _chest(2)[::-1], _chest(3)[:, ::-1]])).save(p),
     "a colour picture"),
    ("bits.png", lambda p: Image.fromarray(_chest(1) > 128).save(p), "1-bit"),
    ("cut.png", lambda p: p.write_bytes((lambda b: b[: len(b) // 2])(_png_bytes())), "not a readable PNG or JPEG"),
    ("text.jpeg", lambda p: p.write_text("not a picture"), "not a readable PNG or JPEG"),
])
def test_what_is_not_a_greyscale_picture_is_refused_in_one_line(tmp_path, name, make, reason):
    make(tmp_path / name)
    with pytest.raises(ImageReadError, match=reason) as raised:
        read_image_sizes(tmp_path / name, (32,))
    assert str(tmp_path / name) in str(raised.value) and "\n" not in str(raised.value)


def _png_bytes() -> bytes:
    import io
    buffer = io.BytesIO()
    Image.fromarray(_chest(4, 96)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_colour_bound_separates_grey_jpegs_from_a_tinted_picture(tmp_path):
    grey = _chest(5)
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "grey.jpg", quality=70)
    read_image_sizes(tmp_path / "grey.jpg", (32,))  # low quality, still grey
    tinted = np.stack([grey, grey, np.clip(grey.astype(int) + 3 * int(MAX_COLOUR_SPREAD), 0, 255).astype(np.uint8)], 2)
    Image.fromarray(tinted).save(tmp_path / "tinted.png")
    with pytest.raises(ImageReadError, match="colour"):
        read_image_sizes(tmp_path / "tinted.png", (32,))


# --------------------------------------------------------------------------- splits by patient


def test_grouped_splits_never_put_one_patient_in_two_splits():
    rng = random.Random(0)
    patients = [f"p{rng.randrange(40)}" for _ in range(200)]
    labels = [int(p[1:]) % 3 == 0 for p in patients]
    for params in (project_params({"split": {"train_size": 0.6, "test_size": 0.2}}).split,
                   project_params({"split": {"train_size": 0.5, "test_size": 0.25, "stratify": True}}).split):
        splits, line = assign_image_splits(labels, patients, [""] * 200, params)
        homes = {}
        for patient, split in zip(patients, splits):
            homes.setdefault(patient, set()).add(split)
        assert all(len(h) == 1 for h in homes.values()) and set(splits) == {"train", "val", "test"}
        assert "grouped by patient" in line
    # The check can fail: split image by image, the same patients land in several splits.
    ungrouped, _ = assign_image_splits(labels, [str(i) for i in range(200)], [""] * 200, params)
    assert sum(len({s for p, s in zip(patients, ungrouped) if p == q}) > 1 for q in set(patients)) > 10


def test_a_collections_own_test_split_is_kept_and_val_carved_from_its_train():
    patients = ["a", "a", "b", "c", "c", "d", "e", "f", "g", "h"]
    given = ["train"] * 8 + ["test", "test"]
    params = project_params({"split": {"train_size": 0.5, "test_size": 0.2}}).split
    splits, line = assign_image_splits([0, 0, 1, 0, 0, 1, 0, 1, 1, 0], patients, given, params)
    assert splits[8:] == ["test", "test"] and "test" not in splits[:8]  # no second test split carved
    assert splits[0] == splits[1] and splits[3] == splits[4] and {"train", "val"} <= set(splits[:8])
    assert line.startswith("the collection's own splits kept (train 8, test 2 images); val carved")
    own_val, _ = assign_image_splits([0, 1, 0], ["a", "b", "c"], ["train", "val", "test"], params)
    assert own_val == ["train", "val", "test"]


# --------------------------------------------------------------------------- folders and tables


def _folder_collection(root):
    """chest_xray/{train,test}/{NORMAL,PNEUMONIA}: PNG, JPEG and DICOM, two images of one patient, strays."""
    top = root / "chest_xray"
    files = {
        "train/NORMAL/IM-0001-0001.png": 0, "train/NORMAL/IM-0002-0001.jpeg": 0, "train/NORMAL/IM-0003-0001.dcm": 0,
        "train/NORMAL/IM-0004-0001.png": 0, "train/NORMAL/IM-0005-0001.png": 0, "train/NORMAL/IM-0006-0001.png": 0,
        "train/PNEUMONIA/person1_bacteria_1.jpeg": 1, "train/PNEUMONIA/person1_virus_2.jpeg": 1,
        "train/PNEUMONIA/person2_virus_3.png": 1, "train/PNEUMONIA/person3_bacteria_4.png": 1,
        "train/PNEUMONIA/person4_bacteria_5.png": 1, "train/PNEUMONIA/person5_bacteria_6.png": 1,
        "test/NORMAL/IM-0100-0001.jpeg": 0, "test/PNEUMONIA/person100_virus_1.png": 1,
    }
    for i, (name, label) in enumerate(files.items()):
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = _chest(i, 64)
        if path.suffix == ".dcm":
            write_dicom(path, pixels, patient_id="IM-0003")
        elif path.suffix == ".jpeg":
            Image.fromarray(np.stack([pixels] * 3, axis=2)).save(path, quality=95)
        else:
            Image.fromarray(pixels).save(path)
    (top / "train" / "NORMAL" / ".DS_Store").write_text("x")
    (top / "train" / "README.txt").write_text("stray")
    (top / "__MACOSX").mkdir()
    return files


FOLDER = {"download": {"source": "folder", "patient_pattern": r"(person\d+|IM-\d+)"}}
CONVERT = {"split": {"train_size": 0.5, "test_size": 0.2}, "dicom_to_npy": {"image_size": 32, "workers": 1, "grid_images": 2}}


def test_class_folders_become_the_normalised_form_and_convert(tmp_path):
    files = _folder_collection(tmp_path / "kaggle")
    params = project_params(FOLDER | CONVERT | {"download": FOLDER["download"] | {"path": str(tmp_path / "kaggle")}})
    report = download.run(params.download, seed=0, raw_dir=tmp_path / "raw")
    assert (report.patients, report.positives, report.with_boxes, report.skipped) == (14, 7, 0, 2)
    assert "no boxes" in report.summary() and SKIPPED_TXT in report.summary()
    skipped = (tmp_path / "raw" / SKIPPED_TXT).read_text()
    assert "README.txt: not inside a class folder" in skipped and ".DS_Store: not an image file" in skipped
    patients = rsna.read_patients(tmp_path / "raw")
    entries = {p.patient_id: e for p, e in zip(patients, rsna.read_index(tmp_path / "raw", patients))}
    assert entries["train__PNEUMONIA__person1_virus_2"] == rsna.ImageEntry("train__PNEUMONIA__person1_virus_2.jpeg",
                                                                           "person1", "train")
    assert {p.patient_id: p.target for p in patients} == {
        name.replace("/", "__").rsplit(".", 1)[0]: label for name, label in files.items()}

    converted = dicom_to_npy.run(tmp_path / "raw", tmp_path / "processed", params.dicom_to_npy, params.split)
    assert converted.counts["test"] == 2 and converted.counts["train"] + converted.counts["val"] == 12
    assert "the collection's own splits kept (train 12, test 2 images); val carved" in converted.summary()
    manifest = {r.patient_id: r for r in read_manifest(tmp_path / "processed")}
    assert manifest["train__PNEUMONIA__person1_bacteria_1"].split == manifest["train__PNEUMONIA__person1_virus_2"].split
    assert manifest["test__PNEUMONIA__person100_virus_1"].split == "test"
    png = manifest["train__NORMAL__IM-0001-0001"]
    assert (png.rows, png.columns, png.pixel_spacing_mm, png.view) == (64, 64, None, "")
    assert "no DICOM header" in png.pixel_spacing_note
    arrays = {s: np.load(tmp_path / "processed" / f"{s}.npy") for s in ("train", "val", "test")}
    assert arrays["test"].shape == (2, 32, 32) and all(a.max() > 100 for a in arrays.values())


def test_folder_mistakes_are_one_line_errors(tmp_path):
    _folder_collection(tmp_path / "kaggle")
    params = project_params(FOLDER | {"download": FOLDER["download"] | {"path": str(tmp_path / "kaggle")}})
    other_names = params.download.model_copy(update={"classes": {"HEALTHY": 0, "SICK": 1}})
    with pytest.raises(DatasetError, match="no image .* in class folders named HEALTHY, SICK"):
        download.run(other_names, seed=0, raw_dir=tmp_path / "raw")
    params = project_params({"download": FOLDER["download"] | {"path": str(tmp_path / "kaggle"),
                                                               "patient_pattern": r"person\d+"}})
    with pytest.raises(DatasetError, match=r"test/NORMAL/IM-0100-0001.jpeg: its name does not match download.patient_pattern"):
        download.run(params.download, seed=0, raw_dir=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # nothing half-written
    with pytest.raises(ParamsError, match="download.patient_pattern"):
        project_params({"download": {"patient_pattern": "(unclosed"}})


def _table(root, rows, header="image,label,patient,split,x,y,width,height"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for row in rows:
        name = row.split(",")[0]
        if not (root / name).exists():
            Image.fromarray(_chest(len(name), 80)).save(root / name)
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def test_a_table_with_boxes_per_row_and_several_images_per_patient(tmp_path):
    _table(tmp_path / "site", [
        "images/1.png,1,P1,,10,10,20,30", "images/1.png,1,P1,,40,10,20,30", "images/2.png,pneumonia,P1,,,,,",
        "images/3.png,0,P2,,,,,", "images/4.png,NORMAL,P3,test,,,,", "images/5.png,1,P4,,5,5,50,50",
    ])
    params = project_params({"download": {"source": "table", "path": str(tmp_path / "site"),
                                          "classes": {"normal": 0, "pneumonia": 1}}})
    report = download.run(params.download, seed=0, raw_dir=tmp_path / "raw")
    assert (report.patients, report.positives, report.with_boxes) == (5, 3, 2)
    patients = {p.patient_id: p for p in rsna.read_patients(tmp_path / "raw")}
    assert patients["images__1"].boxes == ((10, 10, 20, 30), (40, 10, 20, 30))
    assert patients["images__2"].target == 1 and patients["images__2"].boxes == ()  # a positive without a box
    index = rsna.read_index(tmp_path / "raw", list(patients.values()))
    assert [e.patient for e in index] == ["P1", "P1", "P2", "P3", "P4"] and index[3].split == "test"


@pytest.mark.parametrize("rows, header, message", [
    (["images/1.png,maybe,,,,,,"], None, "row 2: label 'maybe' is neither 0, 1 nor a class"),
    (["images/1.png,0,,,1,2,3,4"], None, "row 2: a box on a negative image"),
    (["images/1.png,1,,,1,2,x,4"], None, "row 2: x,y,width,height are"),
    (["images/1.png,1,,later,,,,"], None, "row 2: split 'later' must be train, val, test or empty"),
    (["images/1.png,1,A,,,,,", "images/1.png,1,B,,,,,"], None, "row 3: images/1.png has another label, patient"),
    (["../1.png,1,,,,,,"], None, "must be a path inside"),
    (["images/1.png"], "image", "header lacks column\\(s\\) label"),
])
def test_table_mistakes_name_the_row(tmp_path, rows, header, message):
    _table(tmp_path / "site", [r for r in rows if not r.startswith("..")] or ["images/1.png,1,,,,,,"],
           header or "image,label,patient,split,x,y,width,height")
    (tmp_path / "site" / "labels.csv").write_text((header or "image,label,patient,split,x,y,width,height") + "\n"
                                                  + "\n".join(rows) + "\n")
    params = project_params({"download": {"source": "table", "path": str(tmp_path / "site")}})
    with pytest.raises(DatasetError, match=message):
        download.run(params.download, seed=0, raw_dir=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_missing_image_in_a_table_is_named(tmp_path):
    _table(tmp_path / "site", ["images/1.png,1,,,,,,"])
    (tmp_path / "site" / "labels.csv").write_text("image,label\nimages/1.png,1\nimages/9.png,0\n")
    params = project_params({"download": {"source": "table", "path": str(tmp_path / "site")}})
    with pytest.raises(DatasetError, match=r"row 3: .*images/9.png does not exist"):
        download.run(params.download, seed=0, raw_dir=tmp_path / "raw")


# --------------------------------------------------------------------------- predict on pictures


def test_predict_scores_png_and_jpeg_and_says_what_a_picture_cannot_tell(tmp_path):
    classifier = write_untrained_classifier(tmp_path / "classifier.safetensors")
    model = write_predictor(tmp_path / "pneumonia.safetensors", classifier)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.fromarray(_chest(7, 96)).save(pictures / "a.png")
    Image.fromarray(np.stack([_chest(8, 96)] * 3, axis=2)).save(pictures / "b.JPG")
    Image.fromarray(np.dstack([_chest(1), _chest(2)[::-1], _chest(3)[:, ::-1]])).save(pictures / "colour.jpeg")
    files, _ = find_images([pictures])
    assert [f.name for f in files] == ["a.png", "b.JPG", "colour.jpeg"]
    out = tmp_path / "pred.csv"
    code = main(["predict", str(pictures), "--model", str(model), "--out", str(out), "--dicom-out", str(tmp_path / "d")])
    with open(out, newline="") as handle:
        rows = {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}
    assert code == 1  # the colour picture could not be read
    for name in ("a.png", "b.JPG"):
        assert rows[name]["status"] == "scored" and 0 <= float(rows[name]["probability"]) <= 1
        assert NO_HEADER in rows[name]["reason"] and rows[name]["area_mm2"] == ""
    assert rows["colour.jpeg"]["status"] == "unreadable" and "colour picture" in rows["colour.jpeg"]["reason"]
    assert not list(tmp_path.glob("d/*.dcm"))  # no SR or presentation state for a picture: nothing to reference

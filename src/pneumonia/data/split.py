"""The train/val/test split rule, the reference's extended by a held-out test split.

Patients are taken in order of first appearance in the labels file: the first
``train_size`` of them are train, the last ``test_size`` test, the rest val
(the reference: 24000 train, the remaining 2684 val, no test). With
``stratify`` the same rule runs within each class, so every split keeps the
overall positive fraction (counts are then shared between the classes in
proportion to their sizes).

A collection may say more (:func:`assign_image_splits`): several images of one
patient are split as one unit, so a patient's images never land in two splits;
and a collection's own val and test images keep their split, the rule then
dividing only the rest (with its own test split, no second one is carved).
"""

from __future__ import annotations

from typing import Sequence

from pneumonia.core.errors import ParamsError
from pneumonia.core.params import SplitParams

SPLITS = ("train", "val", "test")


def _count(size: int | float, n_patients: int) -> int:
    return round(n_patients * size) if isinstance(size, float) else size


def split_counts(n_patients: int, train_size: int | float, test_size: int | float = 0) -> dict[str, int]:
    """How many patients each split gets: an int is a count, a float in (0, 1) a fraction of all."""
    n_train, n_test = _count(train_size, n_patients), _count(test_size, n_patients)
    n_val = n_patients - n_train - n_test
    if n_train < 1 or n_val < 1:
        raise ParamsError(
            f"params.yaml: split.train_size={train_size} and split.test_size={test_size} leave "
            f"{n_train} train and {n_val} val patients of {n_patients}; both need at least one: lower them"
        )
    return {"train": n_train, "val": n_val, "test": n_test}


def assign_splits(labels: Sequence[int], params: SplitParams) -> list[str]:
    """The split of each patient, in file order; ``labels`` are the patients' 0/1 targets."""
    n = len(labels)
    counts = split_counts(n, params.train_size, params.test_size)
    if not params.stratify:
        return _by_position(n, counts)
    splits = [""] * n
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        share = len(members) / n
        n_train = max(1, round(counts["train"] * share))
        n_test = round(counts["test"] * share)
        if len(members) - n_train - n_test < 1:
            raise ParamsError(
                f"params.yaml: split.stratify leaves no val patient of class {label} ({len(members)} in all); "
                "lower split.train_size or split.test_size, or turn stratify off"
            )
        sub = {"train": n_train, "val": len(members) - n_train - n_test, "test": n_test}
        for index, name in zip(members, _by_position(len(members), sub)):
            splits[index] = name
    return splits


def _by_position(n: int, counts: dict[str, int]) -> list[str]:
    return ["train"] * counts["train"] + ["val"] * (n - counts["train"] - counts["test"]) + ["test"] * counts["test"]


def assign_image_splits(
    labels: Sequence[int], patients: Sequence[str], given: Sequence[str], params: SplitParams
) -> tuple[list[str], str]:
    """The split of each image, and one line saying how they were made.

    ``patients``: each image's patient; ``given``: each image's split in the collection ("" = none).
    Given val and test images keep their split. The others are divided by :func:`assign_splits` applied
    to their patients in order of first appearance (a patient is positive when any of its images is);
    when the collection has its own test split, ``test_size`` is not applied, and when it has its own
    val split, all of them are train. A patient given images in two splits by the collection keeps them
    there (the collection's split is kept as it is) and is counted in the line.
    """
    given_names = set(given) - {""}
    free = [i for i, split in enumerate(given) if split in ("", "train")]
    splits = list(given)
    if "val" in given_names:
        for i in free:
            splits[i] = "train"
    elif free:
        order: dict[str, int] = {}
        for i in free:
            order[patients[i]] = max(order.get(patients[i], 0), labels[i])
        rule = params.model_copy(update={"test_size": 0}) if "test" in given_names else params
        chosen = dict(zip(order, assign_splits(list(order.values()), rule)))
        for i in free:
            splits[i] = chosen[patients[i]]
    grouped = len(set(patients)) < len(patients)
    if not given_names:
        line = "splits by split.* in file order" + (", grouped by patient" if grouped else "")
    else:
        kept = ", ".join(f"{name} {sum(s == name for s in given)}" for name in SPLITS if name in given_names)
        line = f"the collection's own splits kept ({kept} images)"
        if "val" not in given_names:
            line += "; val carved from its train images by split.train_size" + (", grouped by patient" if grouped else "")
    crossing = _patients_in_several_splits(patients, splits)
    if crossing:
        line += f"; WARNING: {crossing} patient(s) have images in two splits as the collection gives them"
    return splits, line


def _patients_in_several_splits(patients: Sequence[str], splits: Sequence[str]) -> int:
    seen: dict[str, set[str]] = {}
    for patient, split in zip(patients, splits):
        seen.setdefault(patient, set()).add(split)
    return sum(len(names) > 1 for names in seen.values())

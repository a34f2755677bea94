"""The train/val/test split rule, the reference's extended by a held-out test split.

Patients are taken in order of first appearance in the labels file: the first
``train_size`` of them are train, the last ``test_size`` test, the rest val
(the reference: 24000 train, the remaining 2684 val, no test). With
``stratify`` the same rule runs within each class, so every split keeps the
overall positive fraction (counts are then shared between the classes in
proportion to their sizes).
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

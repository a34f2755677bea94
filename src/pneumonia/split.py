"""The train/val split rule of the reference.

Patients are taken in order of first appearance in the labels file; the first
``train_size`` of them are train and the rest val.
"""

from __future__ import annotations

from pneumonia.errors import ParamsError

SPLITS = ("train", "val")


def split_counts(n_patients: int, train_size: int | float) -> dict[str, int]:
    """How many patients each split gets: an int is a count, a float in (0, 1) a fraction."""
    n_train = round(n_patients * train_size) if isinstance(train_size, float) else train_size
    if not 1 <= n_train < n_patients:
        raise ParamsError(
            f"params.yaml: split.train_size={train_size} gives {n_train} train patients of {n_patients}; "
            "both train and val need at least one: lower it or use a fraction"
        )
    return {"train": n_train, "val": n_patients - n_train}


def assign_splits(n_patients: int, train_size: int | float) -> list[str]:
    """The split of each patient, in file order."""
    counts = split_counts(n_patients, train_size)
    return [name for name in SPLITS for _ in range(counts[name])]

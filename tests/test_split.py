import pytest

from pneumonia.core.errors import ParamsError
from pneumonia.core.params import SplitParams
from pneumonia.data.split import assign_splits, split_counts


def test_reference_split_is_a_count_in_file_order():
    splits = assign_splits([0] * 26684, SplitParams(train_size=24000, test_size=0, stratify=False))
    assert splits[:24000] == ["train"] * 24000
    assert splits[24000:] == ["val"] * 2684


def test_fraction_rounds_to_nearest_patient():
    assert split_counts(10, 0.75) == {"train": 8, "val": 2, "test": 0}
    assert split_counts(2000, 0.6, 0.2) == {"train": 1200, "val": 400, "test": 400}


def test_test_split_is_taken_last_in_file_order():
    splits = assign_splits([0, 1] * 5, SplitParams(train_size=5, test_size=2, stratify=False))
    assert splits == ["train"] * 5 + ["val"] * 3 + ["test"] * 2


def test_stratified_split_keeps_the_positive_fraction_in_every_split():
    labels = [1 if i % 5 == 0 else 0 for i in range(100)]  # 20 % positive, spread through the file
    splits = assign_splits(labels, SplitParams(train_size=0.6, test_size=0.2, stratify=True))
    for name, expected in (("train", 60), ("val", 20), ("test", 20)):
        members = [y for y, s in zip(labels, splits) if s == name]
        assert len(members) == expected
        assert sum(members) == expected // 5
    # within a class, file order decides: the first positives are train, the last test
    positives = [s for y, s in zip(labels, splits) if y == 1]
    assert positives == ["train"] * 12 + ["val"] * 4 + ["test"] * 4


@pytest.mark.parametrize("n, train, test", [(10, 10, 0), (10, 11, 0), (3, 0.1, 0), (10, 5, 5), (10, 0.5, 0.5)])
def test_empty_train_or_val_is_refused(n, train, test):
    with pytest.raises(ParamsError, match="split.train_size"):
        split_counts(n, train, test)

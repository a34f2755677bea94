import pytest

from pneumonia.errors import ParamsError
from pneumonia.split import assign_splits, split_counts


def test_reference_split_is_a_count_in_file_order():
    splits = assign_splits(26684, 24000)
    assert splits[:24000] == ["train"] * 24000
    assert splits[24000:] == ["val"] * 2684


def test_fraction_rounds_to_nearest_patient():
    assert split_counts(10, 0.75) == {"train": 8, "val": 2}
    assert split_counts(1500, 0.8) == {"train": 1200, "val": 300}


@pytest.mark.parametrize("n, size", [(10, 10), (10, 11), (3, 0.1)])
def test_empty_split_is_refused(n, size):
    with pytest.raises(ParamsError, match="split.train_size"):
        split_counts(n, size)

import json

import numpy as np
import pytest

from pneumonia import stats


def test_mean_std_matches_the_reference_formula():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(600, 17, 13), dtype=np.uint8)  # more than one BLOCK
    scaled = images / 255.0
    mean = scaled.mean(axis=(1, 2)).mean()
    std = np.sqrt((scaled**2).mean(axis=(1, 2)).mean() - mean**2)
    got_mean, got_std = stats.mean_std(images)
    assert got_mean == pytest.approx(mean, abs=1e-12)
    assert got_std == pytest.approx(std, abs=1e-12)
    # equal-sized images: the formula is the plain pixel mean/std
    assert got_std == pytest.approx(scaled.std(), abs=1e-9)


def test_mean_std_streams_a_memmap(tmp_path):
    path = tmp_path / "train.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(3, 4, 4))
    array[:] = [[[0]], [[255]], [[51]]]
    array.flush()
    mean, std = stats.mean_std(np.load(path, mmap_mode="r"))
    assert mean == pytest.approx((0 + 1 + 0.2) / 3)
    assert std == pytest.approx(np.std([0.0, 1.0, 0.2]))


def test_empty_split_is_an_error():
    with pytest.raises(stats.DatasetError):
        stats.mean_std(np.zeros((0, 4, 4), np.uint8))

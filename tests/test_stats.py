import json
from pathlib import Path

import numpy as np
import pytest

from pneumonia.data import compute_stats


def test_mean_std_matches_the_reference_formula():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(600, 17, 13), dtype=np.uint8)  # more than one BLOCK
    scaled = images / 255.0
    mean = scaled.mean(axis=(1, 2)).mean()
    std = np.sqrt((scaled**2).mean(axis=(1, 2)).mean() - mean**2)
    got_mean, got_std = compute_stats.mean_std(images)
    assert got_mean == pytest.approx(mean, abs=1e-12)
    assert got_std == pytest.approx(std, abs=1e-12)
    # equal-sized images: the formula is the plain pixel mean/std
    assert got_std == pytest.approx(scaled.std(), abs=1e-9)


def test_mean_std_streams_a_memmap(tmp_path):
    path = tmp_path / "train.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(3, 4, 4))
    array[:] = [[[0]], [[255]], [[51]]]
    array.flush()
    mean, std = compute_stats.mean_std(np.load(path, mmap_mode="r"))
    assert mean == pytest.approx((0 + 1 + 0.2) / 3)
    assert std == pytest.approx(np.std([0.0, 1.0, 0.2]))


def test_empty_split_is_an_error():
    with pytest.raises(compute_stats.DatasetError):
        compute_stats.mean_std(np.zeros((0, 4, 4), np.uint8))


def test_read_blocks_gives_the_array_in_order(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "train.npy", images)
    blocks = list(compute_stats.read_blocks(tmp_path / "train.npy", rows=3))
    assert [len(b) for b in blocks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), images)
    assert compute_stats.mean_std_of_blocks(blocks) == compute_stats.mean_std(images)


def _resident_file_bytes() -> int:
    """This process's resident file-backed pages (Linux's RssFile)."""
    line = next(line for line in open("/proc/self/status") if line.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc/self/status")
def test_the_split_does_not_stay_resident_while_it_is_read(tmp_path):
    """compute_stats reads train.npy block by block; a memory map would keep every page read (the control)."""
    path = tmp_path / "train.npy"
    np.save(path, np.full((1000, 256, 256), 7, np.uint8))  # 64 MB
    growth = {}
    for name, blocks in (("read", compute_stats.read_blocks(path, rows=100)),
                         ("memory map", (b for b in np.array_split(np.load(path, mmap_mode="r"), 10)))):
        before, peak = _resident_file_bytes(), 0
        for block in blocks:
            compute_stats.mean_std_of_blocks([block])
            peak = max(peak, _resident_file_bytes())
        growth[name] = (peak - before) / 2**20
    assert growth["read"] < 8 and growth["memory map"] > 48, growth

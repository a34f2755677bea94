"""Fuzzing read_dicom with damaged copies of small valid DICOMs (issue 7, untrusted inputs).

Every mutated file must either convert (a size x size uint8 array and a DicomInfo)
or be refused with DicomReadError: never another exception type, never a hang,
never a crash. Each read runs in a forked worker with a time limit, so a hang or a
segfault/abort in a decoder shows up as a failure of this test instead of taking
the test run down with it. Deterministic (derandomize=True).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydicom.uid import JPEG2000Lossless, JPEGLossless, JPEGLSLossless, RLELossless

from dicom_writer import write_test_dicom
from pneumonia.data.dicom.header import DicomInfo
from pneumonia.data.dicom.read import read_dicom
from pneumonia.core.errors import DicomReadError
from pneumonia.data.phantom.dicom_writer import write_dicom
from pneumonia.data.phantom.patients import draw_patients
from pneumonia.data.phantom.render import render

TIME_LIMIT_S = 10


def _seeds(directory: Path) -> dict[str, bytes]:
    """Small valid files of every kind read_dicom accepts, as bytes."""
    film = render(draw_patients(1, seed=3)[0], 64).pixels  # textured: a JPEG with real entropy-coded data
    row = np.linspace(0, 1, 64)
    grad = np.tile(row, (64, 1))
    wide = np.zeros((48, 96), np.uint8)
    wide[:, 48:] = 255
    wide[::7] = 128
    specs = {
        "jpeg_8bit": (film, {}),
        "jpeg_8bit_monochrome1": (film, {"photometric": "MONOCHROME1"}),
        "jpeg_8bit_wide": (np.tile(film[:48], (1, 2))[:, :96].copy(), {}),
        "raw_8bit": (film, {"jpeg": False}),
        "raw_monochrome1": ((grad * 255).round().astype(np.uint8), {"jpeg": False, "photometric": "MONOCHROME1"}),
        "raw_16bit_stored_12": ((grad * 4095).round().astype(np.uint16), {"jpeg": False, "bits_stored": 12}),
        "raw_16bit_stored_16": ((grad * 65535).round().astype(np.uint16), {"jpeg": False, "bits_stored": 16}),
        "raw_8bit_wide": (wide, {"jpeg": False}),
    }
    seeds = {}
    for name, (pixels, kwargs) in specs.items():
        path = directory / f"{name}.dcm"
        write_dicom(path, pixels, patient_id=name, **kwargs)
        seeds[name] = path.read_bytes()
    # The other codecs and the LUTs (issue 12): the plugins' decoders and pydicom's LUT code meet damage too.
    stored12 = (grad * 4095).round().astype(np.uint16)
    lut = np.clip((np.arange(4096) - 500) * 20, 0, 65535)
    others = {
        "rle_signed_window": (stored12.astype(np.int16) - 2048, {"syntax": RLELossless, "bits_stored": 12, "signed": True,
                                                                 "rescale": (1, -1000), "window": (-1000, 2000)}),
        "jpegls_12bit": (stored12, {"syntax": JPEGLSLossless, "bits_stored": 12, "window": (2000, 3000)}),
        "j2k_12bit": (stored12, {"syntax": JPEG2000Lossless, "bits_stored": 12}),
        "jpeg_lossless_12bit": (stored12, {"syntax": JPEGLossless, "bits_stored": 12, "photometric": "MONOCHROME1"}),
        "raw_12bit_voi_lut": (stored12, {"bits_stored": 12, "voi_lut": lut}),
    }
    for name, (pixels, kwargs) in others.items():
        path = write_test_dicom(directory / f"{name}.dcm", pixels, patient_id=name, **kwargs)
        seeds[name] = path.read_bytes()
    return seeds


def _read(path: str, size: int, fast: bool) -> tuple:
    """Runs in the worker: the outcome of read_dicom, as plain picklable values."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about much of what it reads here
            image, info = read_dicom(path, size, fast=fast)
    except DicomReadError as exc:
        return ("refused", str(exc))
    except BaseException as exc:  # noqa: BLE001 - any other type is what the test reports
        return ("other", f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    sane = (
        isinstance(info, DicomInfo)
        and info.rows >= 1
        and info.columns >= 1
        and (info.pixel_spacing_mm is None or math.isfinite(info.pixel_spacing_mm) and info.pixel_spacing_mm > 0)
    )
    return ("ok", type(image).__name__, getattr(image, "dtype", None) and str(image.dtype), getattr(image, "shape", None), sane)


def _mutation(data: bytes):
    """One edit of ``data``, as a tuple of plain values; most of them hit the header."""
    length = len(data)
    # The header: the file meta group and the data set up to the pixel data (after the 128-byte preamble).
    header_end = max(data.find(b"\xe0\x7f\x10\x00"), 132)
    anywhere = st.integers(0, length - 1)
    header = st.integers(128, header_end - 1)
    bit = st.sampled_from([0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80])
    return st.one_of(
        st.tuples(st.just("truncate"), anywhere),
        st.tuples(st.just("overwrite"), anywhere, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("insert"), anywhere, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), anywhere, st.integers(1, 8)),
        st.tuples(st.just("overwrite"), header, st.binary(min_size=1, max_size=4)),
        st.tuples(st.just("flip"), header, bit),
        st.tuples(st.just("flip"), header, bit),
        st.tuples(st.just("flip"), header, st.integers(1, 255)),
        st.tuples(st.just("flip"), header, st.integers(1, 255)),
    )


def _apply(data: bytes, edit: tuple) -> bytes:
    kind, offset = edit[0], min(edit[1], len(data))
    if kind == "truncate":
        return data[:offset]
    if kind == "overwrite":
        chunk = edit[2]
        return data[:offset] + chunk + data[offset + len(chunk) :]
    if kind == "flip":
        if offset >= len(data):
            return data
        return data[:offset] + bytes([data[offset] ^ edit[2]]) + data[offset + 1 :]
    if kind == "insert":
        return data[:offset] + edit[2] + data[offset:]
    if kind == "delete":
        return data[:offset] + data[offset + edit[2] :]
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _seeds(tmp_path_factory.mktemp("seeds"))


def test_seeds_are_read(seeds, tmp_path):
    """The unmutated files convert (so the fuzzer starts from good inputs)."""
    for name, data in seeds.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        for fast in (True, False):
            image, info = read_dicom(path, 32, fast=fast)
            assert image.shape == (32, 32) and image.dtype == np.uint8, name
            assert (info.rows, info.columns) == ((48, 96) if "wide" in name else (64, 64)), name


def test_damaged_files_convert_or_are_refused_with_dicom_read_error(seeds, tmp_path):
    names = sorted(seeds)
    counts = {"ok": 0, "refused": 0}
    pool = multiprocessing.get_context("fork").Pool(1)

    @settings(max_examples=450, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        nonlocal pool
        name = data.draw(st.sampled_from(names), label="seed")
        damaged = seeds[name]
        for edit in data.draw(st.lists(_mutation(damaged), min_size=1, max_size=3), label="edits"):
            damaged = _apply(damaged, edit)
        size = data.draw(st.sampled_from([32, 64]), label="size")  # 32: the JPEG fast path applies
        fast = data.draw(st.booleans(), label="fast")
        path = tmp_path / "damaged.dcm"
        path.write_bytes(damaged)
        try:
            outcome = pool.apply_async(_read, (str(path), size, fast)).get(timeout=TIME_LIMIT_S)
        except multiprocessing.TimeoutError:
            # A hang, or a worker killed by a signal (its task never returns): start a new worker.
            pool.terminate()
            pool = multiprocessing.get_context("fork").Pool(1)
            raise AssertionError(f"read_dicom hung or crashed the process (no result in {TIME_LIMIT_S} s)") from None
        assert outcome[0] in ("ok", "refused"), f"read_dicom raised {outcome[1]}"
        if outcome[0] == "ok":
            assert outcome[1:] == ("ndarray", "uint8", (size, size), True), outcome
        else:
            assert outcome[1].startswith(f"{path}: "), outcome[1]
            assert "\n" not in outcome[1], outcome[1]
        counts[outcome[0]] += 1

    try:
        check()
    finally:
        pool.terminate()
    # The mutations must exercise both outcomes, or the test proves little.
    assert counts["ok"] > 10 and counts["refused"] > 50, counts


def test_worker_reports_a_hang_or_a_crash_as_a_timeout():
    """The harness itself: a call that never returns, or kills its process, is caught by the time limit."""
    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        for call, args in ((time.sleep, (60,)), (os._exit, (1,))):
            with pytest.raises(multiprocessing.TimeoutError):
                pool.apply_async(call, args).get(timeout=0.5)
    finally:
        pool.terminate()

"""Run Python in a subprocess with numpy's SIMD dispatch limited to its build's baseline.

A file built from arithmetic whose last bit depends on the CPU's SIMD path
(numpy's exp, sin, pow... loops) changes on another machine. Comparing the bytes
a computation writes under this CPU's best SIMD path with those it writes under
the x86-64 baseline shows, on one machine, whether it would. libjpeg-turbo's
SIMD is turned off too (JSIMD_FORCENONE), for the JPEG encoder and decoder.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Run first in every subprocess: proof that the limit took effect.
_CHECK = """
import os
from numpy._core._multiarray_umath import __cpu_features__
disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES", "").split()
assert not any(__cpu_features__[name] for name in disabled), "numpy ignored NPY_DISABLE_CPU_FEATURES"
"""


def dispatched_features() -> list[str]:
    """The CPU features numpy chooses among at run time (above its baseline) that this CPU has."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]


def baseline_environment() -> dict[str, str]:
    """This process's environment with numpy's dispatch limited to its baseline; skips where that means nothing."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the SIMD comparison is written for x86-64 (this is {platform.machine()})")
    features = dispatched_features()
    if not features:
        pytest.skip("this CPU has no SIMD feature above numpy's baseline: both runs would take the same path")
    return {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(features), "JSIMD_FORCENONE": "1"}


def run_python(code: str, *args: str | Path, env: dict[str, str] | None = None) -> None:
    """Run ``code`` (after the check above) in a new interpreter with ``args`` as sys.argv[1:]; fail with its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", _CHECK + code, *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

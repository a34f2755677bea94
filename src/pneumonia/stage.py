"""The shared entry point of the stage scripts in ``stages/``.

Loads and validates params.yaml, runs the stage, and turns the project's own
errors into one line on stderr and exit code 1 (anything else is a bug and
keeps its traceback).
"""

from __future__ import annotations

import sys
from typing import Callable

from pneumonia.errors import PneumoniaError
from pneumonia.params import Params, load_params


def run_stage(name: str, body: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    try:
        body(load_params(params_path))
    except PneumoniaError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)

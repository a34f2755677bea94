"""The shared entry point of the stage scripts in ``stages/``.

Loads and validates params.yaml, runs the stage, and turns the project's own
errors into one line on stderr and exit code 1 (anything else is a bug and
keeps its traceback).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Callable

from pneumonia.core.errors import PneumoniaError
from pneumonia.core.params import Params, load_params


def quiet_third_party() -> None:
    """Drop advertising and deprecation notices of libraries the user cannot act on from the stage output."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")  # Lightning's litlogger advertisement
    )
    # Lightning's own use of a torch API deprecated in torch 2.14: nothing for us to change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def run_stage(name: str, body: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    quiet_third_party()
    try:
        body(load_params(params_path))
    except PneumoniaError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)

"""The project's params.yaml with a few settings changed: how tests build their settings.

params.yaml is the one place defaults live, so a test states only what it changes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from pneumonia.core.params import Params, parse_params

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def merged(overrides: dict | None = None, base: dict | None = None) -> dict:
    """``overrides`` deep-merged over ``base`` (default: the project's params.yaml), as a plain mapping."""
    result = copy.deepcopy(base if base is not None else yaml.safe_load(PARAMS_YAML.read_text()))
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(value, result[key])
        else:
            result[key] = value
    return result


def project_params(overrides: dict | None = None) -> Params:
    """Validated :class:`Params`: params.yaml with ``overrides`` applied."""
    return parse_params(merged(overrides))

"""How a :class:`~pneumonia.core.errors.DicomReadError`'s reason is worded: the fix, an exception, a value."""

from __future__ import annotations

REPLACE = "replace the file with a good copy"
"""The fix for a damaged file, ending most reasons."""


def describe(exc: BaseException) -> str:
    """An exception as one short line for a DicomReadError reason."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    name = exc.__class__.__name__
    if name == "error":  # struct.error, zlib.error: name the module
        name = f"{exc.__class__.__module__}.error"
    return f"{name}: {text}" if text else name


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""Pneumonia detection on chest X-rays: a DVC pipeline over the RSNA challenge layout."""

__version__ = "0.1.0"

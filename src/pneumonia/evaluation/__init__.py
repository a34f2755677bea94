"""Scoring: classification metrics, bootstrap intervals, calibration, operating points, box metrics."""

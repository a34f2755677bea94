"""Where and how large without box labels: the class-activation-map baseline the detector is compared with.

- :mod:`pneumonia.localization.cam`: class activation maps of the classifier turned into boxes and sizes;
- :mod:`pneumonia.localization.localize`: the localize stage (metrics JSON, boxes CSV, overlays).

Both localizers are scored by :mod:`pneumonia.evaluation.box_metrics`; the detector trained on the
boxes lives in :mod:`pneumonia.detection`.
"""

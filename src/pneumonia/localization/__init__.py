"""Where and how large: box metrics shared by every localizer, and the class-activation-map baseline.

- :mod:`pneumonia.localization.box_metrics`: IoU, IoBB, accuracies, the RSNA challenge score, size agreement;
- :mod:`pneumonia.localization.cam`: class activation maps of the classifier turned into boxes (the baseline);
- :mod:`pneumonia.localization.cam_stage`: the localize stage (metrics JSON, boxes CSV, overlays).

The detector trained on the boxes lives in :mod:`pneumonia.detection`.
"""

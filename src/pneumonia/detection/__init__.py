"""A detector trained on the RSNA boxes: a CenterNet/TTFNet-style dense head on the project's ResNet18 trunk.

- :mod:`.network`: the network (registry of detector architectures) and its raw outputs;
- :mod:`.targets`: training targets from boxes, and the loss;
- :mod:`.decode`: raw outputs -> scored boxes (peaks, top-k, NMS);
- :mod:`.data`: the dataset with box-aware augmentation (torchvision v2, ``tv_tensors.BoundingBoxes``);
- :mod:`.thresholds`: gating by image score and box score, chosen together on val;
- :mod:`.tta`: the flip test-time augmentation (the mirror's boxes merged by NMS or WBF, chosen on val);
- :mod:`.detector`: the model file (``models/detector.safetensors``) and detection on uint8 images;
- :mod:`.detect`: the detect stage (Lightning);
- :mod:`.evaluate_detection`: the evaluate_detection stage (scores, comparison, reports, plots, overlays).

Coordinates: boxes inside the package are ``(x0, y0, x1, y1)`` in pixels of the MODEL INPUT
(``image_size`` square) unless a docstring says "original"; the model file's users get
``(x, y, width, height)`` in pixels of the ORIGINAL image, as the RSNA labels are.
"""

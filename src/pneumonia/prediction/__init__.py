"""The predictor (classifier, detector, decision, OOD guard) and what `pneumonia predict` writes."""

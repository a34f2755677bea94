"""Stage detect: train the detector on the RSNA boxes; epoch and thresholds chosen on val (models/detector.safetensors)."""

from pathlib import Path

from pneumonia.detection import detect
from pneumonia.core.stage import run_stage


def main(params):
    chosen = detect.run(Path("data/processed"), Path("reports/dataset.json"), params.detect, params.base.training_seed,
                          gate_sensitivity=params.evaluate.target_sensitivity)
    print(f"detect: epoch {chosen['epoch']} kept: val RSNA score {chosen['val_rsna_score']:.3f} "
          f"(image >= {chosen['image_threshold']}, box >= {chosen['box_threshold']})")


if __name__ == "__main__":
    run_stage("detect", main)

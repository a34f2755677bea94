"""Stage evaluate_detection: the boxes predict gives (the detector's, under the decision) on val and test (or val
alone), beside the CAM baseline. Writes metrics/detection.json (headline: test, else val), reports/detection.{json,md},
plots/detection/.
"""

from pathlib import Path

from pneumonia.detection import evaluate_detection
from pneumonia.classification.inference import default_device
from pneumonia.prediction.predictor import load_predictor
from pneumonia.core.stage import run_stage


def main(params):
    report = evaluate_detection.run(
        Path("data/processed"),
        load_predictor(Path("models/pneumonia.safetensors"), default_device()),
        params.evaluate_detection,
        params.localize,
        params.detect.score_thresholds,
        seed=params.base.seed,
    )
    for split in [s for s in evaluate_detection.SPLITS if s in report]:
        found, cam = report[split]["detector"], report[split]["cam_baseline"]
        print(f"{split}: RSNA score {found['rsna_score']:.3f} (CAM {cam['rsna_score']:.3f}), AP@0.5 {found['ap50']:.3f}, "
              f"image AUROC {report[split]['image_auroc']['decision']['auroc']:.3f} "
              f"(classifier {report[split]['image_auroc']['classifier']['auroc']:.3f})")


if __name__ == "__main__":
    run_stage("evaluate_detection", main)

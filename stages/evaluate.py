"""Stage evaluate: the predictor's image-level answer on val and test: metrics/classifier.json (headline), reports/classification.json, plots/."""

from pathlib import Path

from pneumonia.evaluation import evaluate
from pneumonia.core.stage import run_stage


def main(params):
    result = evaluate.run(Path("data/processed"), Path("models/pneumonia.safetensors"), params.evaluate, seed=params.base.seed)
    split = result["headline_split"]
    head = result[split]
    note = " (checkpoint and thresholds chosen on this split: optimistic)" if split == evaluate.SPLIT else ""
    low, high = head["ci95"]["auroc"]["low"], head["ci95"]["auroc"]["high"]
    print(f"{split} AUROC {head['auroc']:.3f} (95% CI {low:.3f}-{high:.3f}), AP {head['average_precision']:.3f}, "
          f"ECE {head['calibration']['ece_15_bins']:.3f}{note}")
    unlike = result["unlike_set"]
    print(f"unlike the training images: {head['out_of_distribution']['flagged']} of {head['n']} {split} images refused, "
          f"{unlike['caught']} of {unlike['n']} of the unlike set")
    if result["synthetic"]:
        print(f"note: the models were {result['note']}")


if __name__ == "__main__":
    run_stage("evaluate", main)

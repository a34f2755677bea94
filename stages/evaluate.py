"""Stage evaluate: the checkpoint on the val split into metrics/eval.json and plots/."""

from pathlib import Path

from pneumonia import evaluate
from pneumonia.stage import run_stage


def main(params):
    result = evaluate.run(Path("data/processed"), Path("models/model.ckpt"), params.evaluate)
    val = result[evaluate.SPLIT]
    print(f"val AUROC {val['auroc']:.4f}, AP {val['average_precision']:.4f} (checkpoint selected on val)")


if __name__ == "__main__":
    run_stage("evaluate", main)

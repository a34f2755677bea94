"""Stage compute_stats: train-split mean/std and class counts into metrics/dataset.json."""

from pathlib import Path

from pneumonia import stats
from pneumonia.stage import run_stage


def main(params):
    result = stats.run(Path("data/processed"), Path("metrics/dataset.json"))
    print(f"train mean {result['mean']:.4f}, std {result['std']:.4f}")


if __name__ == "__main__":
    run_stage("compute_stats", main)

"""Stage compute_stats: train-split mean/std and class counts (reports/dataset.json), patients per split (metrics/)."""

from pathlib import Path

from pneumonia import stats
from pneumonia.stage import run_stage


def main(params):
    result = stats.run(Path("data/processed"), Path("reports/dataset.json"), Path("metrics/dataset.json"))
    print(f"train mean {result['mean']:.4f}, std {result['std']:.4f}")


if __name__ == "__main__":
    run_stage("compute_stats", main)

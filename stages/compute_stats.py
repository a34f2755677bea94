"""Stage compute_stats: train-split mean/std, class counts and the prevalence check (reports/dataset.json), patients
per split (metrics/); warns when the splits' prevalences differ beyond chance."""

from pathlib import Path

from pneumonia.data import compute_stats
from pneumonia.core.stage import run_stage


def main(params):
    result = compute_stats.run(Path("data/processed"), Path("reports/dataset.json"), Path("metrics/dataset.json"))
    print(f"train mean {result['mean']:.4f}, std {result['std']:.4f}")
    if result["prevalence_check"]["warning"]:
        print(f"compute_stats: warning: {result['prevalence_check']['warning']}")


if __name__ == "__main__":
    run_stage("compute_stats", main)

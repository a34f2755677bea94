"""Stage download: the RSNA dataset (Kaggle, a local copy, or the offline phantom) into data/raw/."""

from pathlib import Path

from pneumonia.data import download
from pneumonia.core.stage import run_stage


def main(params):
    report = download.run(params.download, seed=params.base.seed, raw_dir=Path("data/raw"))
    print(report.summary())


if __name__ == "__main__":
    run_stage("download", main)

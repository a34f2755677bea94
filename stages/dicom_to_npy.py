"""Stage dicom_to_npy: data/raw/ DICOMs into one uint8 array per split and data/processed/manifest.csv."""

from pathlib import Path

from pneumonia.data import dicom_to_npy
from pneumonia.core.stage import run_stage


def main(params):
    report = dicom_to_npy.run(
        Path("data/raw"),
        Path("data/processed"),
        params.dicom_to_npy,
        params.split,
        grid_path=Path("plots/images/samples.png"),
        seed=params.base.seed,
    )
    print(report.summary())


if __name__ == "__main__":
    run_stage("dicom_to_npy", main)

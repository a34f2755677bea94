"""Stage train: ResNet18 with Lightning into models/classifier.safetensors; curves in dvclive/."""

from pathlib import Path

from pneumonia.classification import train
from pneumonia.core.stage import run_stage


def main(params):
    result = train.run(
        Path("data/processed"),
        Path("reports/dataset.json"),
        params.train,
        seed=params.base.training_seed,
        model_path=Path("models/classifier.safetensors"),
        live_dir=Path("dvclive"),
        grid_path=Path("plots/images/augmented.png"),
        windowing=params.dicom_to_npy.windowing,
    )
    print(f"best {train.MONITOR} {result['best_' + train.MONITOR]:.4f}")


if __name__ == "__main__":
    run_stage("train", main)

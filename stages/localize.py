"""Stage localize: class activation maps into boxes, scored against the RSNA boxes (reports/, metrics/cam.json)."""

from pathlib import Path

from pneumonia.localization import localize
from pneumonia.core.stage import run_stage


def main(params):
    result = localize.run(
        Path("data/processed"), Path("models/classifier.safetensors"), params.localize,
        out_json=Path("reports/localization.json"), headline_json=Path("metrics/cam.json"), seed=params.base.seed,
    )
    for split, metrics in result.items():
        print(
            f"{split}: pointing game {metrics['pointing_game']:.3f}, "
            f"IoBB accuracy at 0.1 {metrics['iobb_accuracy']['t0p10']:.3f}, RSNA score {metrics['rsna_score']:.3f}"
        )


if __name__ == "__main__":
    run_stage("localize", main)

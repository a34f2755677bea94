"""Stage decide: one calibrated image-level decision from both models, the box threshold under it and the
out-of-distribution guard, chosen on val; writes models/pneumonia.safetensors (what predict loads) and
reports/decision.json."""

from pathlib import Path

from pneumonia.prediction import decide
from pneumonia.core.stage import run_stage


def main(params):
    report = decide.run(
        Path("data/processed"), Path("models/classifier.safetensors"), Path("models/detector.safetensors"),
        params.decide, params.evaluate.target_sensitivity, params.detect.score_thresholds, params.download.source,
        params.base.seed, params.detect.threshold_prevalence,
    )
    chosen = report["decision"]
    best = min(report["compared_out_of_fold"], key=lambda c: c["log_loss"])
    print(f"decide: {chosen['source']} with {chosen['method']} calibration (val out-of-fold log loss "
          f"{best['log_loss']:.3f}, ECE {best['ece_15_bins']:.3f}), label threshold {chosen['threshold']:.3f}, "
          f"box threshold {report['box_threshold']} "
          f"(for prevalence {report['box_threshold_prevalence']['value']:.3f}), "
          f"OOD distance threshold {report['ood']['threshold']:.1f}")


if __name__ == "__main__":
    run_stage("decide", main)

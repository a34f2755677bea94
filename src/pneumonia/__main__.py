"""The command line: ``python -m pneumonia predict PATH... --model models/classifier.safetensors`` (or ``pneumonia predict``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pneumonia.errors import PneumoniaError

NOT_SCORED_EXIT = 3  # some files were not scored (not chest radiographs); 1 (unreadable files) takes precedence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumonia", description="Pneumonia detection on chest X-ray DICOMs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="classify DICOMs and find the opacities with the trained classifier and detector",
        description=(
            "Classify chest X-ray DICOMs with the trained classifier and find the opacities with the trained "
            "detector (boxes with confidences and the estimated area). Prints a table and writes a CSV; boxes "
            "are x y width height in pixels of the original image. Files that are not chest radiographs "
            "(Modality not CR, DX or DR, or a BodyPartExamined that is not a chest; a missing tag is no reason) "
            "are not scored: their row says why. Exit code 1 if any file could not be read, else 3 if any was "
            "not scored, else 0."
        ),
    )
    predict.add_argument(
        "paths", nargs="+", metavar="PATH", help="DICOM files, or folders searched recursively for *.dcm"
    )
    predict.add_argument(
        "--model", type=Path, default=Path("models/classifier.safetensors"),
        help="the classifier's model file (default: %(default)s)",
    )
    predict.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV written (default: %(default)s)")
    predict.add_argument("--overlays", type=Path, metavar="DIR", help="write an overlay PNG per image into DIR")
    predict.add_argument("--rsna-submission", type=Path, metavar="FILE", help="write Kaggle's RSNA submission CSV")
    predict.add_argument(
        "--batch-size", type=_positive_int, default=32, help="images per forward pass (default: %(default)s)"
    )
    predict.add_argument(
        "--allow-non-chest", action="store_true",
        help="score files whose Modality or BodyPartExamined say they are not chest radiographs",
    )
    predict.add_argument(
        "--detector", type=Path, default=Path("models/detector.safetensors"),
        help="the detector's model file (default: %(default)s)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _predict(args: argparse.Namespace) -> int:
    from pneumonia import predict  # torch and friends load only when there is work to do

    model, predictions = predict.run(
        args.paths, args.model, out_csv=args.out, overlays_dir=args.overlays, submission=args.rsna_submission,
        batch_size=args.batch_size, detector_path=args.detector, allow_non_chest=args.allow_non_chest,
    )
    print(predict.format_table(predictions, model.threshold))
    failed = [p for p in predictions if p.error]
    not_scored = [p for p in predictions if p.not_scored]
    for prediction in failed:
        print(f"pneumonia predict: {prediction.file}: {prediction.error}", file=sys.stderr)
    for prediction in not_scored:
        print(f"pneumonia predict: {prediction.file}: {prediction.not_scored}; not scored "
              "(--allow-non-chest scores it anyway)", file=sys.stderr)
    written = [str(p) for p in (args.out, args.rsna_submission, args.overlays) if p is not None]
    scored = len(predictions) - len(failed) - len(not_scored)
    counts = f"{scored} predicted, {len(failed)} failed" + (f", {len(not_scored)} not scored" if not_scored else "")
    print(f"{counts}; wrote {', '.join(written)}")
    return 1 if failed else NOT_SCORED_EXIT if not_scored else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _predict(args)
    except PneumoniaError as exc:
        print(f"pneumonia {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The command line: ``python -m pneumonia predict PATH...`` and ``export --onnx DIR`` (or ``pneumonia ...``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pneumonia.core.errors import PneumoniaError

NOT_SCORED_EXIT = 3  # some files were not scored (not chest radiographs, or unlike the training images); 1 (unreadable) first


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumonia", description="Pneumonia detection on chest X-ray DICOMs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="the probability of pneumonia and where the opacities are, for chest X-ray DICOMs",
        description=(
            "Answer for each chest X-ray DICOM: a calibrated probability of pneumonia, its label at the operating "
            "point chosen on val, and under a positive label the opacities found (boxes with scores, x y width "
            "height in pixels of the original image, and the estimated area). Prints a table and writes a CSV. "
            "Not scored, with the reason in their row: files that are not chest radiographs by their header "
            "(Modality not CR, DX or DR, or a BodyPartExamined that is not a chest; a missing tag is no reason) "
            "and images unlike the training images (the model file's out-of-distribution guard). Exit code 1 if "
            "any path could not be read or a scored file got no DICOM outputs asked for, else 3 if any file was "
            "not scored, else 0."
        ),
    )
    predict.add_argument(
        "paths", nargs="+", metavar="PATH",
        help="DICOM, PNG or JPEG files, or folders searched recursively for *.dcm, *.png, *.jpg and *.jpeg (a PNG or "
        "JPEG has no header: no chest check, no area in mm², no DICOM outputs)"
    )
    predict.add_argument(
        "--model", type=Path, default=Path("models/pneumonia.safetensors"),
        help="the predictor's model file, written by the decide stage (default: %(default)s)",
    )
    predict.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV written (default: %(default)s)")
    predict.add_argument("--overlays", type=Path, metavar="DIR", help="write an overlay PNG per image into DIR")
    predict.add_argument("--rsna-submission", type=Path, metavar="FILE", help="write Kaggle's RSNA submission CSV")
    predict.add_argument(
        "--dicom-out", type=Path, metavar="DIR",
        help="write a DICOM Structured Report (<name>.sr.dcm) and a presentation state drawing the boxes "
        "(<name>.pr.dcm) per scored image into DIR, referencing the original (see docs/dicom-outputs.md)",
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=32, help="images per forward pass (default: %(default)s)"
    )
    predict.add_argument(
        "--allow-non-chest", action="store_true",
        help="score files whose Modality or BodyPartExamined say they are not chest radiographs",
    )
    predict.add_argument(
        "--allow-out-of-distribution", action="store_true",
        help="score images unlike the training images anyway (the CSV keeps out_of_distribution = 1)",
    )
    predict.add_argument(
        "--backend", choices=("torch", "onnxruntime"), default="torch",
        help="what runs the networks (default: %(default)s); onnxruntime: --model is the folder `pneumonia export "
             "--onnx DIR` wrote, and every answer is computed as with torch but for the networks' forward",
    )
    export = commands.add_parser(
        "export", help="the predictor's networks as ONNX models, for ONNX Runtime (see docs/onnx.md)",
        description="Write DIR: classifier.onnx and detector.onnx (opset 18, dynamic batch) and predictor.json, "
                    "every other number predict needs. `pneumonia predict --backend onnxruntime --model DIR` runs it.",
    )
    export.add_argument("--onnx", type=Path, required=True, metavar="DIR",
                        help="the folder to write (replaced; refused if it holds files of its own)")
    export.add_argument("--model", type=Path, default=Path("models/pneumonia.safetensors"),
                        help="the predictor's model file, written by the decide stage (default: %(default)s)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _predict(args: argparse.Namespace) -> int:
    from pneumonia.prediction import predict  # torch and friends load only when there is work to do

    done = predict.run(
        args.paths, args.model, out_csv=args.out, overlays_dir=args.overlays, submission=args.rsna_submission,
        batch_size=args.batch_size, allow_non_chest=args.allow_non_chest, allow_unlike=args.allow_out_of_distribution,
        dicom_out=args.dicom_out, backend=args.backend,
    )
    predictor, predictions = done.predictor, done.predictions
    print(predict.format_table(predictions, predictor.decision.threshold))
    for prediction in predictions:
        if not prediction.scored:
            print(f"pneumonia predict: {prediction.file}: {prediction.reason}", file=sys.stderr)
    for path, reason in done.dicom_skipped:
        print(f"pneumonia predict: {path}: {reason}", file=sys.stderr)
    written = [str(p) for p in (args.out, args.rsna_submission, args.overlays, args.dicom_out) if p is not None]
    lines = predict.summary(predictor, predictions)
    print(f"{lines[0]}; wrote {', '.join(written)}")
    for line in lines[1:]:
        print(line)
    if any(p.status == "unreadable" for p in predictions) or done.dicom_skipped:
        return 1
    return NOT_SCORED_EXIT if any(not p.scored for p in predictions) else 0


def _export(args: argparse.Namespace) -> int:
    from pneumonia.prediction.onnx_backend import FILES
    from pneumonia.prediction.onnx_export import export_onnx

    settings = export_onnx(args.model, args.onnx)
    files = ", ".join(str(args.onnx / name) for name in FILES)
    print(f"wrote {files} (ONNX opset {settings['opset']}) from {args.model} (sha256 {settings['source']['sha256']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _export(args) if args.command == "export" else _predict(args)
    except PneumoniaError as exc:
        print(f"pneumonia {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

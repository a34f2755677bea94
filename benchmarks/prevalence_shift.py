"""Thresholds chosen on val under a prevalence shift: what they score on test against the best test allows.

    python benchmarks/prevalence_shift.py            # in a clone whose default run is reproduced (about 2 minutes)
    python benchmarks/prevalence_shift.py --root /work/main --draws 20

Reads the committed default run (``models/detector.safetensors``, ``data/processed/{val,test}.npy`` and the
manifest; nothing is written there), decodes val and test once, and then, for ``--draws`` seeded draws,
drops images so val holds 35 % positives and test 12 % (the real split of the issue: val 36 %, test 12 %),
keeping each as large as it can be. On each val draw the image gate and the box threshold are chosen from
``detect.score_thresholds`` (plus "no gate") by each strategy below, and scored on the test draw beside the
best pair of the same grid on that test draw (``regret`` = best - achieved). The default case (no
subsampling) is reported as well. Writes benchmarks/prevalence_shift.json.

Strategies (all chosen on val only, except the oracle):
  val_own      the RSNA score on val as it is (``detect.threshold_prevalence: val``, the old behaviour)
  train        val reweighted to the train split's prevalence (``threshold_prevalence: null``, the default)
  oracle       val reweighted to the test draw's true prevalence (a reference no real run can have)
  gate_at_sensitivity_train   the gate at the image-probability operating point of ``evaluate.target_sensitivity``
               on val (prevalence-free: it reads positives only), the box threshold under it reweighted to train's
               (what ``decide`` does with its calibrated decision)
  minimax      the pair whose worst regret on val, reweighted to each prevalence of 0.05 ... 0.50, is least

Per-image scores are computed once per (image, box threshold) and combined by :func:`mean_image_score`, as
:func:`rsna_score` combines them;
the default case checks the result against :func:`pneumonia.detection.thresholds.choose_box_thresholds`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pneumonia.detection.detector import detect_images, load_detector  # noqa: E402
from pneumonia.detection.thresholds import choose_box_thresholds  # noqa: E402
from pneumonia.evaluation.box_metrics import mean_image_score, prevalence_weights, rsna_image_score  # noqa: E402,E501
from pneumonia.data.manifest import read_manifest, split_rows  # noqa: E402
from pneumonia.evaluation.operating_points import threshold_for_sensitivity  # noqa: E402

OUT = Path(__file__).resolve().parent / "prevalence_shift.json"
VAL_PREVALENCE, TEST_PREVALENCE = 0.35, 0.12  # the real split: val 36 %, test 12 %
MINIMAX_RANGE = np.round(np.arange(0.05, 0.501, 0.05), 2)
DONE_WHEN = 0.05  # the issue's: test score within 0.05 of the best achievable


class ScoreTable:
    """Per image: the RSNA image score at each box threshold, and with no box (None = the image is not counted)."""

    def __init__(self, detections, truth, boxes: list[float]):
        self.boxes = boxes
        self.positive = np.array([len(t) > 0 for t in truth])
        self.probability = np.array([d.image_probability for d in detections])
        self.with_boxes = [[rsna_image_score(*d.kept(0.0, b), t) for d, t in zip(detections, truth)] for b in boxes]
        self.without = [0.0 if p else None for p in self.positive]

    def score(self, index: np.ndarray, gate: float, box: float, weights: np.ndarray | None) -> float:
        """The (weighted) RSNA score of the images ``index`` at (gate, box), as rsna_score does (0: none count)."""
        with_boxes = self.with_boxes[self.boxes.index(box)]
        per_image = [with_boxes[i] if self.probability[i] >= gate else self.without[i] for i in index]
        score = mean_image_score(per_image, weights)
        return 0.0 if score is None else score


def pairs(candidates: list[float]) -> list[tuple[float, float]]:
    """(gate, box) in choose_box_thresholds' order, so that max() with its tie rule picks the same pair."""
    return [(g, b) for g in sorted({0.0, *candidates}) for b in sorted(candidates)]


def best_pair(table: ScoreTable, index, grid, weights) -> tuple[float, float]:
    scored = [(table.score(index, g, b, weights), g, b) for g, b in grid]
    _, g, b = max(scored)  # ties to the higher thresholds, as choose_box_thresholds
    return g, b


def choose(table: ScoreTable, index: np.ndarray, grid, train_prevalence: float, test_prevalence: float,
           target_sensitivity: float) -> dict[str, tuple[float, float]]:
    positive = table.positive[index]
    as_truth = [[(0, 0, 1, 1)] if x else [] for x in positive]  # prevalence_weights reads only which images have boxes
    weights = lambda p: prevalence_weights(as_truth, p)  # noqa: E731
    chosen = {
        "val_own": best_pair(table, index, grid, None),
        "train": best_pair(table, index, grid, weights(train_prevalence)),
        "oracle": best_pair(table, index, grid, weights(test_prevalence)),
    }
    gate = threshold_for_sensitivity(positive.astype(int), table.probability[index], target_sensitivity)
    chosen["gate_at_sensitivity_train"] = (gate, max(
        (table.score(index, gate, b, weights(train_prevalence)), b) for b in table.boxes)[1])
    best_at = {p: max(table.score(index, g, b, weights(p)) for g, b in grid) for p in MINIMAX_RANGE}
    regret = [(max(best_at[p] - table.score(index, g, b, weights(p)) for p in MINIMAX_RANGE), -g, -b)
              for g, b in grid]
    _, g, b = min(regret)
    chosen["minimax"] = (-g, -b)
    return chosen


def subsample(positive: np.ndarray, prevalence: float, rng: np.random.Generator) -> np.ndarray:
    """The largest subset (sorted indices) with ``prevalence`` positives: one class kept whole, the other drawn."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    if len(pos) / len(positive) < prevalence:
        neg = rng.choice(neg, round(len(pos) * (1 - prevalence) / prevalence), replace=False)
    else:
        pos = rng.choice(pos, round(len(neg) * prevalence / (1 - prevalence)), replace=False)
    return np.sort(np.concatenate([pos, neg]))


def evaluate_case(val: ScoreTable, test: ScoreTable, val_index, test_index, grid, train_prevalence,
                  target_sensitivity) -> dict:
    test_prevalence = float(test.positive[test_index].mean())
    best = max(test.score(test_index, g, b, None) for g, b in grid)
    chosen = choose(val, val_index, grid, train_prevalence, test_prevalence, target_sensitivity)
    result = {"val_images": int(len(val_index)), "val_prevalence": float(val.positive[val_index].mean()),
              "test_images": int(len(test_index)), "test_prevalence": test_prevalence, "test_best": best,
              "strategies": {}}
    for name, (g, b) in chosen.items():
        achieved = test.score(test_index, g, b, None)
        result["strategies"][name] = {"image_threshold": g, "box_threshold": b, "test_rsna": achieved,
                                      "regret": best - achieved}
    return result


def summary(draws: list[dict]) -> dict:
    out = {}
    for name in draws[0]["strategies"]:
        regret = np.array([d["strategies"][name]["regret"] for d in draws])
        score = np.array([d["strategies"][name]["test_rsna"] for d in draws])
        out[name] = {"median_test_rsna": float(np.median(score)), "median_regret": float(np.median(regret)),
                     "worst_regret": float(regret.max()), "draws_within_done_when": int((regret <= DONE_WHEN).sum())}
    out["test_best_median"] = float(np.median([d["test_best"] for d in draws]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="a clone whose default run is reproduced (models/, data/processed/)")
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    started = time.time()
    params = yaml.safe_load((args.root / "params.yaml").read_text())
    candidates = [float(t) for t in params["detect"]["score_thresholds"]]
    target_sensitivity = float(params["evaluate"]["target_sensitivity"])
    grid = pairs(candidates)
    detector = load_detector(args.root / "models" / "detector.safetensors")
    manifest = read_manifest(args.root / "data" / "processed")
    train_rows = split_rows(manifest, "train")
    train_prevalence = sum(r.label for r in train_rows) / len(train_rows)
    tables, decoded = {}, {}
    for split in ("val", "test"):
        rows = split_rows(manifest, split)
        images = np.load(args.root / "data" / "processed" / f"{split}.npy", mmap_mode="r")
        decoded[split] = (detect_images(detector, images, [(r.rows, r.columns) for r in rows], 64),
                          [r.boxes for r in rows])
        tables[split] = ScoreTable(*decoded[split], candidates)
    val, test = tables["val"], tables["test"]
    everything = (np.arange(len(val.positive)), np.arange(len(test.positive)))
    default = evaluate_case(val, test, *everything, grid, train_prevalence, target_sensitivity)
    for name, prevalence in (("val_own", None), ("train", train_prevalence)):  # the table agrees with the library
        library = choose_box_thresholds(*decoded["val"], candidates, prevalence=prevalence)
        mine = default["strategies"][name]
        assert (library.image_threshold, library.box_threshold) == (mine["image_threshold"], mine["box_threshold"]), \
            (name, library, mine)
    draws = []
    for seed in range(args.draws):
        rng = np.random.default_rng(seed)
        draws.append({"seed": seed} | evaluate_case(
            val, test, subsample(val.positive, VAL_PREVALENCE, rng), subsample(test.positive, TEST_PREVALENCE, rng),
            grid, train_prevalence, target_sensitivity))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    result = {
        "what": "test RSNA score of thresholds chosen on val, val at 35 % positives and test at 12 % "
                "(seeded draws) and as split; regret = the best pair on test minus the chosen pair's score",
        "command": f"python benchmarks/prevalence_shift.py --draws {args.draws}",
        "commit": commit,
        "run": "the committed default run (phantom): models/detector.safetensors, data/processed",
        "train_prevalence": train_prevalence,
        "candidates": candidates,
        "target_sensitivity": target_sensitivity,
        "minimax_range": [float(p) for p in MINIMAX_RANGE],
        "done_when_regret": DONE_WHEN,
        "default": default,
        "shifted": {"val_prevalence": VAL_PREVALENCE, "test_prevalence": TEST_PREVALENCE,
                    "summary": summary(draws), "draws": draws},
        "seconds": round(time.time() - started, 1),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"default": {k: v["regret"] for k, v in default["strategies"].items()},
                      "shifted": result["shifted"]["summary"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

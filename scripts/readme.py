"""The generated blocks of the README and the docs pages: ``make readme`` (``python -m scripts.readme``) rewrites them.

A block is the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``, in README.md or any
``docs/*.md`` (:func:`documents`); a block is filled the same way whichever file holds it, and each appears in
one file only. ``headline`` is the default run's few headline numbers (``metrics/*.json``) for the README;
``params`` the table of every setting, made from params.yaml itself (value and the line's own comment), so the
docs cannot disagree with the one place defaults live. ``metrics`` is ``dvc metrics show --md`` of the committed
headline metrics and the width of its plain table. ``bench`` is the performance table from
``benchmarks/results.json`` (``make bench``), and ``architectures`` its per-architecture training figures,
``rehearsal`` the full-size rehearsal's (``benchmarks/rehearsal.json``, ``make rehearsal``). ``trust`` is the
answer predict gives: the decision, its calibration and the out-of-distribution guard's figures
(``reports/classification.json``, ``reports/decision.json``). ``prevalence_shift`` is how thresholds chosen
on val fare on a test split of another prevalence (``benchmarks/prevalence_shift.json``).
``tests/test_readme.py`` fails when a block differs from what this module makes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pneumonia.reporting.report import interval

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"(<!-- generated:(\w+) -->\n)(.*?)(<!-- /generated:\2 -->)", re.S)
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[\w]+):(?P<value>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")


def params_rows(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, value as YAML, comment) for every leaf of params.yaml, in file order.

    Comments are read from the lines themselves (YAML parsers drop them); values are
    re-serialised from the parsed file, so the table shows what the loader reads. A
    section's comment (on its own line) applies to its keys that have none.
    """
    data = yaml.safe_load(text)
    rows, stack = [], []  # stack: (indent, key, comment)
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        comment = (match["comment"] or "").strip()
        if match["value"].strip() == "":  # a section
            stack.append((indent, match["key"], comment))
            continue
        path = [key for _, key, _ in stack] + [match["key"]]
        value = data
        for key in path:
            value = value[key]
        if not comment:
            comment = next((c for _, _, c in reversed(stack) if c), "")
        shown = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
        rows.append((".".join(path), shown, comment))
    return rows


def params_block(params_yaml: Path) -> str:
    lines = ["| setting | default | what it does |", "|---|---|---|"]
    for key, value, comment in params_rows(params_yaml.read_text()):
        lines.append(f"| `{key}` | `{value}` | {comment.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _dvc_metrics_show(root: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", *args], cwd=root, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"readme: error: `dvc metrics show {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def metrics_block(root: Path) -> str:
    width = max(len(line) for line in _dvc_metrics_show(root).splitlines())
    return (_dvc_metrics_show(root, "--md").strip() + f"\n\nIn a terminal, `dvc metrics show` prints this as one table "
            f"{width} characters wide; `dvc metrics show metrics/classifier.json` shows one file.\n")


def headline_block(root: Path) -> str:
    """The default run's few headline numbers (``metrics/*.json``), for the README's first screen."""
    read = lambda name: json.loads((root / "metrics" / f"{name}.json").read_text())  # noqa: E731
    patients, answer, boxes = read("dataset"), read("classifier"), read("detection")
    classification = json.loads((root / "reports" / "classification.json").read_text())
    lines = [f"Patients: {', '.join(f'{split} {n}' for split, n in patients.items())}. On "
             f"**{answer['split']}**{', which chose nothing' if answer['split'] == 'test' else ' (it chose the model: optimistic)'}"
             " (`metrics/*.json`):", "",
             "| | |", "|---|---|",
             f"| AUROC of the answer `predict` gives (95 % CI) | {answer['auroc']:.3f} "
             f"({answer['auroc_low']:.3f}–{answer['auroc_high']:.3f}) |",
             f"| sensitivity / specificity at the threshold chosen on val | {answer['sens']:.3f} / {answer['spec']:.3f} |",
             f"| calibration: ECE / Brier | {answer['ece']:.3f} / {answer['brier']:.3f} |",
             f"| refused as unlike the training images: of {answer['split']} / of an unlike set | "
             f"{100 * answer['ood_flag']:.1f} % / {100 * answer['ood_catch']:.1f} % |",
             f"| boxes on {boxes['split']}: RSNA challenge score / AP@0.5 | {boxes['rsna_score']:.3f} / "
             f"{boxes['ap50']:.3f} |"]
    if classification.get("synthetic"):
        lines += ["", f"All on the phantom: the models were {classification['note']}."]
    return "\n".join(lines) + "\n"


# benchmarks/results.json -> the README's performance table: (keys shown together, unit, target, what it compares)
BENCH_ROWS = [
    (("convert_images_per_s",), "", "",
     "the dicom_to_npy stage's code (`dicom_to_npy.run`: CSVs, pool, decoding, manifest) at 224×224"),
    (("convert_process_images_per_s",), "", "", "the same, timed from the Python process's start"),
    (("convert_speedup_vs_reference",), "×", "≥ 6× (not reachable on 2 cores: see below)",
     "against the reference loop (one process; `pixel_array / 255`, `cv2.resize`, float16, `np.save` per file)"),
    (("convert_decode_bound_speedup_vs_reference",), "×", "",
     "the ceiling for any converter here: the decode bound against the reference loop"),
    (("convert_fraction_of_decode_bound",), "", "≥ 0.75",
     "against reading + decoding the same files on all cores (DCT-downscaled to the same size), nothing else"),
    (("convert_peak_rss_mb_small", "convert_peak_rss_mb_large"), " MB", "< 1500, large within 15 %",
     "the whole stage, all its processes, on the small and the large set"),
    (("train_images_per_s", "train_fraction_of_raw"), "", "fraction ≥ 0.9",
     "the train stage's Lightning loop (memory-mapped data, augmentation) against a bare loop over tensors in memory"),
    (("infer_images_per_s", "infer_fraction_of_raw"), "", "fraction ≥ 0.9", "evaluate's inference against a bare inference loop"),
    (("repro_noop_s",), " s", "< 3 s", "`dvc repro` on an up-to-date workspace"),
    (("predict_torch_images_per_s", "predict_onnxruntime_images_per_s", "predict_onnxruntime_vs_torch"), "", "",
     "`pneumonia predict` on 64 phantom DICOMs: PyTorch / ONNX Runtime images/s, and their ratio"),
]


def bench_block(results_json: Path) -> str:
    results = json.loads(results_json.read_text())
    settings = ", ".join(f"{k} {v}" for k, v in results.get("settings", {}).items())
    lines = [f"Measured by `make bench` on: {results.get('machine', 'unknown')} ({settings}).", "",
             "| figure | value | target | what it compares |", "|---|---|---|---|"]
    for keys, unit, target, what in BENCH_ROWS:
        present = [k for k in keys if k in results]
        if not present:
            continue
        values = " / ".join(f"{results[k]:g}" for k in present)
        lines.append(f"| {' / '.join(f'`{k}`' for k in present)} | {values}{unit} | {target} | {what} |")
    return "\n".join(lines) + "\n"


def architectures_block(results_json: Path, stage: str = "train") -> str:
    """Train images/s of each ``<stage>.arch`` against its bare loop (``make bench``'s per-architecture parts):
    ``train`` the classifier's, ``detect`` the detector's backbones."""
    results = json.loads(results_json.read_text())
    prefix = "" if stage == "train" else "detect_"
    table, settings = results.get(f"{stage}_by_architecture"), results.get(f"{prefix}architecture_settings", {})
    if not table:
        return "Not measured yet: run `make bench`.\n"
    lines = [f"Measured by `make bench` on: {settings.get('machine', 'unknown')} (image size "
             f"{settings.get('image_size')}, batch {settings.get('batch_size')}, {settings.get('timed_batches')} "
             f"timed batches, median of {settings.get('repeats')}).", "",
             f"| `{stage}.arch` | train images/s | fraction of the bare loop |", "|---|---|---|"]
    lines += [f"| {arch} | {row['images_per_s']:g} | {row['fraction_of_bare']:g} |" for arch, row in table.items()]
    return "\n".join(lines) + "\n"


def detectors_block(detectors_json: Path) -> str:
    """The detector's head against torchvision's FCOS (benchmarks/detectors.json, ``benchmarks/detectors.py``)."""
    if not detectors_json.exists():
        return "Not measured yet: run `python benchmarks/detectors.py --epochs 6` after `dvc repro compute_stats`.\n"
    r = json.loads(detectors_json.read_text())
    names = {"centernet": "this project's head (CenterNet-style, ResNet18, top-down merge)",
             "fcos_slim": "torchvision's FCOS (slim ResNet18-FPN)"}
    lines = [f"`{r['command']}` (commit {r['commit'][:7]}) on: {r['machine']}; {r['epochs']} epochs at "
             f"{r['image_size']} px, batch {r['batch_size']}, both from scratch on the same data, augmentation and "
             f"balanced epochs. Scored on {r['chosen_on']}.", "",
             "| head | val RSNA score | val AP@0.5 | val AP@[0.5:0.95] | CPU s per step | step / classifier's |",
             "|---|---|---|---|---|---|"]
    for key, name in names.items():
        if key in r:
            m = r[key]
            lines.append(f"| {name} | {m['val_rsna_score']:.3f} | {m['val_ap50']:.3f} | {m['val_ap50_95']:.3f} | "
                         f"{m['cpu_seconds_per_step']:.2f} | {m['step_vs_classifier']:.2f} |")
    return "\n".join(lines) + "\n"


def rehearsal_block(rehearsal_json: Path) -> str:
    """``make rehearsal``'s figures (benchmarks/rehearsal.json): seconds and memory per stage, DVC's overhead."""
    if not rehearsal_json.exists():
        return "Not measured yet: run `make rehearsal`.\n"
    r = json.loads(rehearsal_json.read_text())
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    split = r["settings"]["counts"]
    load = r["load_average_before"][0]
    resumed = r.get("resumed", [])
    lines = [f"`{r['command']}` on: {r['machine']['cores']} cores, {r['machine']['accelerator']}"
             + ("" if load is None else f" (load average {load:g} at the start)")
             + f"; {r['settings']['patients']:,} patients "
             f"at {r['settings']['download']['phantom']['size']} px, train {split['train']['total']:,} / val "
             f"{split['val']['total']:,}, {r['settings']['dicom_to_npy']['image_size']} px arrays, "
             f"{r['train']['batches']} training batches of {r['train']['batch_size']}."
             + (f" Started {r['started']}, interrupted and resumed ({', '.join(resumed)}) in the same folder; every "
                f"stage ran the code of commit {r['code']['stages_ran_the_code_of'][:7]}." if resumed else ""), "",
             "| stage | seconds | CPU seconds | peak memory, all processes (MB) | largest process (MB) |",
             "|---|---|---|---|---|"]
    cell = lambda value: "–" if value is None else f"{value:g}"  # noqa: E731 (None: not recorded)
    lines += [f"| {s['stage']}{' (phantom generation)' * (s['stage'] == 'download')}{' *' * bool(s.get('from_printed_log'))}"
              f" | {cell(s['seconds'])} | {cell(s.get('cpu_seconds'))} | {cell(s['peak_rss_mb'])} | "
              f"{cell(s['peak_process_rss_mb'])} |" for s in r["stages"]]
    if any(s.get("from_printed_log") for s in r["stages"]):
        lines += ["", "\\* finished before the interruption; read back from what the run printed (wall seconds and "
                  "peak memory only)."]
    dvc, data, train = r["dvc"], r["data"], r["train"]
    lines += ["", f"- DVC with {data['raw_files']:,} files in `data/raw`: `dvc status` {dvc['status']['median_s']:g} s, "
              f"a no-op `dvc repro` {dvc['noop_repro_evaluate']['median_s']:g} s; cache {gb(dvc['cache_bytes'])} "
              f"({dvc['cache_files']:,} files), `data/raw` {gb(data['raw_bytes'])}, `data/processed` "
              f"{gb(data['processed_bytes'])}; cache and workspace together {gb(dvc['disk_bytes_cache_and_data'])} "
              f"(DVC copies a stage's outputs into the cache; `dvc checkout --relink` "
              f"({dvc['relink_s']:g} s) brought it to {gb(dvc['disk_bytes_cache_and_data_after_relink'])}).",
              f"- Training: {train['images_per_s']:g} images/s, "
              + (f"{train['fraction_of_bare_loop']:g} of a bare loop ({train['bare_loop_images_per_s']:g} images/s) "
                 "measured right after" if "bare_loop_measured" not in train else
                 f"and a bare loop {train['bare_loop_images_per_s']:g} images/s measured "
                 f"{train['bare_loop_measured']} (under another load: no ratio)")
              + f"; a full epoch of this split "
              f"({train['full_epoch_batches']} batches, then validation on {train['val_images']:,} images): about "
              f"{train['full_epoch_stage_estimate_s'] / 60:.0f} min on this machine."]
    lines += rehearsal_plan(r)
    lines += [f"- {note}" for note in r.get("annotations", [])]  # what happened to the run, added by hand
    phantom_json = rehearsal_json.with_name("phantom_rehearsal.json")
    if phantom_json.exists():  # the phantom stage measured again alone, after its generator changed
        p = json.loads(phantom_json.read_text())
        d = p["download"]
        before = p["rehearsal_json_download"]
        lines.append(f"- Phantom generation measured alone (`{p['command']}`, commit {p['code']['commit'][:7]}, "
                     f"load {d['load_1min_before']:g}): {d['seconds']:g} s, {d['cpu_seconds']:g} CPU seconds for "
                     f"{p['patients']:,} patients, {p['cpu_seconds_ratio']:g}× fewer CPU seconds than the generator "
                     f"before it ({before['cpu_seconds']:g} in the rehearsal of commit {before['commit'][:7]}).")
    return "\n".join(lines) + "\n"


REFERENCE_EPOCHS = 35  # the reference recipe's classifier epochs on the real data


def rehearsal_plan(r: dict, detect_epochs: int | None = None) -> list[str]:
    """A full run of the real dataset on the rehearsal's machine, from its figures: the classifier's
    :data:`REFERENCE_EPOCHS` epochs and the detector's ``detect.max_epochs`` (params.yaml's default) at the
    rehearsal's one-epoch stage times, the other stages as measured. Empty for a rehearsal without the detector."""
    seconds = {s["stage"]: s["seconds"] for s in r["stages"]}
    if "detect" not in seconds:
        return []
    if detect_epochs is None:
        detect_epochs = yaml.safe_load((ROOT / "params.yaml").read_text())["detect"]["max_epochs"]
    data = sum(seconds.get(s, 0) for s in ("download", "dicom_to_npy", "compute_stats"))
    train = REFERENCE_EPOCHS * r["train"]["full_epoch_stage_estimate_s"]
    detect = detect_epochs * seconds["detect"]
    rest = sum(seconds.get(s, 0) for s in ("decide", "evaluate", "localize", "evaluate_detection", "report"))
    hours = lambda s: f"{s / 3600:.1f} h"  # noqa: E731
    return [f"- Detector: one whole epoch of `detect` (every train image with boxes and as many without, then "
            f"every val image decoded and the thresholds chosen) took {seconds['detect']:g} s here.",
            f"- A full run of the real data on this machine, from these figures: the data stages "
            f"{hours(data)}, the classifier's {REFERENCE_EPOCHS} reference epochs {hours(train)}, the detector's "
            f"{detect_epochs} epochs (`detect.max_epochs`) {hours(detect)}, decide to report {hours(rest)}: about "
            f"{hours(data + train + detect + rest)} on 2 CPU cores, almost all of it the two training stages, "
            "the part a GPU shortens (not measured here: no GPU was lent to this project's sessions)."]


def trust_block(reports: Path) -> str:
    """The answer predict gives, from the committed reports: which decision, its calibration, the OOD guard."""
    classification = json.loads((reports / "classification.json").read_text())
    decision = json.loads((reports / "decision.json").read_text())
    split = classification["headline_split"]
    block, chosen = classification[split], classification["decision"]
    cal, ood, unlike = block["calibration"], block["out_of_distribution"], classification["unlike_set"]
    lines = [
        f"Chosen on val by out-of-fold log loss ({decision['folds']} folds; `reports/decision.json`): "
        f"**{chosen['source']}** with **{chosen['calibration']}** calibration; label threshold "
        f"{chosen['threshold']:.3f} (sensitivity ≥ {decision['target_sensitivity']} on val). "
        f"On {split} ({block['n']} images, which chose nothing):", "",
        "| | value | 95 % CI |", "|---|---|---|",
        f"| ECE (15 bins), after calibration | {cal['ece_15_bins']:.3f} | {interval(cal['ece_15_bins_ci95'])} |",
        f"| ECE before (the raw score's sigmoid) | {cal['ece_15_bins_before_calibration']:.3f} | "
        f"{interval(cal['ece_15_bins_before_calibration_ci95'])} |",
        f"| Brier, after calibration | {cal['brier']:.3f} | {interval(cal['brier_ci95'])} |",
    ]
    lines += [f"| AUROC, {name.replace('_', ' ')} | {c['auroc']:.3f} | {interval(c['ci95'])} |"
              for name, c in block["candidates_auroc"].items()]
    lines += ["", "Every candidate and map on val, out of fold (no image scored by a map fitted on it):", "",
              "| candidate | calibration | log loss | ECE (15 bins) | AUROC |", "|---|---|---|---|---|"]
    lines += [f"| {c['source']} | {c['method']} | {c['log_loss']:.3f} | {c['ece_15_bins']:.3f} | {c['auroc']:.3f} |"
              for c in decision["compared_out_of_fold"]]
    lines += ["", "| out-of-distribution guard | |", "|---|---|"]
    lines += [f"| refused as unlike the training images | {ood['flagged']} of {block['n']} "
              f"({100 * ood['flagged_rate']:.1f} %) |",
              f"| the unlike set refused | {unlike['caught']} of {unlike['n']} ({100 * unlike['rate']:.1f} %) |", "",
              "| unlike images | refused |", "|---|---|"]
    lines += [f"| {kind.replace('_', ' ')}: {m['what']} | {m['caught']} of {m['n']} |"
              for kind, m in unlike["by_kind"].items()]
    if classification.get("synthetic"):
        lines += ["", f"All on the phantom: the models were {classification['note']}."]
    return "\n".join(lines) + "\n"


def seed_spread_block(spread_json: Path) -> str:
    """The training noise ``make compare`` and the PR report judge with (benchmarks/seed_spread.json)."""
    if not spread_json.exists():
        return "Not measured yet: run `python benchmarks/seed_spread.py --seeds 1 2 3 4` on a reproduced default run.\n"
    from scripts.noise import LABELS

    r = json.loads(spread_json.read_text())
    seeds = ", ".join("the committed run" if run["train_seed"] is None else str(run["train_seed"]) for run in r["runs"])
    lines = [f"`{r['command']}` on {r['machine']} (commit {r['commit'][:7]}): {len(r['runs'])} runs of the default "
             f"pipeline, same data, training seeds {seeds}.", "",
             "| headline metric | mean | sd | min | max | 95 % band of a difference between two runs |",
             "|---|---|---|---|---|---|"]
    for path, keys in r["spread"].items():
        for key, m in keys.items():
            if m["sd"]:
                band = "–" if m["band95"] is None else f"±{m['band95']:.3f}"
                lines.append(f"| {LABELS.get(path, {}).get(key, f'{path}:{key}')} | {m['mean']:.3f} | {m['sd']:.3f} | "
                             f"{m['min']:.3f} | {m['max']:.3f} | {band} |")
    fixed = [f"{LABELS.get(path, {}).get(key, key)}" for path, keys in r["spread"].items()
             for key, m in keys.items() if not m["sd"]]
    if fixed:
        lines += ["", "The same in every run (no training band: judged by the bootstrap interval where the report has "
                  "one, else exactly): " + "; ".join(fixed) + "."]
    return "\n".join(lines) + "\n"


PREVALENCE_STRATEGIES = {  # benchmarks/prevalence_shift.py's strategies, in the order shown
    "val_own": "val's own prevalence (`threshold_prevalence: val`)",
    "train": "val reweighted to train's (`threshold_prevalence: null`, the default)",
    "oracle": "val reweighted to the test draw's true prevalence (reference only)",
    "minimax": "least worst regret over prevalences 0.05–0.50",
    "gate_at_sensitivity_train": "gate at val's image-probability operating point of `evaluate.target_sensitivity`, "
                                 "box threshold reweighted to train's (as `decide` gates by its decision)",
}


def prevalence_shift_block(shift_json: Path) -> str:
    """Thresholds chosen on val against the best on test under a prevalence shift (benchmarks/prevalence_shift.json)."""
    if not shift_json.exists():
        return "Not measured yet: run `python benchmarks/prevalence_shift.py` on a reproduced default run.\n"
    r = json.loads(shift_json.read_text())
    shifted, default = r["shifted"], r["default"]
    summary, draws = shifted["summary"], len(shifted["draws"])
    lines = [f"`{r['command']}` (commit {r['commit'][:7]}), {r['run']}: {draws} seeded draws drop images so val holds "
             f"{100 * shifted['val_prevalence']:.0f} % positives ({shifted['draws'][0]['val_images']} images) and "
             f"test {100 * shifted['test_prevalence']:.0f} % ({shifted['draws'][0]['test_images']}); train's "
             f"prevalence is {100 * r['train_prevalence']:.1f} %. The gate and box threshold are chosen on the val "
             f"draw and scored on the test draw; regret = the best pair of the same grid on that test draw minus "
             f"the chosen pair's score (median best {summary['test_best_median']:.3f}); the aim is a regret of at "
             f"most {r['done_when_regret']} in every draw.", "",
             "| chosen with | median test RSNA | median regret | worst regret | draws within "
             f"{r['done_when_regret']} | regret, split as is |", "|---|---|---|---|---|---|"]
    for name, label in PREVALENCE_STRATEGIES.items():
        s = summary[name]
        lines.append(f"| {label} | {s['median_test_rsna']:.3f} | {s['median_regret']:.3f} | {s['worst_regret']:.3f} | "
                     f"{s['draws_within_done_when']}/{draws} | {default['strategies'][name]['regret']:.3f} |")
    return "\n".join(lines) + "\n"


GUARDS = {  # benchmarks/real_data.py's guard candidates, in the order shown
    "product": "**the product's guard**: distance or orientation check on the last layer",
    "last_layer": "distance alone on the last layer (the guard before the orientation check)",
    "all_stages": "distance on every ResNet stage (max of standardised distances)",
    "orientation_last_layer": "orientation check alone, last layer",
    "orientation_all_stages": "orientation check alone, every stage",
    "all_stages_and_orientation": "distance on every stage or orientation check on every stage",
}
_CHEST_KINDS = ("inverted", "rotated_90", "rotated_180", "rotated_270", "cropped")


def _ci(values) -> str:
    return "" if values[0] is None else f" ({values[0]:.3f}–{values[1]:.3f})"


def real_data_block(real_json: Path) -> str:
    """The recipe and the guard on real radiographs, Kermany's test split (benchmarks/real_data.json)."""
    if not real_json.exists():
        return "Not measured yet: run `python benchmarks/real_data.py` where ../shared/data holds the Kermany set.\n"
    r = json.loads(real_json.read_text())
    published, done = r["published"], r["done_when"]
    lines = [f"{r['data']}; the published test split, which chose nothing. Published: AUROC {published['auroc']}, "
             f"sensitivity {published['sensitivity']}, specificity {published['specificity']} "
             f"({published['source']}). Aims (issue 30): AUROC ≥ {done['auroc']}, sensitivity ≥ {done['sensitivity']} "
             f"and specificity ≥ {done['specificity']} at val's threshold, ECE ≤ {done['ece']}.", "",
             "| run | settings | train / val / test | test AUROC (95 % CI) | sensitivity | specificity | ECE | Brier "
             "| wall (train) | machine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in r["runs"].items():
        t, c, s = run["test"], run["counts"], run["settings"]
        setting = f"{s['arch']} {s['init']}, {s['image_size']} px, {s['max_epochs']} epochs, lr {s['lr']} {s['lr_schedule']}"
        setting += "".join(f", `{o}`" for o in run["settings"]["overrides"])
        lines.append(f"| {name} | {setting} | {c['train']['total']} / {c['val']['total']} / {c['test']['total']} | "
                     f"{t['auroc']:.3f}{_ci(t['auroc_ci'])} | {t['sensitivity']:.3f}{_ci(t['sensitivity_ci'])} | "
                     f"{t['specificity']:.3f}{_ci(t['specificity_ci'])} | {t['ece']:.3f} | {t['brier']:.3f} | "
                     f"{run['seconds']['total_wall_s']:.0f} s ({run['seconds']['train']['wall_s']:.0f} s) | "
                     f"{run['machine']['cpu']}, {run['machine']['threads']} thread(s), {run['machine']['device']} |")
    lines += ["", f"The out-of-distribution guard on the same runs (aims: ≤ {done['test_refused']:.0%} of real test "
              f"images refused, ≥ {done['unlike_caught']:.0%} of the unlike set caught, each of inverted, rotated and "
              f"cropped ≥ {done['per_chest_kind']:.0%}):", "",
              "| run | guard | test refused | val refused | unlike caught | " + " | ".join(
                  k.replace("_", " ") for k in _CHEST_KINDS) + " | other kinds |",
              "|---|---|---|---|---|" + "---|" * len(_CHEST_KINDS) + "---|"]
    for name, run in r["runs"].items():
        for guard, label in GUARDS.items():
            g = run["ood"].get(guard)
            if g is None:
                continue
            kinds = g["unlike"]["by_kind"]
            other = ", ".join(f"{k.replace('_', ' ')} {v['caught']}/{v['n']}" for k, v in kinds.items()
                              if k not in _CHEST_KINDS)
            lines.append(f"| {name} | {label} | {g['test_refused']:.1%} | {g['val_refused']:.1%} | "
                         f"{g['unlike']['rate']:.1%} | " + " | ".join(
                             f"{kinds[k]['caught']}/{kinds[k]['n']}" for k in _CHEST_KINDS) + f" | {other} |")
    return "\n".join(lines) + "\n"


def blocks(root: Path) -> dict[str, str]:
    return {
        "headline": headline_block(root),
        "params": params_block(root / "params.yaml"),
        "metrics": metrics_block(root),
        "bench": bench_block(root / "benchmarks" / "results.json"),
        "architectures": architectures_block(root / "benchmarks" / "results.json"),
        "detector_architectures": architectures_block(root / "benchmarks" / "results.json", "detect"),
        "rehearsal": rehearsal_block(root / "benchmarks" / "rehearsal.json"),
        "detectors": detectors_block(root / "benchmarks" / "detectors.json"),
        "trust": trust_block(root / "reports"),
        "seed_spread": seed_spread_block(root / "benchmarks" / "seed_spread.json"),
        "prevalence_shift": prevalence_shift_block(root / "benchmarks" / "prevalence_shift.json"),
        "real_data": real_data_block(root / "benchmarks" / "real_data.json"),
    }


def documents(root: Path) -> list[Path]:
    """The files that may hold generated blocks: the README and every docs page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render(text: str, generated: dict[str, str], name: str = "README.md") -> str:
    """``text`` (of the file ``name``) with each generated block replaced; an unknown block name is an error."""
    def replace(match: re.Match) -> str:
        if match[2] not in generated:
            raise SystemExit(f"readme: error: {name} has a block {match[2]!r} that nothing generates")
        return match[1] + generated[match[2]] + match[4]

    return _BLOCK.sub(replace, text)


def block_names(text: str) -> list[str]:
    return [match[2] for match in _BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    root = Path(argv[0]) if argv else ROOT
    generated = blocks(root)
    for path in documents(root):
        text = path.read_text()
        new = render(text, generated, str(path.relative_to(root)))
        if new != text:
            path.write_text(new)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

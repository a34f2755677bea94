"""`make rehearsal`: the pipeline at the real dataset's size, stage by stage, with the figures a user plans with.

A throwaway copy of the project (tests/pipeline_repo.make_repo) gets a phantom of
RSNA's size (26,684 patients, 1024-pixel DICOMs), the reference's split (24,000
train, the other 2,684 val, no test), 224-pixel arrays, the classifier's one epoch
cut to ``--batches`` batches and one whole epoch of the detector. Each stage runs with its own `dvc repro <stage>`, in
pipeline order, measured for wall seconds and peak memory of the whole process
tree; then DVC's own overhead (`dvc status`, a no-op `dvc repro`) with every file
in place, and the sizes on disk. Writes benchmarks/rehearsal.json and prints a table.
Not part of `make test`: the full size takes two to three hours on two cores; a quick
end-to-end check is `python benchmarks/rehearsal.py --patients 300 --out /tmp/r.json`. Progress is saved after
every stage: ``--resume WORK`` goes on with an interrupted run (killed, or its machine taken back) in its
folder, without running again the stages it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from process_tree import TreeSampler

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
sys.path.insert(0, str(ROOT / "tests"))
from pipeline_repo import environment, make_repo, run  # noqa: E402

RSNA_PATIENTS, RSNA_TRAIN = 26684, 24000
# `dvc repro <stage>` one at a time, in the order `dvc repro` runs them (evaluate reads the predictor that decide
# writes from both models, so detect and decide come before it); check_params is upstream of every stage.
STAGES = ("check_params", "download", "dicom_to_npy", "compute_stats", "train", "detect", "decide", "evaluate",
          "localize", "evaluate_detection", "report")
MB = 2**20


def rehearsal_params(patients: int, phantom_size: int, image_size: int, batches: int, batch_size: int) -> dict:
    """Settings over params.yaml: the reference's split in proportion (exactly 24,000 / 2,684 at full size)."""
    return {
        "download": {"source": "synthetic", "phantom": {"patients": patients, "size": phantom_size}},
        "split": {"train_size": round(patients * RSNA_TRAIN / RSNA_PATIENTS), "test_size": 0, "stratify": False},
        "dicom_to_npy": {"image_size": image_size},
        "train": {"max_epochs": 1, "limit_train_batches": batches, "batch_size": batch_size},
        # One whole epoch: every train image with boxes and as many without, then every val image decoded.
        "detect": {"max_epochs": 1},
    }


def run_stage(repo: Path, stage: str, log: Path, force: bool = False) -> dict:
    """`dvc repro <stage>` (``force``: `dvc repro --force --single-item`, though nothing changed): wall seconds,
    the stage command's own seconds, peak memory in MB."""
    env = environment() | {"PYTHONPATH": str(repo / "src")}  # the copy's code, not the editable install's
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu_seconds()
    with open(log, "w") as out:
        start = time.perf_counter()
        command = ["dvc", "repro", *(["--force", "--single-item"] if force else []), stage]
        process = psutil.Popen(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
        with TreeSampler(process, watch=f"stages/{stage}.py") as sampler:
            code = process.wait()
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}); its output is in {log}")
    command = None if sampler.first_seen is None else sampler.last_seen - sampler.first_seen
    return {
        "stage": stage,
        "seconds": round(seconds, 1),
        # User + system CPU of the whole tree (every descendant is waited for): what the load cannot stretch.
        "cpu_seconds": round(_children_cpu_seconds() - cpu_before, 1),
        # The stage's script alone (sampled every 0.1 s); the rest is DVC: hashing, caching, status.
        "command_seconds": None if command is None else round(command, 1),
        "dvc_seconds": None if command is None else round(seconds - command, 1),
        "peak_rss_mb": round(sampler.peak_rss / MB),
        "peak_anon_mb": round(sampler.peak_anon / MB),
        "peak_process_rss_mb": round(sampler.peak_process_rss / MB),
        "dvc_process_peak_rss_mb": round(sampler.peak_root_rss / MB),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(repo: Path, args: list[str], repeats: int) -> dict:
    """Seconds of ``args`` run ``repeats`` times: the first and the median."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run(args, repo).stdout
        times.append(time.perf_counter() - start)
        if args[1] == "repro" and "Running stage" in out:
            raise SystemExit(f"{' '.join(args)} was expected to do nothing but ran a stage:\n{out}")
    return {"first_s": round(times[0], 2), "median_s": round(statistics.median(times), 2)}


def disk_usage(*paths: Path) -> int:
    """Bytes of disk the paths take together; a file hard-linked into several of them counts once."""
    return int(subprocess.run(["du", "-s", "-c", "-B1", *map(str, paths)], capture_output=True, text=True,
                              check=True).stdout.split()[-2])


def file_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, files) below ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _seconds(clock: str) -> int:
    return sum(int(part) * 60**i for i, part in enumerate(reversed(clock.split(":"))))


def train_loop(log_text: str) -> tuple[int, int]:
    """(batches, seconds) of the training loop, from Lightning's progress bar in the train stage's log.

    The bar's elapsed time (whole seconds) stops at the last training batch, so it
    leaves out what comes after: validation (its own bar), temperature fitting,
    export. It includes the first batch (the loader's and the model's warm-up).
    Rich's bar ("Epoch 0/0 ━━━ 60/60 0:02:52 • 0:00:00") when rich is installed, else tqdm's.
    """
    rich = re.findall(r"Epoch \d+/\d+ .*?(\d+)/\d+ (\d+:\d\d:\d\d) •", log_text)
    bars = rich or re.findall(r"Epoch \d+:\s+\d+%\|[^|]*\|\s*(\d+)/\d+ \[([\d:]+)<", log_text)
    if not bars:
        raise SystemExit("no training progress bar in the train stage's log: was the progress bar turned off?")
    batches, clock = bars[-1]
    return int(batches), _seconds(clock)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch  # imported here: only for its version and the device

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dvc": run(["dvc", "--version"], ROOT).stdout.strip(),
        "os": platform.platform(),
    }


PIPELINE_CODE = ("src", "stages", "dvc.yaml")  # what the throwaway copy's stages run


def working_tree_hashes(repo: Path) -> list[str]:
    """Git's hashes of the copy's :data:`PIPELINE_CODE` as its files are now (what `dvc repro` runs), not as its
    first commit holds them: the tree of each folder through a throwaway index, the blob of each file."""
    hashes = []
    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        for path in PIPELINE_CODE:
            if (repo / path).is_dir():
                subprocess.run(["git", "add", "-A", "--", path], cwd=repo, env=env, check=True)
                command = ["git", "write-tree", f"--prefix={path}/"]
            else:
                command = ["git", "hash-object", path]
            hashes.append(subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True,
                                         check=True).stdout.strip())
    return hashes


def code_version(repo: Path) -> dict:
    """This checkout's commit and, since a resumed rehearsal's stages run the copy made when it started, the
    newest commit whose pipeline code is the copy's byte for byte (git's tree hashes compared)."""
    head = run(["git", "rev-parse", "HEAD"], ROOT).stdout.strip()
    paths = ["src", "stages", "dvc.yaml", "params.yaml", "benchmarks", "tests/pipeline_repo.py"]
    changed = run(["git", "status", "--porcelain", "--", *paths], ROOT).stdout.split("\n")
    copied = working_tree_hashes(repo)
    commits = run(["git", "log", "--format=%H", "-n", "500", "HEAD"], ROOT).stdout.split()
    queries = "".join(f"{c}:{p}\n" for c in commits for p in PIPELINE_CODE)
    hashes = subprocess.run(["git", "cat-file", "--batch-check=%(objectname)"], input=queries, cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    same = [c for i, c in enumerate(commits) if hashes[i * len(PIPELINE_CODE):(i + 1) * len(PIPELINE_CODE)] == copied]
    return {"commit": head, "uncommitted_changes": [line[3:] for line in changed if line and "rehearsal.json" not in line],
            "stages_ran_the_code_of": same[0] if same else "a version not in this checkout's last 500 commits"}


def bare_rate(args: argparse.Namespace) -> float:
    """What this machine gives the bare training loop now (images/s), under whatever load there is."""
    import run as bench  # benchmarks/run.py (`make bench`), which imports torch

    return bench.bare_train_rate(args.image_size, args.batch_size, steps=args.bare_steps, warmup=1)


def rows_from_printed_log(text: str) -> list[dict]:
    """The stages an interrupted rehearsal finished, from what it printed ("dvc repro X ..." then "  S s, peak
    RSS M MB"): the wall seconds and the peak memory; the other columns were never printed, so they are None."""
    finished = re.findall(r"^dvc repro (\w+) \.\.\.\n  ([\d.]+) s, peak RSS (\d+) MB$", text, re.M)
    if not finished:
        raise SystemExit("no finished stage in the printed log: it should hold lines like "
                         "'dvc repro download ...' followed by '  455.0 s, peak RSS 337 MB'")
    columns = ("cpu_seconds", "command_seconds", "dvc_seconds", "peak_anon_mb", "peak_process_rss_mb",
               "dvc_process_peak_rss_mb", "load_1min_before", "load_1min_after")
    return [{"stage": stage, "seconds": float(seconds), **dict.fromkeys(columns), "peak_rss_mb": int(peak),
             "from_printed_log": True} for stage, seconds, peak in finished]


def save_progress(logs: Path, progress: dict) -> None:
    (logs / "progress.json").write_text(json.dumps(progress, indent=2) + "\n")


def run_stages(args: argparse.Namespace, repo: Path, logs: Path, progress: dict) -> tuple[list[dict], float]:
    """Every stage not yet in ``progress`` (a resumed run's), saved to ``logs``/progress.json after each one, so
    that an interrupted rehearsal can go on from where it stopped (--resume) instead of starting again."""
    stages = progress.setdefault("stages", [])
    done = {row["stage"] for row in stages}
    for stage in STAGES:
        if stage in done:
            continue
        if "train" in done and "bare_loop_images_per_s" not in progress:  # resumed after train
            progress["bare_loop_images_per_s"] = bare_rate(args)
            progress["bare_loop_measured"] = "when the rehearsal was resumed, not right after train"
            save_progress(logs, progress)
        print(f"dvc repro {stage} ...", flush=True)
        stages.append(run_stage(repo, stage, logs / f"{stage}.log", force=stage in args.again))
        done.add(stage)
        print(f"  {stages[-1]['seconds']} s, peak RSS {stages[-1]['peak_rss_mb']} MB", flush=True)
        if stage == "train":  # under the same load as the stage: what this machine gives a bare loop now
            progress["bare_loop_images_per_s"] = bare_rate(args)
        save_progress(logs, progress)
    stages.sort(key=lambda row: STAGES.index(row["stage"]))  # a stage run --again comes back in its place
    return stages, progress["bare_loop_images_per_s"]


def dvc_overhead(args: argparse.Namespace, repo: Path) -> dict:
    """DVC's own seconds with every stage in place (status, a no-op repro) and the disk its cache takes, before
    and after `dvc checkout --relink`."""
    dvc = {
        # The whole pipeline's status, every stage in place.
        "status": timed(repo, ["dvc", "status"], args.repeats),
        "noop_repro_evaluate": timed(repo, ["dvc", "repro", "evaluate"], args.repeats),
    }
    raw, cache = repo / "data" / "raw", repo / ".dvc" / "cache"
    cache_bytes, cache_files = file_bytes(cache)
    dcm = next((raw / "stage_2_train_images").iterdir())
    dvc |= {
        "cache_bytes": cache_bytes,
        "cache_files": cache_files,
        "cache_link_type": run(["dvc", "config", "cache.type"], repo, check=False).stdout.strip() or "default",
        # With hard links the workspace and the cache share the files: the disk holds them once.
        "workspace_files_linked_to_cache": dcm.stat().st_nlink > 1,
        "disk_bytes_cache_and_data": disk_usage(cache, repo / "data"),
    }
    # `dvc repro` leaves its outputs as copies of the cache even where hard links are allowed (DVC keeps
    # files it cannot tell apart from reflinks as they are); `dvc checkout --relink` links them.
    start = time.perf_counter()
    run(["dvc", "checkout", "--relink", "--with-deps", "evaluate"], repo)
    dvc |= {
        "relink_s": round(time.perf_counter() - start, 1),
        "disk_bytes_cache_and_data_after_relink": disk_usage(cache, repo / "data"),
        "noop_repro_evaluate_after_relink": timed(repo, ["dvc", "repro", "evaluate"], args.repeats),
    }
    return dvc


def rehearse(args: argparse.Namespace, work: Path, logs: Path, progress: dict) -> dict:
    params = rehearsal_params(args.patients, args.phantom_size, args.image_size, args.batches, args.batch_size)
    repo = work / "repo" if args.resume else make_repo(work / "repo", params)
    stages, bare = run_stages(args, repo, logs, progress)

    if "dvc" not in progress:  # measured once: a relinked workspace cannot show the copies again
        progress["dvc"] = dvc_overhead(args, repo)
        save_progress(logs, progress)
    dvc = progress["dvc"]
    raw, processed = repo / "data" / "raw", repo / "data" / "processed"
    raw_bytes, raw_files = file_bytes(raw)
    data = {
        "raw_bytes": raw_bytes,
        "raw_files": raw_files,
        "processed_bytes": file_bytes(processed)[0],
    }
    manifest_lines = (processed / "manifest.csv").read_text().count("\n") - 1
    counts = json.loads((repo / "reports" / "dataset.json").read_text())["counts"]
    batches, loop_s = train_loop((logs / "train.log").read_text())
    train_stage = next(row for row in stages if row["stage"] == "train")
    images_per_s = min(batches * args.batch_size, counts["train"]["total"]) / loop_s
    # Everything in the stage's script but the training loop: start-up, the augmented grid, validation
    # of every val image, the temperature fit (another pass over val) and the export.
    # A stage read back from an interrupted run's printed log has no command seconds: DVC's few seconds count in.
    other_s = (train_stage["command_seconds"] or train_stage["seconds"]) - loop_s
    full_batches = -(-counts["train"]["total"] // args.batch_size)
    train = {
        "batches": batches,
        "batch_size": args.batch_size,
        "loop_s": loop_s,
        "images_per_s": round(images_per_s, 1),
        "how": "batches x batch size / the training loop's seconds, read from Lightning's progress bar in the "
               "train stage's log (first batch included; validation, temperature fit and export excluded)",
        # The same network, optimizer and batch on tensors already in memory, right after the stage:
        # the machine's speed at the time, so the ratio holds on a quieter machine too.
        "bare_loop_images_per_s": round(bare, 1),
        "fraction_of_bare_loop": round(images_per_s / bare, 2),
        "stage_other_s": round(other_s, 1),
        "val_images": counts["val"]["total"],
        "full_epoch_batches": full_batches,
        # One full epoch as the train stage runs it: every train batch at the measured rate plus the rest as measured.
        "full_epoch_stage_estimate_s": round(full_batches * loop_s / batches + other_s),
    }
    if "bare_loop_measured" in progress:
        train["bare_loop_measured"] = progress["bare_loop_measured"]
    evaluate = json.loads((repo / "reports" / "classification.json").read_text())
    return {
        "code": code_version(repo),
        "settings": params | {"patients": args.patients, "manifest_rows": manifest_lines, "counts": counts},
        "stages": stages,
        "dvc": dvc,
        "data": data,
        "train": train,
        "evaluate_headline_split": evaluate["headline_split"],
    }


def resumed_progress(args: argparse.Namespace, logs: Path) -> dict:
    """The interrupted run's progress: its progress.json, else its printed log (--printed-log)."""
    if not (args.resume / "repo" / "dvc.lock").is_file():
        raise SystemExit(f"--resume {args.resume}: no repo/dvc.lock in it; pass the folder the interrupted run "
                         "printed as 'rehearsal in ...' (kept only with --keep, or when it was killed)")
    saved = logs / "progress.json"
    if saved.is_file():
        progress = json.loads(saved.read_text())
    elif args.printed_log is None:
        raise SystemExit(f"--resume: {saved} does not exist; pass the interrupted run's printed output as --printed-log")
    else:
        progress = {"stages": rows_from_printed_log(args.printed_log.read_text()), "load_average_before": [None] * 3,
                    # mkdtemp made the folder as the run started
                    "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(args.resume.stat().st_mtime))}
    progress["stages"] = [row for row in progress["stages"] if row["stage"] not in args.again]
    if "train" in args.again:  # the bare loop is measured again right after it
        for key in ("bare_loop_images_per_s", "bare_loop_measured"):
            progress.pop(key, None)
    progress.setdefault("resumed", []).append(time.strftime("%Y-%m-%d %H:%M:%S"))
    return progress


def print_table(result: dict) -> None:
    columns = ("stage", "seconds", "cpu_seconds", "command_seconds", "dvc_seconds", "peak_rss_mb", "peak_anon_mb",
               "peak_process_rss_mb", "dvc_process_peak_rss_mb", "load_1min_before", "load_1min_after")
    widths = [max(len(c), *(len(str(row[c])) for row in result["stages"])) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in result["stages"]:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths)))
    dvc, data, train = result["dvc"], result["data"], result["train"]
    print(f"dvc status: {dvc['status']['median_s']} s (first {dvc['status']['first_s']} s); no-op dvc repro evaluate: "
          f"{dvc['noop_repro_evaluate']['median_s']} s (first {dvc['noop_repro_evaluate']['first_s']} s)")
    print(f"DVC cache: {dvc['cache_bytes'] / MB:.0f} MB in {dvc['cache_files']} files (link type {dvc['cache_link_type']}, "
          f"shared with the workspace: {dvc['workspace_files_linked_to_cache']}); cache and data on disk together: "
          f"{dvc['disk_bytes_cache_and_data'] / MB:.0f} MB; after `dvc checkout --relink` ({dvc['relink_s']} s) "
          f"{dvc['disk_bytes_cache_and_data_after_relink'] / MB:.0f} MB")
    print(f"data/raw: {data['raw_bytes'] / MB:.0f} MB in {data['raw_files']} files; "
          f"data/processed: {data['processed_bytes'] / MB:.0f} MB")
    print(f"train: {train['images_per_s']} images/s ({train['batches']} batches of {train['batch_size']} in "
          f"{train['loop_s']} s; {train['fraction_of_bare_loop']} of a bare loop's {train['bare_loop_images_per_s']}); "
          f"the rest of the stage (validation of {train['val_images']} images, temperature, export) "
          f"{train['stage_other_s']} s; a one-epoch train stage on all {train['full_epoch_batches']} batches "
          f"~{train['full_epoch_stage_estimate_s']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=RSNA_PATIENTS, help="phantom patients (RSNA: 26684)")
    parser.add_argument("--batches", type=int, default=30, help="training batches (train.limit_train_batches)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224, help="dicom_to_npy.image_size (the reference: 224)")
    parser.add_argument("--phantom-size", type=int, default=1024, help="DICOM side in pixels (RSNA: 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of dvc status and of the no-op repro")
    parser.add_argument("--bare-steps", type=int, default=3, help="timed steps of the bare training loop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "rehearsal.json")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway repository (its path is printed)")
    parser.add_argument("--resume", type=Path, metavar="WORK",
                        help="go on with an interrupted rehearsal in its kept folder WORK (the printed "
                             "'rehearsal in ...'): the stages it finished are not run again; the folder is kept")
    parser.add_argument("--again", nargs="+", choices=STAGES, default=[],
                        help="with --resume: run these finished stages again (e.g. train, when it ran under a load "
                             "that makes its figures useless)")
    parser.add_argument("--printed-log", type=Path,
                        help="with --resume, when the interrupted run saved no progress.json: what it printed")
    args = parser.parse_args()
    if args.again and not args.resume:
        parser.error("--again goes with --resume (a new rehearsal runs every stage)")
    CACHE.mkdir(parents=True, exist_ok=True)
    # The stage logs lie beside the work folder (both in the checkout's benchmarks/.cache that started the run).
    logs = (args.resume.resolve().parent if args.resume else CACHE) / f"rehearsal-logs-{args.patients}"
    if args.resume:
        work, progress = args.resume, resumed_progress(args, logs)
    else:
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        work = Path(tempfile.mkdtemp(prefix="rehearsal-", dir=CACHE))
        progress = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_before": os.getloadavg()}
    print(f"rehearsal in {work}; stage logs in {logs}", flush=True)
    started = time.time()
    try:
        result = rehearse(args, work, logs, progress)
    finally:
        if not (args.keep or args.resume):
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": progress["started"],
        # With --resume: from the resumption on; the stages' own seconds are the figures to read.
        "total_s": round(time.time() - started),
        **({"resumed": progress["resumed"]} if "resumed" in progress else {}),
        "load_average_before": [None if x is None else round(x, 2) for x in progress["load_average_before"]],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "memory": ("peak_rss_mb: the sum of the resident sets of `dvc repro` and all its descendants, sampled every "
                   "0.1 s (shared pages count once per process: an upper bound); peak_anon_mb: the same without "
                   "file-backed and shared pages (memory-mapped arrays, forked workers' shared pages); "
                   "peak_process_rss_mb: the largest single process; dvc_process_peak_rss_mb: DVC's own process"),
    } | result
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""benchmarks/rehearsal.py's settings and log reading (the rehearsal itself runs with `make rehearsal`)."""

import sys

import pytest

from pipeline_repo import ROOT
from project_params import project_params

from pneumonia.data.split import split_counts

sys.path.insert(0, str(ROOT / "benchmarks"))
import rehearsal  # noqa: E402


def test_full_size_settings_are_valid_and_split_as_the_reference():
    overrides = rehearsal.rehearsal_params(26684, phantom_size=1024, image_size=224, batches=30, batch_size=64)
    params = project_params(overrides)
    assert params.train.limit_train_batches == 30 and params.download.phantom.patients == 26684
    assert params.detect.max_epochs == 1 and rehearsal.STAGES[-1] == "report"  # the detector's stages too
    assert split_counts(26684, params.split.train_size, params.split.test_size) == {"train": 24000, "val": 2684, "test": 0}


def test_the_stages_are_timed_in_the_order_dvc_runs_them():
    """Each `dvc repro <stage>` must find its upstream stages done, or it runs (and is timed for) them too."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    producer = {next(iter(o)) if isinstance(o, dict) else o: name for name, s in stages.items() for o in s.get("outs", [])}
    assert sorted(rehearsal.STAGES) == sorted(stages) and len(set(rehearsal.STAGES)) == len(stages)  # each once
    for position, name in enumerate(rehearsal.STAGES):
        for dep in stages[name]["deps"]:
            upstream = producer.get(dep if isinstance(dep, str) else next(iter(dep)))
            assert upstream is None or rehearsal.STAGES.index(upstream) < position, f"{name} needs {upstream} first"


def test_the_training_loop_is_read_from_either_progress_bar():
    rich = "Epoch 0/0  ━━━━━━━━━━━━━━━━━━━━━━━━━━ 30/30 0:12:05 • 0:00:00 0.04it/s v_num: _run\n"
    tqdm = "Epoch 0:  50%|█████     | 15/30 [01:01<01:01,  0.25it/s]\rEpoch 0: 100%|██████████| 30/30 [1:02:03<00:00]\r"
    assert rehearsal.train_loop("Seed set to 42\n" + rich) == (30, 725)
    assert rehearsal.train_loop(tqdm) == (30, 3723)


def test_an_interrupted_runs_printed_stages_are_read_back_without_inventing_the_unprinted_columns():
    printed = ("rehearsal in /x/rehearsal-abc; stage logs in /x/rehearsal-logs-26684\n"
               "dvc repro download ...\n  455.0 s, peak RSS 337 MB\n"
               "dvc repro train ...\n  2442.6 s, peak RSS 3270 MB\n"
               "dvc repro decide ...\n")  # killed during decide: not finished, so not read
    rows = rehearsal.rows_from_printed_log(printed)
    assert [(r["stage"], r["seconds"], r["peak_rss_mb"]) for r in rows] == [("download", 455.0, 337),
                                                                            ("train", 2442.6, 3270)]
    assert all(r["cpu_seconds"] is None and r["from_printed_log"] for r in rows)
    with pytest.raises(SystemExit, match="no finished stage"):
        rehearsal.rows_from_printed_log("dvc repro download ...\n")

"""Stage check_params: validate the whole params.yaml before any other stage runs.

Every other stage depends on this stage's output, so DVC runs it first whenever
params.yaml changes, and a misspelled key, a wrong type or an out-of-range value
stops `dvc repro` / `dvc exp run` here, before DVC removes any stage's earlier
outputs, whether or not the stage the key belongs to would rerun. The output is
the same line for every valid file, so a valid change reruns only the stages
whose own keys changed.
"""

from pathlib import Path

from pneumonia.core.atomic import atomic_path
from pneumonia.core.stage import run_stage

OUT = Path("reports/params_check.txt")


def main(params):  # run_stage has loaded and validated the whole file: reaching here means it is valid
    with atomic_path(OUT) as tmp:
        tmp.write_text("params.yaml is valid\n")
    print("params.yaml is valid")


if __name__ == "__main__":
    run_stage("check_params", main)

"""Training noise of the default run: its headline metrics over several training seeds, same data.

    python benchmarks/seed_spread.py --seeds 1 2 3 4     # in a clone whose default run is reproduced

For each seed, ``dvc exp run -S base.train_seed=SEED`` reruns the pipeline from training on (the phantom,
the split and the arrays stay the same: ``base.seed`` seeds those), and every number in metrics/*.json
is recorded. The committed default run (``train_seed: null``, i.e. ``base.seed``) is the first sample.
Writes benchmarks/seed_spread.json after every seed, so an interrupted sweep keeps what finished.
The workspace is put back to the committed run at the end (``git checkout`` + ``dvc checkout``).

``scripts.noise`` reads the file: a change between two runs is training noise when it is within
``t(0.975, n-1) * sd * sqrt(2)`` (the 95 % band of the difference of two runs, sd from the n seeds).
About 22 minutes a seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scripts.noise import METRIC_FILES, spread_summary  # noqa: E402

OUT = Path("benchmarks/seed_spread.json")


def _headline() -> dict[str, dict[str, float]]:
    """{metrics file: {key: value}} of the workspace's numeric headline metrics."""
    found = {}
    for path in METRIC_FILES:
        values = json.loads(Path(path).read_text())
        found[path] = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return found


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _write(runs: list[dict], commit: str, command: str) -> None:
    result = {
        "what": "headline metrics of the default run over training seeds (base.train_seed), same data; "
                "training noise for make compare and the PR report (scripts.noise)",
        "command": command,
        "commit": commit,
        "machine": f"{_cpu()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores",
        "runs": runs,
        "spread": spread_summary([run["metrics"] for run in runs]),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds besides the committed run's")
    args = parser.parse_args()
    if subprocess.run(["dvc", "status", "--quiet"]).returncode != 0:
        print("seed_spread: error: the workspace's pipeline is not the committed run; run `dvc repro` (or "
              "`dvc pull`) first", file=sys.stderr)
        return 1
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    command = "python benchmarks/seed_spread.py --seeds " + " ".join(map(str, args.seeds))
    runs = [{"train_seed": None, "wall_s": None, "metrics": _headline()}]  # the committed default run
    try:
        for seed in args.seeds:
            start = time.monotonic()
            subprocess.run(["dvc", "exp", "run", "--name", f"seed-{seed}", "-S", f"base.train_seed={seed}"], check=True)
            runs.append({"train_seed": seed, "wall_s": round(time.monotonic() - start), "metrics": _headline()})
            _write(runs, commit, command)
            print(f"seed {seed}: {runs[-1]['metrics']}", flush=True)
    finally:
        tracked = [p for p in ("params.yaml", "dvc.lock", "metrics", "reports", "plots", "dvclive")
                   if subprocess.run(["git", "cat-file", "-e", f"HEAD:{p}"], capture_output=True).returncode == 0]
        subprocess.run(["git", "checkout", "HEAD", "--", *tracked], check=False)
        subprocess.run(["dvc", "checkout", "--force", "--quiet"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The rehearsal's phantom generation alone: `dvc repro download` at the real dataset's size, timed as
`make rehearsal` times it (the same throwaway repository, params and measurement: benchmarks/rehearsal.py),
beside the figure of the committed benchmarks/rehearsal.json.

    python benchmarks/phantom_rehearsal.py            # 26,684 patients at 1024 px; writes benchmarks/phantom_rehearsal.json

CPU seconds (user + system of DVC and the stage, all processes) are what the load cannot stretch much; the
wall seconds depend on what else the machine runs, so the load average is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rehearsal import CACHE, RSNA_PATIENTS, ROOT, code_version, make_repo, rehearsal_params, run_stage  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=RSNA_PATIENTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "phantom_rehearsal.json")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="phantom-rehearsal-", dir=CACHE))
    try:
        repo = make_repo(work / "repo", rehearsal_params(args.patients, 1024, 224, 30, 64))
        run_stage(repo, "check_params", work / "check_params.log")
        download = run_stage(repo, "download", work / "download.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    committed = json.loads((ROOT / "benchmarks" / "rehearsal.json").read_text())
    before = next(s for s in committed["stages"] if s["stage"] == "download")
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": code_version(),
        "patients": args.patients,
        "cores": os.cpu_count(),
        "download": download,
        "rehearsal_json_download": {k: before[k] for k in ("seconds", "cpu_seconds", "load_1min_before")
                                    if k in before} | {"commit": committed.get("code", {}).get("commit")},
        # only like for like: the same number of patients as the committed rehearsal
        "cpu_seconds_ratio": round(before["cpu_seconds"] / download["cpu_seconds"], 2)
        if committed["settings"]["patients"] == args.patients else None,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"download at {args.patients:,} patients: {download['seconds']} s wall, {download['cpu_seconds']} CPU-s "
          f"(load {download['load_1min_before']}); rehearsal.json: {before['cpu_seconds']} CPU-s; "
          (f"{result['cpu_seconds_ratio']}x fewer CPU seconds" if result["cpu_seconds_ratio"] else "not the same size"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

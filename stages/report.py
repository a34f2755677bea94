"""Stage report: reports/report.md (and its figures) from the reports and plot data of the earlier stages."""

from pneumonia import report
from pneumonia.stage import run_stage


def main(params):
    print(f"wrote {report.run()}")


if __name__ == "__main__":
    run_stage("report", main)

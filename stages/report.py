"""Stage report: reports/report.md (and its figures) from the reports and plot data of the earlier stages, and
reports/model_card.md from the model file predict loads and the reports."""

from pathlib import Path

from pneumonia.reporting import model_card, report
from pneumonia.core.stage import run_stage


def main(params):
    page = report.run(Path("reports"), Path("plots"))
    card = model_card.run(Path("models/pneumonia.safetensors"), Path("reports"))
    print(f"wrote {page} and {card}")


if __name__ == "__main__":
    run_stage("report", main)

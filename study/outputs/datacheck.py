"""The data report where the user looks: one console line, the full text, the counts.

``model.data`` checks a dataset and counts every image and box it dropped, clipped or fixed
(``DataReport``, model/data/validate.py); ``python -m model.data check`` prints it. Training used
to stay silent about it. Here each run (study/cli/train.py), each trial and the study driver say it:

* one line of counts — kept, dropped, clipped, why, the first few files — on the console;
* the full report (every file and box) in ``data_report.txt`` next to the run's results;
* the counts as flat columns (``metrics.json``, ``results.csv``);
* ``--strict``: any problem stops the run before training, naming the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.data.raw import DataError, plural
from model.data.validate import DataReport
from study.files import atomic_write_json, atomic_write_text
from study.layout import DATA_REPORT_JSON, DATA_REPORT_TXT

FIRST_FILES = 3  # files named on the console line
DATA_COLUMNS = (
    "data_images",
    "data_boxes",
    "data_images_dropped",
    "data_boxes_dropped",
    "data_boxes_clipped",
    "data_problems",
)


def reasons(report: DataReport) -> list[str]:
    """``corrupt_image: 1 image (2 boxes)``, ``zero_area: 3 boxes`` … sorted by kind."""
    out = []
    counts = report.reason_counts().items()
    for key, c in sorted(counts, key=lambda kc: kc[0].partition(": ")[2]):
        action, _, kind = key.partition(": ")
        if action in ("dropped image", "fixed"):
            boxes = f" ({plural(c['boxes'], 'box')})" if c["boxes"] else ""
            out.append(f"{kind}: {plural(c['images'], 'image')}{boxes}")
        else:
            out.append(f"{kind}: {plural(c['boxes'], 'box')}")
    return out


def data_counts(report: DataReport) -> dict[str, Any]:
    """The flat columns of ``results.csv`` / ``metrics.json`` (totals over the splits)."""
    return {
        "data_images": report.total("images"),
        "data_boxes": report.total("boxes"),
        "data_images_dropped": report.total("images_dropped"),
        "data_boxes_dropped": report.total("boxes_dropped"),
        "data_boxes_clipped": report.total("boxes_clipped"),
        "data_problems": "; ".join(reasons(report)),
    }


def _short(path: str, root: str) -> str:
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.name


def data_line(report: DataReport, full_report: Path | None = None) -> str:
    """One line: what was kept per split, what was dropped or clipped and why, the first files."""
    line = f"data: {report.summary()}"
    if report.issues:
        line += f" ({', '.join(reasons(report))})"
        first = [
            f"{_short(i.image or i.source, report.root)} ({i.kind})"
            for i in report.issues[:FIRST_FILES]
        ]
        more = len(report.issues) - len(first)
        line += "; first: " + ", ".join(first) + (f" and {more} more" if more else "")
    if full_report is not None:
        line += f"; full report {full_report}"
    return line


def write_report(report: DataReport, folder: Path) -> Path:
    """``data_report.txt`` (every problem listed) and ``data_report.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    txt = folder / DATA_REPORT_TXT
    atomic_write_text(txt, report.format(max_issues=None) + "\n")
    atomic_write_json(folder / DATA_REPORT_JSON, report.to_dict())
    return txt


def strict_error(report: DataReport, listed: str) -> DataError:
    """The one-line refusal of ``--strict``; ``listed`` says where every problem is named."""
    n = len(report.issues)
    return DataError(
        f"--strict: the dataset {report.root} has {plural(n, 'problem')} "
        f"({', '.join(reasons(report))}); {listed}. Fix those files, or drop --strict to train "
        "without the dropped images and boxes"
    )


class ReportWriter:
    """An ``on_report`` for ``model.trainer.load_trial_data``: writes the report files into
    ``folder``, says the line, and keeps the report for the caller (``.report``)."""

    def __init__(self, folder: Path, say: Callable[[str], None]) -> None:
        self.folder = folder
        self.say = say
        self.report: DataReport | None = None
        self.path: Path | None = None

    def __call__(self, report: DataReport) -> None:
        self.report = report
        self.path = write_report(report, self.folder)
        self.say(data_line(report, self.path))

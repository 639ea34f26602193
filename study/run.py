"""Run a study: ``python study/run.py --space ablation [--data PATH] [options]``.

Without ``--data`` the trials train on the embedded floating-bottle dataset with the space's quick
profile (small images, few epochs, capped images) — a first look in minutes on a CPU; with
``--data`` they use the space's own settings. ``--dry-run`` prints every planned trial (one JSON
object per line, full config) and the pretraining jobs, and starts nothing.

Outputs go to ``studies/<space>-<timestamp>/`` (or ``--out``): results.csv, report.md, plots,
best_config.yaml (see study/driver.py). Ctrl-C stops cleanly; ``--resume --out DIR`` continues
without rerunning finished trials — only in a study folder this user created (it restores Ray
Tune's pickled state; see docs/studies.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python study/run.py` (the README's); not -m, not yolox-study
    # the script's folder, study/, comes first on sys.path (and Ray copies it to its workers),
    # where train.py, report.py, … would shadow top-level modules of those names: the one place
    # that cannot be avoided without changing the README's command
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

from study.args import StudyArgs, build_parser  # noqa: E402
from study.driver import main_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    args = StudyArgs(**vars(ns))
    return main_entry(args)


if __name__ == "__main__":
    sys.exit(main())

"""Run a study: ``python study/run.py --space ablation [--data PATH] [options]``.

Without ``--data`` the trials train on the embedded floating-bottle dataset with the space's quick
profile (small images, few epochs) — a first look in minutes on a CPU; with ``--data`` they use
the space's own settings. ``--dry-run`` prints every planned trial (one JSON object per line,
full config) and the pretraining jobs, and starts nothing.

Outputs go to ``studies/<space>-<timestamp>/`` (or ``--out``): results.csv, report.md, plots,
best_config.yaml (see study/running/driver.py). Ctrl-C stops cleanly; ``--resume --out DIR``
continues without rerunning finished trials — only in a study folder this user created (it
restores Ray Tune's pickled state; see docs/studies.md).

The same command is ``python -m study.run`` and ``yolox-study``. Run as a script, this file's
folder, study/, is first on sys.path: it holds only this file, layout.py, files.py and the
sub-packages (space, running, artifacts, outputs, cli), none of which shadows a module another
package imports, so nothing here edits sys.path.
"""

from __future__ import annotations

import sys

from study.cli.args import StudyArgs, build_parser
from study.running.driver import main_entry


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    args = StudyArgs(**vars(ns))
    return main_entry(args)


if __name__ == "__main__":
    sys.exit(main())

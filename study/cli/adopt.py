"""Adopt a study folder for ``--resume``: ``python -m study.cli.adopt DIR [--storage URI] [--yes]``.

``--resume`` loads only a folder registered where it is, with the storage and the Tune state its
driver recorded (study/running/trust.py). A folder you moved or copied yourself, a storage you
moved, or a Tune state file you changed on purpose is refused; this command shows what
``--resume`` would then unpickle — the study, where it was registered, each Tune state file and
whether it is as the driver wrote it — asks, and registers the folder where it is with those
files' digests. A copy whose registered original is still there gets a study id of its own, so
both stay resumable. Nothing else is changed, and the owner and permission checks still apply.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from study.cli import run_command
from study.layout import StudyError
from study.running import trust
from study.running.storage import storage_of

PROG = "adopt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[1] if __doc__ else None
    )
    p.add_argument("folder", type=Path, help="the study folder (--out of the study)")
    p.add_argument(
        "--storage", metavar="URI", default=None,
        help="the study's storage, as --storage of study/run.py (default: the one its folder "
        "records, else the folder itself)",
    )
    p.add_argument("--yes", action="store_true", help="adopt without asking")
    return p


def adopt(folder: Path, storage: str | None, yes: bool,
          ask: Callable[[str], str] = input) -> int:
    """Show what the folder would make ``--resume`` load, ask, register it."""
    if not folder.is_dir():
        raise StudyError(f"{folder} is not a folder")
    where = storage_of(folder, storage)
    state = trust.state_digests(where)  # (what is shown is what is registered)
    for line in trust.adoption(folder, where, state):
        print(line)
    if not yes:
        try:
            answer = ask("Trust these files and resume this folder from now on? [y/N] ")
        except (EOFError, OSError) as e:  # no input to read the answer from
            raise StudyError("nothing adopted: no answer to the question; pass --yes to "
                             "adopt") from e
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing adopted")
            return 1
    study_id = trust.adopt(folder, where, state)
    print(f"adopted {folder} as study {study_id}; resume it with: python study/run.py "
          f"--resume --out {folder}" + (f" --storage {storage}" if storage else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return run_command(PROG, lambda: adopt(ns.folder, ns.storage, ns.yes))


if __name__ == "__main__":
    sys.exit(main())

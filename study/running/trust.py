"""Which study folders ``--resume`` may load: only those this user's own study/run.py created.

``--resume`` restores Ray Tune's state — ``tune/tuner.pkl``, the experiment and searcher state —
with (cloud)pickle, and unpickling runs whatever code the file holds. A study folder from
someone else (a download, a colleague's share, a folder others can write to) would run their
code as you. So:

* creating a study writes ``study.json`` (a random study id, who and where) and registers the id
  in this user's own state folder (``$XDG_STATE_HOME/yolox-flow-study/studies/<id>.json``,
  default ``~/.local/state/…``), outside every study folder;
* ``--resume`` refuses a folder without ``study.json``, whose id this user never registered, or
  in which any file or folder belongs to another user or is writable by group or others;
* the driver runs with ``umask`` 022 and, when it ends, removes group/other write permission from
  what it wrote, so its own studies pass the last check even under a permissive umask.

Reading someone's results (``results.csv``, ``report.md``) needs none of this, and their
``space.yaml`` starts a new study of the same plan.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from study.files import atomic_write_json
from study.layout import MANIFEST, StudyError

RISK = (
    "--resume loads Ray Tune's pickled state (tune/tuner.pkl …), and unpickling runs any code "
    "in it, so only study folders you created yourself are resumed (docs/studies.md, "
    "'Resuming and trust')"
)


def registry_dir() -> Path:
    """This user's list of the studies they created (one small JSON file per study id)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "yolox-flow-study" / "studies"


def write_manifest(study_dir: Path) -> str:
    """At creation: ``study.json`` in the folder and the id in this user's registry."""
    study_id = uuid.uuid4().hex
    record: dict[str, Any] = {
        "format": 1,
        "study_id": study_id,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "uid": os.getuid(),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "path": str(study_dir.resolve()),
    }
    reg = registry_dir()
    reg.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(reg / f"{study_id}.json", record)
    _write(study_dir / MANIFEST, record)
    return study_id


def _write(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)


def check_resumable(study_dir: Path) -> None:
    """StudyError (one line: what is wrong, the risk, what to do) unless this user created
    ``study_dir`` and nobody else can have changed it."""
    manifest = study_dir / MANIFEST
    fix = (
        f"To use its results read {study_dir / 'results.csv'}; to run its plan again start a "
        f"new study: python study/run.py --space {study_dir / 'space.yaml'} --out NEW_FOLDER"
    )
    try:
        study_id = str(json.loads(manifest.read_text())["study_id"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StudyError(
            f"--resume: refusing {study_dir}: it has no readable {MANIFEST} ({type(e).__name__})"
            f", so study/run.py did not create it for you. {RISK}. {fix}"
        ) from e
    if not (registry_dir() / f"{study_id}.json").is_file():
        raise StudyError(
            f"--resume: refusing {study_dir}: its study id {study_id} is not among the studies "
            f"you created ({registry_dir()}); it comes from another user or machine. {RISK}. "
            f"{fix}"
        )
    bad = unsafe_entry(study_dir)
    if bad is not None:
        path, why = bad
        raise StudyError(
            f"--resume: refusing {study_dir}: {path} {why}, so someone else may have changed "
            f"the state it would load. {RISK}. If you trust every file in it, run "
            f"chmod -R go-w {study_dir} (as its owner) and resume again; else: {fix}"
        )


def unsafe_entry(root: Path) -> tuple[Path, str] | None:
    """The first file or folder under ``root`` (itself included) that belongs to another user
    or that group or others may write to, with the reason; None when there is none."""
    uid = os.getuid()
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        if st.st_uid != uid:
            return path, f"belongs to uid {st.st_uid}, not to you (uid {uid})"
        if stat.S_ISLNK(st.st_mode):
            target = path.resolve()
            if not target.is_relative_to(root.resolve()):
                return path, f"is a link out of the study folder (to {target})"
            continue
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return path, f"is writable by group or others (mode {stat.filemode(st.st_mode)})"
    return None


def harden(root: Path) -> None:
    """Remove group/other write permission from what this user owns under ``root`` (the
    driver's own umask does not reach Ray workers started by others)."""
    if not root.is_dir():
        return
    uid = os.getuid()
    for path in [root, *root.rglob("*")]:
        try:
            st = path.lstat()
            if (
                st.st_uid == uid
                and not stat.S_ISLNK(st.st_mode)
                and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            ):
                path.chmod(stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
        except FileNotFoundError:  # a file Tune replaced meanwhile
            continue


@contextmanager
def private_umask() -> Iterator[None]:
    """Files and folders created inside are not group/world writable (the Ray processes started
    meanwhile inherit the umask)."""
    before = os.umask(0o022)
    os.umask(before | 0o022)
    try:
        yield
    finally:
        os.umask(before)

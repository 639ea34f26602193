"""The embedded floating-bottle dataset: generated once per machine into a cache, then reused.

This is what a run uses when no ``--data`` is given. ``<cache>/embedded-v<version>-seed<seed>``
is generated under an exclusive file lock into a temporary folder beside it and renamed into place
only when complete, with a ``.complete`` marker inside. So concurrent callers (Ray trials in
several processes) generate it once, a killed generator leaves no half-written dataset behind,
and every later call returns at once. The marker is a dot-file, which data fingerprints skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from model.data.raw import DataError
from model.data.synth import GENERATOR_VERSION, generate_flow_like

CACHE_ENV = "YOLOX_FLOW_CACHE"
MARKER = ".complete"


class EmbeddedDataError(DataError):
    """The embedded dataset cannot be put into its cache folder."""


def cache_root() -> Path:
    """``$YOLOX_FLOW_CACHE``, or ``~/.cache/yolox-flow-study``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "yolox-flow-study"


def embedded_dataset_dir(
    cache_dir: str | Path | None = None, *, seed: int = 0, progress: bool = True
) -> Path:
    """The folder of the embedded dataset for ``seed``, generating it first if needed."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / f"embedded-v{GENERATOR_VERSION}-seed{seed}"
    if (target / MARKER).is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{target.name}.lock", "a")  # held until generated
    except OSError as e:
        raise EmbeddedDataError(
            f"cannot create the dataset cache {root} ({e}); set ${CACHE_ENV} to a writable "
            "folder or pass --data") from e
    with lock:  # closing the file releases the lock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another process generating {target}", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MARKER).is_file():  # the other process finished it meanwhile
            return target
        _remove_leftovers(root, target)
        # (made with the user's umask, as any folder: mkdtemp's 0700 would need a chmod that
        # loosens a private umask; the lock keeps the name to this process)
        tmp = root / f".{target.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            if progress:
                print(f"generating the embedded floating-bottle dataset into {target}",
                      file=sys.stderr)
            generate_flow_like(tmp, seed=seed, progress=progress)
            manifest = json.loads((tmp / "manifest.json").read_text())
            (tmp / MARKER).write_text(manifest["annotations_sha256"] + "\n")
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _remove_leftovers(root: Path, target: Path) -> None:
    """Delete what a killed generator left. Only called while holding the lock, so no one else
    is writing any of it: temporary folders, or a target without its marker (older layouts)."""
    for stale in root.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)

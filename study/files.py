"""Small helpers every writer in ``study/`` shares: atomic writes, JSON lines, durations.

A reader (a resume, a test polling ``results.csv``, another node) never sees a half-written file:
each file is written to a temporary file in the same folder (same filesystem, so the rename is
atomic), then moved over the target with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: str | Path,
    write: Callable[[IO[Any]], Any],
    *,
    newline: str | None = None,
    binary: bool = False,
) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path`` (text, or bytes with ``binary``),
    then move it over ``path``."""
    path = Path(path)
    # pid and thread in the name: two writers of one file never share a temporary file;
    # open() (not mkstemp) keeps the user's usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else newline) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """One JSON line, on disk before returning: the driver may be killed next."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def format_duration(seconds: float, *, approx: bool = False) -> str:
    """``1h02m03s`` / ``4m05s``; ``approx``: ``~``-style estimates, ``5 min`` / ``40 s``."""
    if approx:
        return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"

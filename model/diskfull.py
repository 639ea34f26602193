"""A full disk, said plainly: :class:`DiskFullError` names the file, the space it needs and what
is free (model/checkpoint.py raises it; study/running/faults.py stops a study on it). Free of
torch, so the study's driver can use it without loading the training stack."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; the user's quota is spent


def format_bytes(n: float) -> str:
    """``12.3 MB`` (decimal units, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class DiskFullError(OSError):
    """No space left (or the quota spent) while writing ``path``: ``needed`` bytes (about what
    the file takes), ``free`` bytes free in its folder. An OSError with ``errno`` ENOSPC, so code
    that handles OSError still does; its message names the folder and the space to free."""

    def __init__(self, path: str | Path, needed: int, free: int) -> None:
        self.path = str(path)
        self.needed = int(needed)
        self.free = int(free)
        folder = Path(self.path).parent
        super().__init__(
            errno.ENOSPC,
            f"no space left on the device of {folder} writing {Path(self.path).name}: it needs "
            f"about {format_bytes(self.needed)} free there, {format_bytes(self.free)} is free; "
            "free some space (or move the folder), then resume — the previous checkpoint is "
            "intact",
        )

    @property
    def folder(self) -> str:
        return str(Path(self.path).parent)

    def __reduce__(self) -> tuple[Any, ...]:  # (pickled by Ray to reach the driver)
        return DiskFullError, (self.path, self.needed, self.free)

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the quota) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def free_bytes(folder: str | Path) -> int:
    """Bytes free on the filesystem of ``folder`` (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0

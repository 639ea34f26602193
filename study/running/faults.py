"""Two faults a week-long study meets on shared machines, turned into a clean stop and a resume
(issue 27; the driver's Tune callback, study/running/progress.py, calls these).

**A full disk.** The training function's checkpoint write fails with ENOSPC
(:class:`model.checkpoint.DiskFullError`: the folder, the space the checkpoint needs, what is
free), or Tune's copy of a checkpoint into the study folder does. Retrying would fail the same
way, and failing the trial for good would throw away a run that only needs room. So the driver
stops the whole Tune run as Ctrl-C does — Tune's own stop signal, SIGUSR1: the experiment state
is saved, every trial keeps its last checkpoint — and ends with one line naming the folder and
the space to free (:func:`raise_if_stopped`). ``--resume`` once there is room continues every
unfinished trial from its last checkpoint: only the evaluation being written is trained again.

**A dead Ray head.** When the GCS (the head's control process) dies, Ray's own processes give up
only after a minute, and the driver then aborts with Ray's internal error. :class:`GcsWatch`
checks the head's port every second; when it has refused connections for ``GCS_GRACE_S``, the
driver prints why it stops and how to continue, stops the Ray processes it started itself, and
exits (code 1). Nothing of the study is lost: trial files and checkpoints are written
atomically, Tune snapshots its state every few seconds, and a resume reruns no finished trial
(study/running/trial.py), so ``--resume`` ends with the results an uninterrupted study has.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from model.diskfull import DiskFullError, format_bytes, is_disk_full
from study.layout import StudyError

# the head's port refused this long: it is gone (Ray itself waits 60 s); a cluster whose head
# restarts slowly (a Kubernetes pod) may want longer
GCS_GRACE_S = float(os.environ.get("YOLOX_STUDY_GCS_GRACE_S", "10"))
GCS_POLL_S = 1.0
LOST_RAY_EXIT = 1  # a run that failed; the line says how (study/cli/__init__.py)

_STOPPED: list[str] = []  # this process stopped its Tune run for disk space: the line to end with


# --- a full disk ------------------------------------------------------------------------------


def disk_full_line(study_dir: str | Path, trial_id: str, error: OSError) -> str:
    """The one line a study ends with when a trial found the disk full."""
    resume = f"python study/run.py --resume --out {study_dir}"
    if isinstance(error, DiskFullError):
        where = (
            f"the disk of {error.folder} is full: trial {trial_id} could not write its "
            f"checkpoint there (it needs about {format_bytes(error.needed)}, "
            f"{format_bytes(error.free)} free)"
        )
    else:  # Tune's copy into the study folder, or another write of the trial
        where = (
            f"the disk is full: trial {trial_id} could not write "
            f"{getattr(error, 'filename', None) or 'its files'} ({error.strerror or error})"
        )
    return (
        f"{where}; the study stopped and kept every trial's last checkpoint. Free some space "
        f"there, then continue with: {resume}"
    )


def stop_for_space(study_dir: str | Path, trial_id: str, error: OSError) -> None:
    """Stop this process's Tune run as Ctrl-C does (its state saved, the trials resumable) and
    keep the line for :func:`raise_if_stopped`. Tune listens for SIGUSR1 when it runs in the
    main thread; elsewhere the run goes on and the line still ends the study."""
    line = disk_full_line(study_dir, trial_id, error)
    first = not _STOPPED
    _STOPPED[:] = [line]
    if first:
        print(f"  {trial_id}: {line}", flush=True)
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler):  # Tune's "stop and save" handler (never the default: it kills)
            os.kill(os.getpid(), signal.SIGUSR1)


def disk_full_error(error: BaseException | None) -> OSError | None:
    """The OSError saying the disk is full in ``error`` or its causes, else None."""
    seen = 0
    while error is not None and seen < 10:
        if is_disk_full(error):
            assert isinstance(error, OSError)
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def raise_if_stopped() -> None:
    """After Tune's run: a StudyError with the disk-full line if this process stopped it."""
    if _STOPPED:
        line = _STOPPED.pop()
        _STOPPED.clear()
        raise StudyError(line)


def reset() -> None:
    _STOPPED.clear()


# --- a dead Ray head --------------------------------------------------------------------------


def reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection (the GCS's gRPC port)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class GcsWatch:
    """A daemon thread that ends the driver cleanly when the Ray head's GCS is gone (see the
    module docstring). ``on_lost`` (tests) replaces the exit."""

    def __init__(
        self,
        address: str,
        study_dir: str | Path,
        *,
        grace_s: float = GCS_GRACE_S,
        poll_s: float = GCS_POLL_S,
        on_lost: Any = None,
    ) -> None:
        self.address = address
        self.study_dir = str(study_dir)
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gcs-watch", daemon=True)

    @classmethod
    def for_this_driver(cls, study_dir: str | Path) -> GcsWatch | None:
        """Started for the Ray session this process is connected to (None without one)."""
        import ray

        if not ray.is_initialized():
            return None
        watch = cls(ray.get_runtime_context().gcs_address, study_dir)
        watch._thread.start()
        return watch

    def stop(self) -> None:
        self._stop.set()

    def _still_ours(self) -> bool:
        """The driver is still connected to that head (a test may shut its session down)."""
        import ray

        try:
            return ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address
        except Exception:  # Ray mid-shutdown, whatever it raises: not ours to judge any more
            return False

    def _run(self) -> None:
        down_since: float | None = None
        while not self._stop.wait(self.poll_s):
            if reachable(self.address, timeout=self.poll_s):
                down_since = None
                continue
            now = time.monotonic()
            down_since = down_since if down_since is not None else now
            if now - down_since >= self.grace_s and not self._stop.is_set() and self._still_ours():
                self.lost(now - down_since)
                return

    def message(self, down_s: float) -> str:
        return (
            f"error: the Ray head stopped answering (its GCS at {self.address} has refused "
            f"connections for {down_s:.0f} s), so the study cannot go on. Finished trials and "
            "every trial's last checkpoint are kept; once Ray can run again, continue with: "
            f"python study/run.py --resume --out {self.study_dir}"
        )

    def lost(self, down_s: float) -> None:
        text = self.message(down_s)
        if self.on_lost is not None:
            self.on_lost(text)
            return
        print(f"\n{text}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        _stop_own_processes()
        from study.running import session

        session.clear(Path(self.study_dir))  # nothing left for a resume to stop
        os._exit(LOST_RAY_EXIT)  # Ray calls would hang without their head; files are atomic


def _stop_own_processes() -> None:
    """Terminate (then kill) what this process started: the local Ray session's processes and
    with them the trials' workers (so that no orphan writes into the study while it is
    resumed). A driver that joined a cluster started none."""
    from study.running import session

    psutil = session.load_psutil()
    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    session.terminate_all(procs, grace_s=3)

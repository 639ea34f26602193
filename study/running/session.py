"""The driver's record in the study folder, ``driver.json``: its pid and the Ray processes of the
local session it started.

A driver killed with SIGKILL cannot stop its Ray session, and parts of it (the dashboard and
runtime-env agents) outlive it by minutes. The next run of the same study reads the record:

* the recorded driver still runs → refuse: two drivers would write the same files;
* it is gone → stop the processes of its Ray session that are still there, then carry on.

A process is matched by pid *and* start time, so a pid the system reused is never touched; only
processes this user owns are stopped. A driver that joined a cluster (``--address``) records no
Ray process (the cluster is not its to stop). The record is removed when the driver ends.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.files import atomic_write_json
from study.layout import DRIVER, StudyError

RECORD = DRIVER
Log = Callable[[str], None]


def load_psutil() -> Any:
    """psutil (a dependency; Ray also ships a copy, on the path once ray is imported)."""
    import importlib

    try:
        return importlib.import_module("psutil")
    except ImportError:
        importlib.import_module("ray")  # adds ray/thirdparty_files (it holds psutil) to sys.path
        return importlib.import_module("psutil")


def terminate_all(procs: list[Any], grace_s: float) -> None:
    """SIGTERM each process, SIGKILL what is still alive ``grace_s`` later, and wait for it
    (a process already gone is fine)."""
    psutil = load_psutil()
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=grace_s)


def _ident(proc: Any) -> dict[str, Any]:
    return {"pid": proc.pid, "started": proc.create_time(), "name": proc.name()}


def _live(rec: dict[str, Any]) -> Any:
    """The psutil.Process of a record if it is still that process (same start time), else None."""
    psutil = load_psutil()

    try:
        proc = psutil.Process(int(rec["pid"]))
        same = abs(proc.create_time() - float(rec["started"])) < 0.05
        mine = proc.uids().real == os.getuid()
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return None
    return proc if same and mine else None


def record(study_dir: Path, owns_ray: bool) -> None:
    """Write (or extend) this driver's record: itself and, when it started the local Ray
    session, every process below it (called after start-up and again before the trials, once
    Ray's agents are up)."""
    psutil = load_psutil()

    me = psutil.Process()
    path = study_dir / RECORD
    known: dict[int, dict[str, Any]] = {}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("driver", {}).get("pid") == me.pid:
            known = {r["pid"]: r for r in old.get("ray_processes", [])}
    if owns_ray:
        for child in me.children(recursive=True):
            try:
                known.setdefault(child.pid, _ident(child))
            except psutil.NoSuchProcess:
                continue
    session = None
    if owns_ray:
        import ray

        node = getattr(ray._private.worker, "_global_node", None)  # no public accessor
        session = node.get_session_dir_path() if node is not None else None
    data = {
        "driver": _ident(me),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ray_session_dir": session,
        "ray_processes": list(known.values()),
    }
    atomic_write_json(path, data)


def stop_stale(study_dir: Path, log: Log) -> None:
    """Before a run of ``study_dir``: refuse if its recorded driver still runs; else stop what
    remains of the Ray session that driver started."""
    psutil = load_psutil()

    path = study_dir / RECORD
    if not path.is_file():
        return
    rec = json.loads(path.read_text())
    driver = _live(rec.get("driver", {}))
    if driver is not None and driver.pid != os.getpid():
        raise StudyError(
            f"{study_dir} is in use by another run of this study (pid {driver.pid}, since "
            f"{rec.get('since')}); wait for it to end, or stop it with kill -INT {driver.pid}, "
            "then run again"
        )
    if driver is not None:  # this very process wrote it (an earlier run_study, in tests)
        path.unlink()
        return
    procs = [p for p in (_live(r) for r in rec.get("ray_processes", [])) if p is not None]
    for p in list(procs):
        try:
            procs += [c for c in p.children(recursive=True) if c not in procs]
        except psutil.NoSuchProcess:
            continue
    terminate_all(procs, grace_s=5)
    if procs:
        log(
            f"stopped {len(procs)} Ray processes left running by the killed run of this study "
            f"(driver pid {rec['driver']['pid']}, Ray session {rec.get('ray_session_dir')})"
        )
    path.unlink()


def clear(study_dir: Path) -> None:
    """The driver ends: its record goes (only its own)."""
    path = study_dir / RECORD
    if not path.is_file():
        return
    if json.loads(path.read_text()).get("driver", {}).get("pid") == os.getpid():
        path.unlink()

"""Driver-side Tune callback: progress lines, ``status.json`` and a fresh ``results.csv``.

A crash (a trial raising, its worker killed) is one console line naming the cause Ray gave
(``ActorDiedError: …``, or the trial's own exception); Ray's traceback goes to the trial's log
(``trials/<id>/trial.log``) and the crash to ``trials/<id>/crashes.jsonl`` (for report.md).
A crash because the disk is full is not one: it stops the study for a resume, and the Ray head
is watched while the trials run (study/running/faults.py).
"""

from __future__ import annotations

import heapq
import json
import pickle
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.tune import Callback

from study.artifacts.jobs import load_study_plan
from study.files import atomic_write_json, format_duration
from study.layout import (
    CRASH_LOG,
    CRASHES,
    FINISHED,
    LOG,
    PLAN,
    PRETRAINING,
    RACE,
    STATUS,
    scratch_dir,
    trial_dir,
    trial_dirname,
)
from study.outputs.results import RowCache, collect_rows, write_results
from study.running import faults, trust
from study.running.storage import Storage
from study.running.trial import log_line

_SERVED: list[StudyCallback] = []  # the callback the driver built for the fit now running


@contextmanager
def serving(callback: StudyCallback) -> Iterator[None]:
    """While ``fit`` runs: the callback the driver built for it, whose state a callback that
    Tune restored from ``tuner.pkl`` takes in :meth:`StudyCallback.setup`."""
    _SERVED[:] = [callback]
    try:
        yield
    finally:
        _SERVED.clear()


class StudyCallback(Callback):
    """Progress lines, Tune's verdict per trial (``status.json``) and a fresh results.csv each
    time a trial ends, so a long study can be read (or killed and resumed) at any point."""

    def __init__(
        self, study_dir: str, total: int, ids: list[str] | None = None,
        storage: Storage | None = None, study_id: str | None = None,
    ) -> None:
        self.study_dir = study_dir
        self.study_id = study_id  # the registry entry the digests of Tune's state go to
        # the trials' records come from the study's storage (study/running/storage.py): this
        # callback is where the driver writes them into its own folder
        self.storage = storage or Storage.for_study(Path(study_dir), None)
        self.total = total
        self.ids = set(ids) if ids is not None else None  # this experiment's trials (a round)
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        # Trials that ended before this driver began (a resumed study): they count as ended.
        # Counted from the callbacks, not the trial files, which a trial ending at the same
        # moment may already have written before its callback runs.
        self.ended: set[str] = self._ended_before()
        self.slots = 1  # the most trials seen running at once: the ETA divides by it
        self._watch: faults.GcsWatch | None = None
        self._trials: list = []  # Tune's own list of the experiment's trials
        self._warned = False
        # (issue 27) results.csv is rebuilt at each trial end: from the rows and the plan kept
        # since the last rebuild, read again only where their files changed
        self._rows: RowCache | None = None
        self._plan: tuple[Any, Any] | None = None  # (the plan files' state, the plan)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with its state: without the running watch thread and the
        rows kept (read again after a resume)."""
        return {**self.__dict__, "_watch": None, "_trials": [], "_rows": None, "_plan": None}

    def study_plan(self) -> Any:
        """The study's plan (study/artifacts/jobs.py ``load_study_plan``), read again only when
        plan.json, race.json or pretraining.json changed."""
        state = []
        for name in (PLAN, RACE, PRETRAINING):
            try:
                st = (Path(self.study_dir) / name).stat()
                state.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                state.append(None)
        kept = getattr(self, "_plan", None)
        if kept is None or kept[0] != state:
            kept = (state, load_study_plan(self.study_dir))
            self._plan = kept
        return kept[1]

    def setup(self, **info: Any) -> None:
        """Called by every ``fit``. A resumed study restores this object from Tune's state
        (``tuner.pkl``) as it was when the study began — maybe in another folder, or from an
        older version of this class: it takes the state of the callback this driver built
        (:func:`serving`), then counts the trials ended since; the Ray head is watched until
        the run ends."""
        built = _SERVED[0] if _SERVED else None
        if built is not None and built is not self:
            self.__dict__.update(built.__getstate__())
        self.started.clear()
        self.ended = self._ended_before()
        faults.reset()
        self._watch = faults.GcsWatch.for_this_driver(self.study_dir)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials  # (the very list Tune adds this step's new trials to)

    def get_state(self) -> None:
        """No state of its own (so Tune writes no callback file). Tune calls this at each
        experiment checkpoint right after writing its state into its staging folder and before
        copying it to the storage: the digests of that state go to the registry then
        (study/running/trust.py). An experiment with no trial yet is never restored: none."""
        self._record_state(getattr(self, "_trials", None))
        return None

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """After Tune's last experiment checkpoint (and its copy to the storage): recorded
        here too, for a run that made no step (every trial had ended: no ``on_step_begin``)."""
        self._record_state(trials)
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.stop()
            self._watch = None

    def _record_state(self, trials: list | None) -> None:
        study_id = getattr(self, "study_id", None)
        if not trials or not study_id:
            return
        ctx = trials[0].storage
        staging = Path(ctx.experiment_driver_staging_path)
        if trust.record_staged(study_id, ctx.experiment_dir_name, staging) or getattr(
            self, "_warned", False
        ):
            return
        self._warned = True
        print(f"  warning: cannot record the digests of Tune's state in {trust.registry_dir()}: "
              "after a crash, --resume may ask to adopt the folder (python -m study.cli.adopt)",
              flush=True)

    def _ended_before(self) -> set[str]:
        plan_path = Path(self.study_dir) / PLAN
        if not plan_path.is_file():
            return set()
        rows = collect_rows(load_study_plan(self.study_dir), Path(self.study_dir))
        return {
            r["id"] for r in rows
            if r["status"] in FINISHED and r["status"] != "skipped"
            and (self.ids is None or r["id"] in self.ids)
        }

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial_dirname(trial)] = time.time()
        self.slots = max(self.slots, sum(1 for t in trials if t.status == "RUNNING"), 1)
        print(f"  start {trial_dirname(trial)}", flush=True)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.storage.pull_trial(trial_dirname(trial))  # (nothing to do on one machine)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._stopped_for_space(trial):
            return
        cause = self._crashed(trial, retried=True)
        tid = trial_dirname(trial)
        print(
            f"  {tid} crashed: {cause}; retrying from its last checkpoint (failure "
            f"{trial.num_failures}; traceback in {trial_dir(self.study_dir, tid) / CRASH_LOG})",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials, trial, "TERMINATED", "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._stopped_for_space(trial):
            return
        self._ended(trials, trial, "ERROR", self._crashed(trial, retried=False))

    def _stopped_for_space(self, trial: Any) -> bool:
        """A trial that crashed because the disk is full stops the study (the trial is not
        recorded as crashed or ended: a resume continues it from its last checkpoint)."""
        full = faults.disk_full_error(trial_exception(trial))
        if full is None:
            return False
        faults.stop_for_space(self.study_dir, trial_dirname(trial), full)
        return True

    def _crashed(self, trial: Any, retried: bool) -> str:
        """Record a crash: Ray's full error in the trial's crash log (the driver's file: the
        trial's own log comes from its records), one line in crashes.jsonl."""
        cause, text = crash_cause(trial)
        out = trial_dir(self.study_dir, trial_dirname(trial))
        out.mkdir(parents=True, exist_ok=True)
        what = "retried from its last checkpoint" if retried else "not retried (no retries left)"
        log_line(out, f"crashed, {what}: {cause}\n{text}", name=CRASH_LOG)
        record = {
            "time": time.time(),
            "cause": cause,
            "failure": trial.num_failures,
            "retried": retried,
        }
        with open(out / CRASHES, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.storage.push_trial_files(trial_dirname(trial), [CRASHES, CRASH_LOG])
        return cause

    def _ended(self, trials: list, trial: Any, status: str, error: str) -> None:
        tid = trial_dirname(trial)
        path = Path(self.study_dir) / STATUS
        record = json.loads(path.read_text()) if path.is_file() else {}
        record[tid] = {"status": status, "error": error}
        atomic_write_json(path, record)
        self.storage.pull_trial(tid)
        self.storage.push_driver_files()
        # a trial stopped by ASHA (or failed for good) never cleans its scratch folder itself;
        # Tune keeps its checkpoints. (Only reachable here when it ran on this node.)
        shutil.rmtree(scratch_dir(self.study_dir, tid), ignore_errors=True)
        if getattr(self, "_rows", None) is None:
            self._rows = RowCache()
        rows = write_results(self.study_plan(), Path(self.study_dir), cache=self._rows)
        row = next((r for r in rows if r["id"] == tid), {})
        if tid in self.started:
            self.durations.append(time.time() - self.started.pop(tid))
        self.ended.add(tid)
        ended = len(self.ended)
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not trial)
        self.slots = max(self.slots, running + 1)
        left = max(self.total - ended, 0)
        eta = ""
        if self.durations and left:
            mean = sum(self.durations) / len(self.durations)
            now = time.time()
            elapsed = [now - t0 for t0 in self.started.values()]  # the trials still running
            secs = time_left(mean, elapsed, max(left - len(elapsed), 0), self.slots)
            eta = f", ~{format_duration(secs, approx=True)} left"
        m = row.get("val_mAP")
        if row.get("status") == "error":  # crashed for good, or failed (never retried)
            log = trial_dir(self.study_dir, tid) / (LOG if row.get("reason") else CRASH_LOG)
            what = f"{_clip(row.get('reason') or error)} (traceback in {log})"
        elif isinstance(m, (int, float)):
            what = f"val mAP {m:.4f} (epoch {row.get('epoch')})"
            if isinstance(row.get("test_mAP"), (int, float)):
                what += f", test mAP {row['test_mAP']:.4f}"
        else:
            what = error
        print(
            f"[{ended}/{self.total}] {row.get('status', status.lower())} {tid}: {what}; "
            f"{running} running{eta}",
            flush=True,
        )


def time_left(mean: float, elapsed: list[float], pending: int, slots: int) -> float:
    """Seconds until the last trial ends, if every trial takes ``mean`` seconds: each running
    trial ends ``mean - elapsed`` from now (0 when past the mean), and the pending trials start,
    in turn, on whichever of the ``slots`` frees first."""
    free = [max(mean - e, 0.0) for e in elapsed]
    free += [0.0] * max(slots - len(free), 0)
    heapq.heapify(free)
    end = max(free, default=0.0)
    for _ in range(pending):
        start = heapq.heappop(free)
        heapq.heappush(free, start + mean)
        end = max(end, start + mean)
    return end


def crash_cause(trial: Any) -> tuple[str, str]:
    """(one line: the exception Ray named and its first line, Ray's full error text).

    Read from the error files Tune writes into the trial's local folder before it calls the
    callbacks (``trial.get_error()`` reads the storage copy, which may not be synced yet)."""
    exc = _pickled_error(trial.pickled_error_file)
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        blocks = Path(trial.error_file).read_text().split("Failure # ")
        text = ("Failure # " + blocks[-1]).strip() if len(blocks) > 1 else blocks[-1].strip()
    if exc is None:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return (lines[-1][:300] if lines else "no error recorded by Ray"), text
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause  # the trial's own exception, raised in its worker
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300], text or str(exc)


def trial_exception(trial: Any) -> BaseException | None:
    """The trial's own exception (raised in its worker) from Tune's error file, else Ray's
    (``ActorDiedError`` …); None when Tune recorded none."""
    exc = _pickled_error(trial.pickled_error_file)
    if exc is None:
        return None
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and exc.cause is not None:
        return exc.cause
    return exc


def _pickled_error(path: str | None) -> BaseException | None:
    if not path or not Path(path).is_file():
        return None
    from ray import cloudpickle

    try:  # Tune wrote it in this session (the study folder passed the --resume checks)
        exc = cloudpickle.loads(Path(path).read_bytes())
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        return None
    return exc if isinstance(exc, BaseException) else None


def _clip(text: str, n: int = 240) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

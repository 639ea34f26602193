"""Driver-side Tune callback: progress lines, ``status.json`` and a fresh ``results.csv``."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from study.pipeline import trial_dirname
from study.plan import load_plan
from study.results import FINISHED, STATUS_FILE, collect_rows, write_results
from study.trial import scratch_dir


class StudyCallback(Callback):
    """Progress lines, Tune's verdict per trial (``status.json``) and a fresh results.csv each
    time a trial ends, so a long study can be read (or killed and resumed) at any point."""

    def __init__(self, study_dir: str, total: int) -> None:
        self.study_dir = study_dir
        self.total = total
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        # Trials that ended before this driver began (a resumed study): they count as ended.
        # Counted from the callbacks, not the trial files, which a trial ending at the same
        # moment may already have written before its callback runs.
        self.ended: set[str] = self._ended_before()
        self.slots = 1  # the most trials seen running at once: the ETA divides by it

    def _ended_before(self) -> set[str]:
        plan_path = Path(self.study_dir) / "plan.json"
        if not plan_path.is_file():
            return set()
        rows = collect_rows(load_plan(plan_path), Path(self.study_dir))
        return {r["id"] for r in rows if r["status"] in FINISHED and r["status"] != "skipped"}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial_dirname(trial)] = time.time()
        self.slots = max(self.slots, sum(1 for t in trials if t.status == "RUNNING"), 1)
        print(f"  start {trial_dirname(trial)}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(
            f"  {trial_dirname(trial)} crashed ({_error_line(trial)}); retrying from its last "
            f"checkpoint (failure {trial.num_failures})",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials, trial, "TERMINATED", "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials, trial, "ERROR", _error_line(trial))

    def _ended(self, trials: list, trial: Any, status: str, error: str) -> None:
        tid = trial_dirname(trial)
        path = Path(self.study_dir) / STATUS_FILE
        record = json.loads(path.read_text()) if path.is_file() else {}
        record[tid] = {"status": status, "error": error}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
        # a trial stopped by ASHA (or failed for good) never cleans its scratch folder itself;
        # Tune keeps its checkpoints. (Only reachable here when it ran on this node.)
        shutil.rmtree(scratch_dir(self.study_dir, tid), ignore_errors=True)
        rows = write_results(load_plan(Path(self.study_dir) / "plan.json"), Path(self.study_dir))
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
            eta = f", ~{_duration(mean * math.ceil(left / self.slots))} left"
        m = row.get("mAP")
        what = f"mAP {m:.4f} (epoch {row.get('epoch')})" if isinstance(m, (int, float)) else error
        print(
            f"[{ended}/{self.total}] {row.get('status', status.lower())} {tid}: {what}; "
            f"{running} running{eta}",
            flush=True,
        )


def _error_line(trial: Any) -> str:
    text = trial.get_error() or ""
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "unknown error"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"

"""Driver load (issue 27), the small version of benchmarks/load.py: a sampled study of 50 fast
stand-in trials, 8 at once on fractional CPUs, through the real driver, Tune, trials, callback
and outputs, must end complete and consistent (results.csv, every trial's files, report.md,
best_config.yaml, the Optuna storage). Completeness only: no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.load import run_load, table

TRIALS, CONCURRENT = 50, 8


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_fifty_trials_eight_at_once_end_complete(ray_address: str, tmp_path: Path) -> None:
    result = run_load(tmp_path, trials=TRIALS, concurrent=CONCURRENT)
    print(table(result))  # the figures, for whoever reads the test's output
    assert result.problems == []
    assert result.cpus_per_trial == pytest.approx(2 / CONCURRENT)  # fractional CPUs
    assert 1 < result.peak_running <= CONCURRENT  # trials did run side by side
    assert result.trials == TRIALS



class TrialFiles:
    """A study folder whose trials' files a test writes by hand, and the check that the table
    rebuilt from the rows kept since the last call is the one rebuilt from every file."""

    def __init__(self, plan: Any, study: Path) -> None:
        from study.outputs.results import RowCache

        self.plan, self.study, self.cache = plan, study, RowCache()
        (study / "trials").mkdir(parents=True)

    def trial(self, tid: str, **files: Any) -> None:
        """``trial_json={…}`` writes trial.json (atomically), ``history_jsonl={…}`` appends."""
        from study.files import append_jsonl, atomic_write_json

        (self.study / "trials" / tid).mkdir(exist_ok=True)
        for name, value in files.items():
            path = self.study / "trials" / tid / name.replace("_", ".")
            if name.endswith("jsonl"):
                append_jsonl(path, value)
            else:
                atomic_write_json(path, value)

    def status(self, tid: str, state: str) -> None:
        from study.files import atomic_write_json

        path = self.study / "status.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        atomic_write_json(path, {**old, tid: {"status": state, "error": ""}})

    def same(self, reads: int | None = None) -> None:
        """Kept rows and a full rebuild give the same results.csv (``reads``: rows read)."""
        from study.outputs.results import collect_rows, write_csv

        before, out = self.cache.reads, self.study.parent
        write_csv(collect_rows(self.plan, self.study, self.cache), out / "kept.csv")
        write_csv(collect_rows(self.plan, self.study), out / "full.csv")
        assert (out / "kept.csv").read_text() == (out / "full.csv").read_text()
        if reads is not None:
            assert self.cache.reads - before == reads


def test_results_csv_rebuilt_from_kept_rows_is_the_same(tmp_path: Path) -> None:
    """The driver's callback rebuilds results.csv at each trial end from the rows kept since
    the last rebuild (RowCache: a row is read again only when its files or its status.json
    entry changed), which must give the very table a rebuild from every file gives."""
    from study.outputs.results import collect_rows
    from study.running.driver import StudyArgs, make_plan
    from tests.study_fakes import control_folder

    space = tmp_path / "grid.yaml"
    space.write_text(
        "fixed: {epochs: 2, no_aug_epochs: 1, workers: 0}\ngrid: {reg_loss: [iou, ciou]}\n"
    )
    plan = make_plan(StudyArgs(space=str(space), data=str(control_folder(tmp_path / "ctl"))))
    f = TrialFiles(plan, tmp_path / "study")
    p1, p2 = (t.id for t in plan.trials)
    cfg = plan.base.to_dict()
    evals = [{"epoch": e, "val_mAP": 0.1 * e, "val_AP50": 0.2 * e} for e in (1, 2)]
    done = {"final": evals[1], "summary": {"val_mAP": 0.15, "best_epoch": 1, "params": 9}}
    f.same(reads=0)  # every planned trial pending: its row from the plan
    f.trial(p1, trial_json={"config": cfg}, attempts_jsonl={"time": 1.0}, history_jsonl=evals[0])
    f.trial("trial-x1", trial_json={"config": {**cfg, "lr": 0.5}}, attempts_jsonl={"time": 2.0})
    f.same(reads=2)
    f.same(reads=0)  # nothing changed: nothing read
    f.trial(p1, history_jsonl=evals[1], done_json=done)
    f.status(p1, "TERMINATED")
    f.trial("trial-x1", history_jsonl=evals[0])
    f.same(reads=2)
    f.status("trial-x1", "TERMINATED")  # stopped early at epoch 1: its params from p1's row
    f.same(reads=1)
    f.trial("trial-x2", trial_json={"config": {**cfg, "lr": 0.5}}, failed_json={"error": "x"})
    f.status(p2, "ERROR")
    f.same()
    f.trial("trial-x2", trial_json={"config": {**cfg, "lr": 0.7}})  # same size, a new file
    f.same(reads=1)
    rows = {r["id"]: r for r in collect_rows(plan, f.study, f.cache)}
    assert (rows[p1]["status"], rows["trial-x1"]["status"], rows[p2]["status"]) == (
        "done", "stopped", "error")
    assert rows["trial-x1"]["params"] == 9 and rows["trial-x2"]["lr"] == 0.7

"""The driver's progress lines: the ended count and the time left, on simulated Tune trials."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import study.running.progress as progress
from study.running.pipeline import PLAN_ID


def fake_trial(tid: str, status: str = "RUNNING") -> Any:
    return SimpleNamespace(config={PLAN_ID: tid}, trial_id=tid, status=status)


def test_two_trials_ending_together_count_one_each_and_eta_uses_the_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both trials' files say "done" before the first callback runs (they ended together).
    rows = [
        {"id": "a", "status": "done", "val_mAP": 0.1, "epoch": 4, "test_mAP": 0.09},
        {"id": "b", "status": "done", "val_mAP": 0.2, "epoch": 4},
    ]
    monkeypatch.setattr(progress, "load_study_plan", lambda study_dir: None)
    monkeypatch.setattr(progress, "write_results", lambda plan, study_dir, cache=None: rows)
    now = [0.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    cb = progress.StudyCallback(str(tmp_path), total=6)  # no plan.json yet: nothing ended before
    a, b = fake_trial("a"), fake_trial("b")
    cb.on_trial_start(0, [a], a)
    cb.on_trial_start(0, [a, b], b)
    now[0] = 100.0
    cb.on_trial_complete(1, [a, b], a)
    b.status, a.status = "RUNNING", "TERMINATED"
    cb.on_trial_complete(1, [a, b], b)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    # 100 s a trial on 2 slots: b (100 s in) ends now, then the 4 pending take 2 rounds (200 s)
    assert lines == [
        "[1/6] done a: val mAP 0.1000 (epoch 4), test mAP 0.0900; 1 running, ~3 min left",
        "[2/6] done b: val mAP 0.2000 (epoch 4); 0 running, ~3 min left",
    ]


def test_time_left_counts_what_the_running_trials_have_done() -> None:
    # the quick start after its first trial (15 min a trial, 2 slots): the other running trial
    # is 15 min in, so the 2 pending ones start now, side by side -> 15 min, not 30
    assert progress.time_left(900.0, [900.0], pending=2, slots=2) == 900.0
    # 3 slots, trials 500 s and 100 s into a 600 s mean: they end in 100 and 500 s, the third
    # slot is free; pending ones start at 0 (-> 600), 100 (-> 700) and 500 (-> 1100)
    assert progress.time_left(600.0, [500.0, 100.0], pending=3, slots=3) == 1100.0
    # a trial past the mean counts as ending now; nothing pending: the running ones decide
    assert progress.time_left(600.0, [700.0, 200.0], pending=0, slots=2) == 400.0

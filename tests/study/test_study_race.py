"""``--seeds auto`` end to end: the real driver, Ray Tune and report with a fake trainable whose
arm effects and seed noise are known (tests/study_fakes.py), then an interruption in the middle
of the race and ``--resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.outputs.results import read_csv
from study.running.driver import StudyArgs, run_study
from study.space.racing import read_rounds
from tests.paths import FAKE_TRAIN_FN, REPO
from tests.study_fakes import control_folder, fake_train

# One axis, baseline iou. Known effects on every metric: ciou +0.05 (large), diou +0.012
# (small: the paired per-seed differences have sd √2 · 0.004), giou 0. The seed noise (sd 0.03)
# is shared by the arms of a seed — pairing removes it — and each arm adds its own 0.004.
RACE_SPACE = """
fixed: {epochs: 2, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, ciou, diou, giou]}
baseline: {reg_loss: iou}
resources: {cpus: 1}
"""
EFFECTS = {"reg_loss=ciou": 0.05, "reg_loss=diou": 0.012, "reg_loss=giou": 0.0}


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def seeds_of(rows: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in rows:
        out.setdefault(r["reg_loss"], []).append(r["seed"])
    return {k: sorted(v) for k, v in out.items()}


def final_states(study: Path) -> dict[str, str]:
    return {s["name"]: s["state"] for s in read_rounds(study)[-1]["statuses"]}


def test_seeds_auto_adds_seeds_only_where_they_decide(ray_address: str, tmp_path: Path) -> None:
    space = tmp_path / "race.yaml"
    space.write_text(RACE_SPACE)
    ctl = control_folder(tmp_path / "ctl", effects=EFFECTS, noise=0.03, arm_noise=0.004)
    study = tmp_path / "study"
    lines: list[str] = []
    out = run_study(
        StudyArgs(space=str(space), data=str(ctl), out=study, seeds="auto", budget="20"),
        train_fn=fake_train, log=lines.append,
    )
    assert out.exit_code == 0, out.summary
    rows = read_csv(study / "results.csv")
    seeds = seeds_of(rows)
    assert all(s[:2] == [0, 1] for s in seeds.values())  # every arm's first round: 2 seeds
    assert len(rows) <= 20  # the budget
    states = final_states(study)
    # the large effect ends decided; the null one is never given seeds beyond the first two
    assert states["reg_loss ciou vs iou"] == "decided"
    assert states["reg_loss giou vs iou"] == "not separable at this budget"
    assert seeds["giou"] == [0, 1]
    # every added seed went to an arm of a comparison that was undecided when it was added
    rounds = read_rounds(study)
    for k, r in enumerate(rounds[:-1]):
        added = {t["point"]["reg_loss"] for t in r["trials"]}
        funded = {s["name"].split()[1] for s in r["statuses"] if s["state"] == "adding seeds"}
        assert added <= funded | {"iou"}, (k, added, funded)
    assert rounds[-1]["trials"] == []  # the race ended by itself
    report = (study / "report.md").read_text()
    assert "## Findings" in report and "## Seeds" in report
    ciou = next(ln for ln in report.splitlines() if ln.startswith("| reg_loss ciou vs iou |"))
    assert "**helps**" in ciou and "paired" in ciou
    giou = next(ln for ln in report.splitlines() if ln.startswith("| reg_loss giou vs iou |"))
    assert "not separated at this budget" in giou
    assert any(line.startswith("--seeds auto, round 1:") for line in lines)
    # a resume of the finished race runs nothing more and says the same
    again = run_study(StudyArgs(resume=True, out=study), train_fn=fake_train, log=lambda s: None)
    assert again.exit_code == 0 and len(read_csv(study / "results.csv")) == len(rows)
    assert final_states(study) == states


def test_seeds_auto_resumes_in_the_middle_of_the_race(ray_address: str, tmp_path: Path) -> None:
    """Ctrl-C while a later round runs, then --resume: the same trials and the same verdicts as
    a race that was never interrupted (the fake metrics are deterministic)."""
    space = tmp_path / "race.yaml"
    space.write_text(RACE_SPACE)
    ctl = control_folder(tmp_path / "ctl", effects=EFFECTS, noise=0.03, arm_noise=0.004,
                         epoch_s=0.4)
    study = tmp_path / "study"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "XDG_STATE_HOME": str(tmp_path / "state"),
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    common = ["--address", ray_address, "--train-fn", FAKE_TRAIN_FN]
    run = [sys.executable, str(REPO / "study" / "run.py")]
    first = subprocess.Popen(
        [*run, "--space", str(space), "--data", str(ctl), "--out", str(study), "--seeds", "auto",
         "--budget", "20", *common],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not read_rounds(study):
        time.sleep(0.3)
    assert read_rounds(study), "the first round did not end in time"
    first.send_signal(signal.SIGINT)
    log1 = first.communicate(timeout=120)[0]
    assert first.returncode in (0, 130), log1
    second = subprocess.run(
        [*run, "--resume", "--out", str(study), *common],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = read_csv(study / "results.csv")
    assert all(r["status"] == "done" for r in rows)
    # the uninterrupted race, in-process
    ref = tmp_path / "ref"
    ctl_ref = control_folder(tmp_path / "ctl_ref", effects=EFFECTS, noise=0.03, arm_noise=0.004)
    run_study(StudyArgs(space=str(space), data=str(ctl_ref), out=ref, seeds="auto", budget="20"),
              train_fn=fake_train, log=lambda s: None)
    assert seeds_of(rows) == seeds_of(read_csv(ref / "results.csv"))
    assert final_states(study) == final_states(ref)
    # no finished trial trained twice
    calls: dict[str, int] = {}
    for f in (ctl / "calls").iterdir():
        tid = f.name.rsplit(".", 1)[0]
        calls[tid] = calls.get(tid, 0) + 1
    done_once = [t for t, n in calls.items() if n == 1]
    assert len(done_once) >= len(rows) - 2, json.dumps(calls)


def _one_trial(config: dict) -> dict:
    return {"score": config["x"]}


def test_a_round_stopped_before_its_first_trial_starts_afresh(ray_address: str,
                                                              tmp_path: Path) -> None:
    """Ctrl-C between Tune writing a round's first experiment state and adding its trials
    leaves a state with no trial, which Tune cannot restore (it indexes the first trial):
    such a round is not restorable and starts afresh in the same place; a round with a trial
    is restorable."""
    from ray import tune

    from study.running.pipeline import restorable
    from study.running.storage import Storage

    storage = Storage.for_study(tmp_path / "study", None)

    def fit() -> None:
        tune.Tuner(_one_trial, param_space={"x": tune.grid_search([1])},
                   run_config=tune.RunConfig(name="tune-r1", storage_path=storage.tune_path,
                                             verbose=0)).fit()

    assert not restorable(storage, "tune-r1")  # nothing there yet
    fit()
    assert restorable(storage, "tune-r1")
    states = sorted((tmp_path / "study" / "tune-r1").glob("experiment_state-*.json"))
    state = json.loads(states[-1].read_text())
    assert state["trial_data"]
    state["trial_data"] = []
    states[-1].write_text(json.dumps(state))
    assert not restorable(storage, "tune-r1")
    storage.remove("tune-r1")
    assert not (tmp_path / "study" / "tune-r1").exists()
    fit()
    assert restorable(storage, "tune-r1")

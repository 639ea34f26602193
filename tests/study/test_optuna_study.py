"""A sampled study's Optuna history (issue 27): ``<study>/optuna.sqlite``, loaded here with
Optuna's own API as ``optuna-dashboard`` would, holds one trial per proposal with the values the
report ranks, the learning curves, ASHA's stops as PRUNED, and the report's best trial is the
one Optuna names — also after an interruption and ``--resume``.

One local Ray session for the module (2 CPUs, no dashboard); the fake training function of
tests/study_fakes.py with ``peak_epoch`` 2 of 3, so the chosen checkpoint is not the last
evaluation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.layout import OPTUNA_LOST
from study.outputs.optuna_best import best_of_sampled
from study.outputs.results import read_csv, read_history
from study.running.driver import StudyArgs, run_study
from tests.paths import FAKE_TRAIN_FN, REPO
from tests.study_fakes import control_folder, fake_train

SPACE = """
fixed: {epochs: 3, eval_interval: 1, no_aug_epochs: 1, workers: 0}
sample:
  lr: {type: loguniform, low: 0.001, high: 10.0}
  size: {type: choice, values: [nano, tiny]}
num_samples: %d
scheduler: {type: asha, max_t: 3, grace_period: 1, reduction_factor: 2}
resources: {cpus: 1}
"""
KEYS = ("lr", "size")
BEST_LINE = re.compile(r"\*\*Best trial \(chosen on validation mAP\): (trial-\w+)\*\*")


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def load(study: Path) -> optuna.Study:
    """The study as a person opens it: by the file and the study folder's name."""
    return optuna.load_study(study_name=study.name, storage=f"sqlite:///{study / 'optuna.sqlite'}")


def curve(study: Path, ids: list[str]) -> dict[int, float]:
    """Validation mAP per epoch from the trials' history.jsonl, the mean over ``ids``."""
    per: dict[int, list[float]] = {}
    for tid in ids:
        for h in read_history(study / "trials" / tid / "history.jsonl"):
            per.setdefault(h["epoch"], []).append(h["val_mAP"])
    return {e: sum(v) / len(v) for e, v in per.items()}


def report_best(study: Path) -> str:
    found = BEST_LINE.search((study / "report.md").read_text())
    assert found, (study / "report.md").read_text()
    return found.group(1)


def sampled_study(tmp_path: Path, samples: int, seeds: int) -> tuple[Path, list[str], object]:
    space = tmp_path / "sampled.yaml"
    space.write_text(SPACE % samples)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.05, peak_epoch=2)
    study = tmp_path / "study"
    lines: list[str] = []
    out = run_study(StudyArgs(space=str(space), data=str(ctl), out=study, seeds=seeds),
                    train_fn=fake_train, log=lines.append)
    assert out.exit_code == 0, out.summary
    return study, lines, out


def test_optuna_holds_each_trial_with_the_value_the_report_ranks(
    ray_address: str, tmp_path: Path
) -> None:
    study, lines, out = sampled_study(tmp_path, samples=8, seeds=1)
    rows = {r["id"]: r for r in read_csv(study / "results.csv")}
    stored = load(study)
    assert len(stored.trials) == len(rows) == 8
    assert Counter(t.user_attrs["trial"] for t in stored.trials) == Counter(list(rows))
    assert {r["status"] for r in rows.values()} == {"done", "stopped"}  # ASHA stopped some
    for t in stored.trials:
        row = rows[t.user_attrs["trial"]]
        assert t.user_attrs["trials"] == [row["id"]]
        assert t.params == {k: row[k] for k in KEYS}  # the values the trial trained with
        assert t.intermediate_values == curve(study, [row["id"]])  # every evaluation
        if row["status"] == "done":
            assert t.state == TrialState.COMPLETE
            # the chosen checkpoint's (epoch 2), as results.csv has it, not the last evaluation
            assert (row["best_epoch"], row["epoch"]) == (2, 3)
            assert t.value == pytest.approx(row["val_mAP"], abs=1e-12)
            assert t.value == t.intermediate_values[2] > t.intermediate_values[3]
        else:  # stopped by ASHA: PRUNED, at its last evaluation (where it stopped)
            assert t.state == TrialState.PRUNED
            assert max(t.intermediate_values) == row["epoch"] < 3
            assert t.value == pytest.approx(row["val_mAP"], abs=1e-12)
    best = stored.best_trial.user_attrs["trial"]
    assert out.best["id"] == best == report_best(study)
    assert f"Best trial of study study (chosen on validation mAP): {best}" in (
        study / "best_config.yaml").read_text()
    dashboard = f"optuna-dashboard sqlite:///{study.resolve()}/optuna.sqlite"
    assert dashboard in out.summary and dashboard in (study / "report.md").read_text()
    said = [i for i, s in enumerate(lines) if dashboard in s]
    started = next(i for i, s in enumerate(lines) if s.startswith("running 8 trials"))
    assert said and said[0] < started  # said before the trials start


def test_seeds_make_one_optuna_trial_per_proposal(ray_address: str, tmp_path: Path) -> None:
    """--seeds 2: each proposal runs as two Tune trials (seeds 0, 1) and is one Optuna trial,
    its value the mean over its seeds that finished, its curve their mean per epoch; the
    report's best is the best seed of Optuna's best proposal."""
    study, _, out = sampled_study(tmp_path, samples=4, seeds=2)
    rows = {r["id"]: r for r in read_csv(study / "results.csv")}
    stored = load(study)
    assert len(rows) == 8 and len(stored.trials) == 4
    assert Counter(f for t in stored.trials for f in t.user_attrs["trials"]) == Counter(list(rows))
    for t in stored.trials:
        seeds = [rows[f] for f in t.user_attrs["trials"]]
        assert t.user_attrs["trial"] == seeds[0]["id"]
        assert [r["seed"] for r in seeds] == [0, 1]
        assert all(t.params == {k: r[k] for k in KEYS} for r in seeds)
        assert t.intermediate_values == pytest.approx(curve(study, t.user_attrs["trials"]))
        done = [r["val_mAP"] for r in seeds if r["status"] == "done"]
        if done:
            assert t.state == TrialState.COMPLETE
            assert t.value == pytest.approx(sum(done) / len(done), abs=1e-12)
        else:
            assert t.state == TrialState.PRUNED
    group = [rows[f] for f in stored.best_trial.user_attrs["trials"]]
    chosen = max((r for r in group if r["status"] == "done"), key=lambda r: r["val_mAP"])
    assert out.best["id"] == chosen["id"] == report_best(study)
    assert f"number {stored.best_trial.number}," in (study / "report.md").read_text()


def test_interrupted_sampled_study_resumes_into_the_same_optuna_study(
    ray_address: str, tmp_path: Path
) -> None:
    """Ctrl-C once some trials ended, then --resume: the Optuna study holds every Tune trial
    exactly once, none RUNNING, each value the report's, and the report's best is Optuna's."""
    space = tmp_path / "sampled.yaml"
    space.write_text(SPACE % 8)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.3, peak_epoch=2)
    study = tmp_path / "study"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "XDG_STATE_HOME": str(tmp_path / "state"),
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    common = ["--address", ray_address, "--train-fn", FAKE_TRAIN_FN]
    run = [sys.executable, str(REPO / "study" / "run.py")]
    first = subprocess.Popen(
        [*run, "--space", str(space), "--data", str(ctl), "--out", str(study), *common],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline, ended = time.time() + 120, 0
    while time.time() < deadline and first.poll() is None and ended < 3:
        time.sleep(0.3)
        if (study / "results.csv").is_file():
            ended = sum(r["status"] in ("done", "stopped") for r in read_csv(study / "results.csv"))
    assert ended >= 3, "no three trials ended in time"
    first.send_signal(signal.SIGINT)
    log1 = first.communicate(timeout=90)[0]
    assert first.returncode == 130 and "--resume" in log1, log1
    second = subprocess.run([*run, "--resume", "--out", str(study), *common],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = {r["id"]: r for r in read_csv(study / "results.csv")}
    assert len(rows) == 8 and {r["status"] for r in rows.values()} <= {"done", "stopped"}
    stored = load(study)
    assert not stored.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    kept = [t for t in stored.trials if OPTUNA_LOST not in t.user_attrs]
    assert Counter(t.user_attrs["trial"] for t in kept) == Counter(list(rows))  # each exactly once
    assert all(t.state == TrialState.FAIL for t in stored.trials if t not in kept)
    for t in kept:
        row = rows[t.user_attrs["trial"]]
        assert t.params == {k: row[k] for k in KEYS}
        assert t.state == (TrialState.COMPLETE if row["status"] == "done" else TrialState.PRUNED)
        assert t.value == pytest.approx(row["val_mAP"], abs=1e-12)
        assert t.intermediate_values == curve(study, [row["id"]])
    assert stored.best_trial.user_attrs["trial"] == report_best(study)
    assert f"optuna-dashboard sqlite:///{study}/optuna.sqlite" in second.stdout + second.stderr


def searcher(study_dir: Path) -> object:
    from optuna.distributions import FloatDistribution

    from study.running.searcher import StudyOptunaSearch

    return StudyOptunaSearch(
        space={"lr": FloatDistribution(0.001, 1.0, log=True)}, metric="val_mAP", mode="max",
        sampler=optuna.samplers.TPESampler(seed=0), study_name=study_dir.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.sqlite'}"),
        study_dir=str(study_dir),
    )


def test_a_resume_closes_the_optuna_trials_a_killed_driver_lost(tmp_path: Path) -> None:
    """A trial asked after Tune's last snapshot of the searcher is lost with the driver (its
    Tune trial too): the restored searcher closes it as FAIL, saying why, and goes on with the
    trials it holds."""
    study = tmp_path / "study"
    study.mkdir()
    first = searcher(study)
    first.suggest("a")
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot
    first.suggest("b")  # … then the driver is killed
    again = searcher(study)
    again.restore(str(tmp_path / "searcher.pkl"))
    again.on_trial_result("a", {"val_mAP": 0.4, "epoch": 1})
    again.on_trial_complete("a", {"val_mAP": 0.5, "epoch": 2})
    a, b = load(study).trials
    assert (a.user_attrs["trial"], a.state, a.value) == ("trial-a", TrialState.COMPLETE, 0.5)
    assert a.intermediate_values == {1: 0.4}
    assert b.user_attrs["trial"] == "trial-b" and b.state == TrialState.FAIL
    assert "killed" in b.user_attrs[OPTUNA_LOST]


def test_the_report_takes_optunas_best_trial_even_on_a_tie(tmp_path: Path) -> None:
    """Two trials with the same validation mAP: Optuna settles the tie its own way, the rows'
    rule (the other validation numbers) may settle it the other way; the report follows
    Optuna, so best_config.yaml and the dashboard name the same trial."""
    from optuna.distributions import FloatDistribution

    from study.outputs.export import choose_best

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    stored = optuna.create_study(study_name="study", direction="maximize",
                                 storage=f"sqlite:///{study_dir / 'optuna.sqlite'}")
    for tid, lr in (("trial-a", 0.01), ("trial-b", 0.02)):
        stored.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": FloatDistribution(0.001, 1.0)},
            value=0.3, user_attrs={"trial": tid, "trials": [tid]},
        ))
    optuna_pick = stored.best_trial.user_attrs["trial"]
    rows = [{"id": tid, "status": "done", "val_mAP": 0.3, "lr": lr,
             "val_AP50": 0.9 if tid != optuna_pick else 0.1}
            for tid, lr in (("trial-a", 0.01), ("trial-b", 0.02))]
    assert choose_best(rows, "mAP", "max")["id"] != optuna_pick  # the rows' rule disagrees
    best, found = best_of_sampled(rows, "mAP", "max", [], study_dir)
    assert best["id"] == optuna_pick and found.folders == (optuna_pick,)
    # no Optuna storage (a study from before it): the rows' rule
    (study_dir / "optuna.sqlite").unlink()
    best, found = best_of_sampled(rows, "mAP", "max", [], study_dir)
    assert found is None and best["id"] != optuna_pick

"""A sampled study's Optuna history, kept so that a person can open it and trust it.

The search is Ray Tune's ``OptunaSearch`` over an Optuna study stored in the study folder
(``<study>/optuna.sqlite``, study name = the folder's name), so ``optuna-dashboard
sqlite:////abs/path/<study>/optuna.sqlite`` shows it while it runs and after, and a resume
continues the same Optuna study. What it holds agrees with the study's own files:

* **one Optuna trial per proposal**: without ``--seeds``, per Tune trial (user attribute
  ``trial``: ``trial-<id>``, its folder under ``trials/``); with ``--seeds N`` Tune's
  ``Repeater`` runs each proposal as N Tune trials (seeds 0..N-1) and Optuna sees one trial for
  them, its ``trial`` the seed-0 folder and ``trials`` every seed's folder (:class:`SeedRepeater`);
* **its value is the one the report ranks**: the validation metric of the chosen checkpoint
  (``best.pt``, the epoch the trial reports as ``best_epoch``; ``done.json``'s summary, as
  results.csv), not of its last evaluation (:class:`ChosenCheckpoint`); with seeds the mean over
  the seeds that finished — the report's rule for a sampled study with seeds is the same
  (study/outputs/optuna_best.py, which also makes the report name Optuna's own best trial);
* **a trial ASHA stopped early is PRUNED**, not COMPLETE (with seeds: every seed stopped): its
  number is not what a rerun of its config would give, and the report ranks finished trials
  first; Optuna gives a PRUNED trial its last intermediate value;
* **its learning curve**: each evaluation is an intermediate value at its epoch, live while it
  runs, and completed from the trial's own ``history.jsonl`` when it ends (Tune never hands a
  searcher the result on which ASHA stops a trial, nor what an interruption lost; with seeds the
  curve is the mean, per epoch, of the seeds that reached it).

A driver killed between an Optuna ``ask`` and Tune's next snapshot (which saves the searcher and
the trials together) leaves an Optuna trial whose Tune trial is lost with it; a resume closes it
as FAIL with the user attribute ``lost`` saying so, instead of leaving it RUNNING for ever
(:meth:`StudyOptunaSearch.close_orphans`).
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch

from study.layout import DONE, HISTORY, OPTUNA_LOST, OPTUNA_SEEDS, OPTUNA_TRIAL, trial_dir
from study.outputs.results import read_history

LOST = (
    "asked by a driver that was killed before Tune's next snapshot: its Tune trial never ran "
    "(the resume closed it)"
)


def folder_of(trial_id: str) -> str:
    """A sampled trial's folder under ``trials/`` (study/layout.py ``trial_dirname``)."""
    return f"trial-{trial_id}"


def recorded_curve(study_dir: str, folders: list[str], metric: str) -> dict[int, float]:
    """epoch → ``metric`` from the trials' own ``history.jsonl``, the mean over the folders that
    evaluated that epoch (one folder per seed)."""
    values: dict[int, list[float]] = {}
    for folder in folders:
        for rec in read_history(trial_dir(study_dir, folder) / HISTORY):
            v, epoch = rec.get(metric), rec.get("epoch")
            if isinstance(v, (int, float)) and isinstance(epoch, int) and math.isfinite(v):
                values.setdefault(epoch, []).append(float(v))
    return {e: sum(vs) / len(vs) for e, vs in sorted(values.items())}


def recorded_value(study_dir: str, folder: str, metric: str) -> float | None:
    """The trial's value as results.csv has it: ``done.json``'s returned summary (the chosen
    checkpoint's numbers), else its final report; None before done.json exists."""
    try:
        done = json.loads((trial_dir(study_dir, folder) / DONE).read_text())
    except (OSError, ValueError):
        return None
    value = {**done.get("final", {}), **done.get("summary", {})}.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _planned_epochs(result: dict[str, Any], default: int) -> int:
    """The trial's own ``epochs`` (a sampled key, in the result's config), else the base's."""
    cfg = result.get("config")
    epochs = cfg.get("epochs") if isinstance(cfg, dict) else result.get("config/epochs")
    return int(epochs) if isinstance(epochs, (int, float)) else default


class StudyOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that names each Optuna trial after its Tune trial(s), reports their
    learning curve by epoch, prunes what ended early, and closes trials an interruption
    orphaned. ``study_dir``: the driver's study folder (the trials' records)."""

    def __init__(self, *args: Any, study_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._study_dir = study_dir
        self._reported: dict[str, set[int]] = {}  # epochs already reported, per Tune trial
        self._folders: dict[str, list[str]] = {}  # Tune trial → the folders of its seeds

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if config is not None and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(OPTUNA_TRIAL, folder_of(trial_id))
            self.add_seed(trial_id, trial_id)
        return config

    def add_seed(self, trial_id: str, seed_trial_id: str) -> None:
        """The Tune trial ``seed_trial_id`` runs the proposal of ``trial_id`` (another seed)."""
        folders = self._folders.setdefault(trial_id, [])
        if trial_id in self._ot_trials and folder_of(seed_trial_id) not in folders:
            folders.append(folder_of(seed_trial_id))
            self._ot_trials[trial_id].set_user_attr(OPTUNA_SEEDS, list(folders))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        if trial_id not in self._ot_trials or not isinstance(value, (int, float)):
            return
        step = result.get("epoch", result.get(TRAINING_ITERATION))
        if isinstance(step, int) and trial_id not in self._completed_trials:
            self._report(trial_id, {step: float(value)})

    def _report(self, trial_id: str, curve: dict[int, float]) -> None:
        """Intermediate values of the epochs not reported yet (a resumed trial reports again
        the epochs after its checkpoint)."""
        import optuna

        done = self._reported.setdefault(trial_id, set())
        for step, value in sorted(curve.items()):
            if step in done or not math.isfinite(value):
                continue
            done.add(step)
            try:
                self._ot_trials[trial_id].report(value, step)
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # told before an interruption; Tune's snapshot did not know it yet

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._ot_trials:
            return
        value = (result or {}).get(self.metric)
        if isinstance(value, float) and math.isnan(value):  # every seed of it stopped early
            result = {k: v for k, v in (result or {}).items() if k != self.metric}
        if self._study_dir is not None and trial_id not in self._completed_trials:
            folders = self._folders.get(trial_id) or [folder_of(trial_id)]
            self._report(trial_id, recorded_curve(self._study_dir, folders, self.metric))
        super().on_trial_complete(trial_id, result=result, error=error)
        self._reported.pop(trial_id, None)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.__dict__.setdefault("_reported", {})
        self.__dict__.setdefault("_folders", {})
        self.__dict__.setdefault("_study_dir", None)
        self.close_orphans()

    def close_orphans(self) -> list[int]:
        """FAIL the Optuna trials still RUNNING that no Tune trial of this search holds (asked
        after the searcher's last snapshot, before the driver died), with the user attribute
        ``lost`` saying why; their numbers."""
        import optuna
        from optuna.trial import TrialState

        if self._ot_study is None:
            return []
        held = {t.number for t in self._ot_trials.values()}
        closed = []
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in held:
                optuna.trial.Trial(self._ot_study, t._trial_id).set_user_attr(OPTUNA_LOST, LOST)
                self._ot_study.tell(t.number, state=TrialState.FAIL)
                closed.append(t.number)
        return closed


class SeedRepeater(Repeater):
    """Tune's ``Repeater`` (each proposal run with seeds 0..N-1, Optuna told the mean over the
    seeds) that tells the Optuna trial which Tune trials are its seeds, so that it names their
    folders and its learning curve is their mean."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        group = self._trial_id_to_group.get(trial_id)
        inner = self.searcher
        if isinstance(config, dict) and group is not None and hasattr(inner, "add_seed"):
            inner.add_seed(group.primary_trial_id, trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          **kwargs: Any) -> None:
        with warnings.catch_warnings():  # numpy's "mean of empty slice": every seed stopped
            warnings.simplefilter("ignore", RuntimeWarning)
            super().on_trial_complete(trial_id, result=result, **kwargs)


class ChosenCheckpoint(Searcher):
    """Wraps the search (``StudyOptunaSearch``, or ``SeedRepeater`` around it): each trial ends
    with the value of its chosen checkpoint — ``done.json``'s, as results.csv has it, else the
    evaluation at its reported ``best_epoch``; a trial that ended before its planned epochs
    (ASHA) ends without a value, which Optuna records as PRUNED."""

    def __init__(self, searcher: Searcher, epochs: int, study_dir: str | None = None) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.epochs = epochs  # the base config's: a trial whose config has none planned these
        self.study_dir = study_dir
        self._values: dict[str, dict[int, float]] = {}  # Tune trial -> epoch -> metric

    @property
    def metric(self) -> str:
        return self.searcher.metric

    @property
    def mode(self) -> str:
        return self.searcher.mode

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return self.searcher.suggest(trial_id)

    def _record(self, trial_id: str, result: dict[str, Any]) -> None:
        value, epoch = result.get(self.metric), result.get("epoch")
        if isinstance(value, (int, float)) and isinstance(epoch, int):
            self._values.setdefault(trial_id, {})[epoch] = float(value)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._record(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result and not error:
            result = self.chosen(trial_id, result)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)
        self._values.pop(trial_id, None)

    def chosen(self, trial_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` with the metric of the chosen checkpoint, or without it (stopped early)."""
        self._record(trial_id, result)
        epoch = result.get("epoch")
        if isinstance(epoch, int) and epoch < _planned_epochs(result, self.epochs):
            return {k: v for k, v in result.items() if k != self.metric}
        value = None
        if getattr(self, "study_dir", None):
            value = recorded_value(self.study_dir, folder_of(trial_id), self.metric)
        best = result.get("best_epoch")
        if value is None and isinstance(best, int):
            value = self._values.get(trial_id, {}).get(best)
        if value is None and self.metric == "val_mAP":  # (a resume lost the earlier values)
            value = result.get("best_val_mAP")
        return {**result, self.metric: value if value is not None else result.get(self.metric)}

    def get_state(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["searcher"]  # saved on its own by Tune (save/restore below)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

"""A sampled study's Optuna history, kept so that a person can open it and trust it.

The search is Ray Tune's ``OptunaSearch`` over an Optuna study stored in the study folder
(``<study>/optuna.sqlite``, study name = the folder's name), so ``optuna-dashboard
sqlite:///<study>/optuna.sqlite`` shows it while it runs and after, and a resume continues the
same Optuna study. Three things make what it holds agree with the study's own report:

* **the value of a trial is the one the report ranks**: the validation metric of its chosen
  checkpoint (``best.pt``, the epoch the trial reports as ``best_epoch``), not of its last
  evaluation (:class:`ChosenCheckpoint`; with ``--seeds N`` Tune's ``Repeater`` averages these
  over the seeds, as the report does);
* **a trial ASHA stopped early is PRUNED**, not COMPLETE: its number is not what a rerun of its
  config would give, and the report ranks finished trials first;
* **its learning curve**: every evaluation is an intermediate value at its epoch, and each Optuna
  trial carries the Tune trial it ran as (user attribute ``trial``: ``trial-<id>``, the folder
  under ``trials/``).

A driver killed between an Optuna ``ask`` and Tune's next snapshot of the searcher leaves an
Optuna trial that no Tune trial will finish; a resume marks it FAIL instead of leaving it
RUNNING for ever. study/outputs/optuna_best.py reads the
best trial back for the report.
"""

from __future__ import annotations

import math
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

TRIAL_ATTR = "trial"  # Optuna user attribute: the Tune trial's folder name under trials/


def _planned_epochs(result: dict[str, Any], default: int) -> int:
    """The trial's own ``epochs`` (a sampled key, in the result's config), else the base's."""
    cfg = result.get("config")
    epochs = cfg.get("epochs") if isinstance(cfg, dict) else result.get("config/epochs")
    return int(epochs) if isinstance(epochs, (int, float)) else default


class StudyOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that names each Optuna trial after its Tune trial, reports intermediate
    values by epoch, prunes what ended early, and closes trials an interruption orphaned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reported: dict[str, set[int]] = {}  # epochs already reported, per Tune trial

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and config is not None:
            ot_trial.set_user_attr(TRIAL_ATTR, f"trial-{trial_id}")
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        if trial_id not in self._ot_trials or not isinstance(value, (int, float)):
            return
        step = result.get("epoch", result.get(TRAINING_ITERATION))
        done = self._reported.setdefault(trial_id, set())
        if not isinstance(step, int) or step in done or trial_id in self._completed_trials:
            return  # (a resumed trial reports again the epochs after its checkpoint)
        done.add(step)
        self._ot_trials[trial_id].report(float(value), step)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        value = (result or {}).get(self.metric)
        if isinstance(value, float) and math.isnan(value):  # every seed of it stopped early
            result = {k: v for k, v in (result or {}).items() if k != self.metric}
        super().on_trial_complete(trial_id, result=result, error=error)
        self._reported.pop(trial_id, None)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.__dict__.setdefault("_reported", {})
        self.close_orphans()

    def close_orphans(self) -> list[int]:
        """FAIL the Optuna trials still RUNNING that no Tune trial of this search holds (asked
        after the searcher's last snapshot, before the driver died); their numbers."""
        from optuna.trial import TrialState

        if self._ot_study is None:
            return []
        held = {t.number for t in self._ot_trials.values()}
        closed = []
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in held:
                self._ot_study.tell(t.number, state=TrialState.FAIL)
                closed.append(t.number)
        return closed


class ChosenCheckpoint(Searcher):
    """Wraps the search (``StudyOptunaSearch``, or Tune's ``Repeater`` around it): each trial
    ends with the value of its chosen checkpoint, the evaluation at its reported
    ``best_epoch``; a trial that ended before its planned epochs (ASHA) ends without a value,
    which Optuna records as PRUNED."""

    def __init__(self, searcher: Searcher, epochs: int) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.epochs = epochs  # the base config's: a trial whose config has none planned these
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
        values = self._values.get(trial_id, {})
        best = result.get("best_epoch")
        value = values.get(best) if isinstance(best, int) else None
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

"""Ray Tune's Weights & Biases logger for a study (study/running/trackers.py says what the
trackers log): one W&B run per trial, written by a logging actor on the driver's node (online,
or offline into ``<study>/wandb/`` for a later ``wandb sync``), with the evaluation previews as
``wandb.Image`` under ``eval_preview``."""

from __future__ import annotations

from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from study.running.trackers import PREVIEW_TAG, read_preview


class _FlushedLoggingActor(_WandbLoggingActor):
    """Tune's W&B logging actor, which returns once ``wandb.finish`` is called and is then
    killed by the callback — before W&B's own service process has written the run file (seen
    under load: an offline run of 7 bytes). ``wandb.teardown`` waits for that service first."""

    def run(self) -> None:
        super().run()
        import wandb

        wandb.teardown()


class StudyWandb(WandbLoggerCallback):
    """``WandbLoggerCallback(project=…, group=…, mode=…, dir=…)`` with the previews (``mode``
    and ``dir`` go to ``wandb.init``), its run files complete when the trial's actor ends."""

    _logger_actor_cls = _FlushedLoggingActor

    def log_trial_save(self, trial: Any) -> None:
        if trial not in self._trial_logging_actors:
            # the trial's run has ended (Tune may persist its last checkpoint after the end):
            # logging now would start a second W&B run for it, holding only this picture
            return
        super().log_trial_save(trial)
        image = read_preview(trial)
        if image is None:
            return
        # the step of the result it belongs to (W&B's steps never go back)
        step = (trial.last_result or {}).get(TRAINING_ITERATION)
        self.log_trial_result(0, trial, {PREVIEW_TAG: image, TRAINING_ITERATION: step})
